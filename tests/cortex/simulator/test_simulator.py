"""The Cortex simulator, driven over real HTTP, against docs/cortex-api.md and the official openapi.json.

Bodies the tests expect to be accepted are first checked against the spec's request schema, so
the simulator is shown to accept what Cortex documents; bodies expected to be refused with 400
are checked to be invalid per the spec too, where the spec can express the rule.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pydantic
import pytest

from bridge.cortex.simulator import (
    EXAMPLE_CONFIG,
    SimEntity,
    SimFaults,
    SimulatorConfig,
    SimulatorServer,
)
from bridge.cortex.simulator.server import SlidingWindow
from tests.support.cortex import sim_requests, sim_state
from tests.support.paths import FIXTURES

OPENAPI_SPEC = FIXTURES / "cortex" / "openapi.json"

TOKEN = "sim-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRIC = "deploy-duration"

DEPLOYS = "/api/v1/catalog/{tagOrId}/deploys"
EVENTS = "/api/v1/catalog/{tagOrId}/custom-events"
BULK = "/api/v1/eng-intel/custom-metrics/{customMetricKey}/entity/{tagOrId}/bulk"
POINT = "/api/v1/eng-intel/custom-metrics/{customMetricKey}/entity/{tagOrId}"

Start = Callable[..., Awaitable[SimulatorServer]]
Post = Callable[..., Awaitable[aiohttp.ClientResponse]]


def config(**overrides: Any) -> SimulatorConfig:
    fields: dict[str, Any] = {
        "tokens": [TOKEN],
        "forbidden_tokens": ["read-only-token"],
        "entities": [
            SimEntity(tag="checkout-service", name="Checkout", git_repository="acme/checkout-service"),
            SimEntity(tag="payments-api", git_repository="Acme/Payments-API"),
            SimEntity(tag="search", type="domain"),
        ],
        "metric_keys": [METRIC, "lead-time"],
        **overrides,
    }
    return SimulatorConfig(**fields)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deploy_body(**fields: Any) -> dict[str, Any]:
    return {"title": "Deploy 9f1c2e", "timestamp": "2026-07-13T18:26:52Z", "type": "DEPLOY", **fields}


def event_body(**fields: Any) -> dict[str, Any]:
    return {"title": "Created K8s pod", "type": "POD_CREATION", "timestamp": "2026-07-13T18:26:52Z", **fields}


@pytest.fixture(scope="module")
def request_schemas() -> dict[str, Any]:
    """Request-body validators of the spec, by path template."""
    spec = json.loads(OPENAPI_SPEC.read_text())
    schemas = spec["components"]["schemas"]
    # docs/cortex-api.md "generator artifacts": customData values are any JSON; the spec says objects.
    for name in ("SaveDeployRequest", "SaveCustomEventRequest"):
        schemas[name]["properties"]["customData"]["additionalProperties"] = {}
    validators = {}
    for template in (DEPLOYS, EVENTS, BULK, POINT):
        body_schema = spec["paths"][template]["post"]["requestBody"]["content"]["application/json"]["schema"]
        validators[template] = jsonschema.Draft202012Validator(
            {**body_schema, "components": spec["components"]}, format_checker=jsonschema.FormatChecker()
        )
    return validators


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start simulators with a given config; all are stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def _start(cfg: SimulatorConfig | None = None) -> SimulatorServer:
            return await stack.enter_async_context(SimulatorServer(cfg or config()))

        yield _start


@pytest.fixture
async def sim(start: Start) -> SimulatorServer:
    return await start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


@pytest.fixture
def post(sim: SimulatorServer, http: aiohttp.ClientSession, request_schemas: dict[str, Any]) -> Post:
    """POST a body the spec accepts (asserted first) to a path template of the spec."""

    async def _post(template: str, body: Any, **params: str) -> aiohttp.ClientResponse:
        request_schemas[template].validate(body)
        return await http.post(sim.url + template.format(**params), json=body)

    return _post



def most_admitted_in_a_minute(log: list[dict[str, Any]]) -> int:
    """The most requests answered other than 429 within any 60 s, as a client would audit it."""
    admitted = sorted(entry["t"] for entry in log if entry["status"] != 429)
    return max((sum(1 for t in admitted if start <= t < start + 60) for start in admitted), default=0)


# Configuration


def test_example_config_loads() -> None:
    loaded = SimulatorConfig.from_yaml("bridge/cortex/simulator/example.yaml")
    assert Path("bridge/cortex/simulator/example.yaml").resolve() == EXAMPLE_CONFIG
    tags = [entity.tag for entity in loaded.entities]
    assert tags == [
        "checkout-service",
        "payments-api",
        "inventory",
        "web-frontend",
        "search",
        "notifications",
    ]
    assert all(entity.git_repository == f"acme/{entity.tag}" for entity in loaded.entities)
    assert set(loaded.metric_keys) == {
        "deploy-duration",
        "pipeline-duration",
        "build-duration",
        "k8s-restarts",
        "lead-time",
    }
    assert loaded.tokens == ["sim-token"]
    assert loaded.rate_limit_per_minute == 1000


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("tokens: [a]\nfaults:\n  error_rat: 0.5\n")
    with pytest.raises(pydantic.ValidationError, match="error_rat"):
        SimulatorConfig.from_yaml(path)


# Auth


async def test_auth(sim: SimulatorServer) -> None:
    url = f"{sim.url}/api/v1/catalog?pageSize=1"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["type"] == "UNAUTHORIZED"
        async with session.get(url, headers={"Authorization": "Bearer read-only-token"}) as response:
            assert response.status == 403
            body = await response.json()
            assert body["type"] == "FORBIDDEN" and body["message"] and body["httpStatus"] == 403
        async with session.get(url, headers=AUTH) as response:
            assert response.status == 200
            body = await response.json()
            assert len(body["entities"]) == 1 and body["total"] == 3 and body["totalPages"] == 3
    assert (await sim_state(sim))["counts"]["deploys"] == 0


async def test_forbidden_token_cannot_write(sim: SimulatorServer) -> None:
    url = f"{sim.url}/api/v1/catalog/search/deploys"
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer read-only-token"}) as session,
        session.post(url, json=deploy_body()) as response,
    ):
        assert response.status == 403
    assert (await sim_state(sim))["counts"]["deploys"] == 0


# Deploys


async def test_add_deploy(sim: SimulatorServer, post: Post) -> None:
    body = deploy_body(
        timestamp="2026-07-13T20:26:52.5+02:00",
        sha="9f1c2e",
        environment="production",
        url="https://ci.example/run/123",
        deployer={"name": "alice", "email": "alice@example.com"},
        customData={"branch": "main", "runId": 123, "nested": {"a": [1, None]}},
    )
    response = await post(DEPLOYS, body, tagOrId="checkout-service")
    assert response.status == 200
    deploy = await response.json()
    assert deploy["timestamp"] == "2026-07-13T18:26:52.500Z"
    assert deploy["customData"] == body["customData"]
    assert (deploy["deployerName"], deploy["deployerEmail"]) == ("alice", "alice@example.com")
    assert isinstance(deploy["serviceId"], int) and len(deploy["uuid"]) == 36
    for field in ("title", "type", "sha", "environment", "url"):
        assert deploy[field] == body[field]

    stored = (await sim_state(sim))["deploys"]["checkout-service"]
    assert stored == [deploy]


async def test_deploy_by_entity_id(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    # Entities may also be added while the simulator runs.
    sim.store.entities["late"] = SimEntity(tag="late")
    for tag in ("search", "late"):
        async with http.get(f"{sim.url}/api/v1/catalog/{tag}") as response:
            entity_id = (await response.json())["id"]
        async with http.post(f"{sim.url}/api/v1/catalog/{entity_id}/deploys", json=deploy_body()) as response:
            assert response.status == 200
        assert len((await sim_state(sim))["deploys"][tag]) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timestamp": "2026-07-13T18:26:52Z", "type": "DEPLOY"}, "title"),
        (deploy_body(type="deploy"), "type"),
        (deploy_body(type="RELEASE"), "type"),
        (deploy_body(timestamp="yesterday"), "timestamp"),
        (deploy_body(timestamp="2026-07-13"), "timestamp"),
        (deploy_body(timestamp="2026-13-13T18:26:52Z"), "timestamp"),
        (deploy_body(timestamp=1784053612), "timestamp"),
        (deploy_body(title=42), "title"),
        (deploy_body(deployer={"name": 7}), "deployer.name"),
        (deploy_body(customData=["a"]), "customData"),
    ],
)
async def test_deploy_validation(
    sim: SimulatorServer,
    http: aiohttp.ClientSession,
    request_schemas: dict[str, Any],
    body: dict[str, Any],
    field: str,
) -> None:
    assert not request_schemas[DEPLOYS].is_valid(body)
    async with http.post(f"{sim.url}/api/v1/catalog/checkout-service/deploys", json=body) as response:
        assert response.status == 400
        error = await response.json()
    assert error["type"] == "BAD_REQUEST" and error["httpStatus"] == 400
    assert error["details"].startswith(f"{field}:")
    assert (await sim_state(sim))["counts"]["deploys"] == 0


async def test_deploy_refusals(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/api/v1/catalog/unknown/deploys", json=deploy_body()) as response:
        assert response.status == 404
        assert await response.json() == {
            "message": "Entity not found",
            "type": "NOT_FOUND",
            "httpStatus": 404,
            "details": "no entity with tag or id 'unknown'",
        }
    url = f"{sim.url}/api/v1/catalog/search/deploys"
    for raw in (b'{"title": ', b"", b"NaN", b"[1, 2]", b'"text"'):
        async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, raw
            assert (await response.json())["type"] == "BAD_REQUEST"
    assert (await sim_state(sim))["counts"]["deploys"] == 0


async def test_resent_deploy_is_stored_again(sim: SimulatorServer, post: Post) -> None:
    first = await (await post(DEPLOYS, deploy_body(sha="abc"), tagOrId="search")).json()
    second = await (await post(DEPLOYS, deploy_body(sha="abc"), tagOrId="search")).json()
    assert first["uuid"] != second["uuid"]
    stored = (await sim_state(sim))["deploys"]["search"]
    assert [d["uuid"] for d in stored] == [first["uuid"], second["uuid"]]


async def test_list_deploys(sim: SimulatorServer, http: aiohttp.ClientSession, post: Post) -> None:
    for n in range(5):
        await post(DEPLOYS, deploy_body(title=f"d{n}", deployer={"name": "bob"}), tagOrId="search")
    pages = []
    for page in range(3):
        async with http.get(f"{sim.url}/api/v1/catalog/search/deploys?page={page}&pageSize=2") as response:
            assert response.status == 200
            pages.append(await response.json())
    assert [[d["title"] for d in p["deployments"]] for p in pages] == [["d4", "d3"], ["d2", "d1"], ["d0"]]
    assert all((p["page"], p["total"], p["totalPages"]) == (i, 5, 3) for i, p in enumerate(pages))
    item = pages[0]["deployments"][0]
    assert item["deployer"] == {"name": "bob"} and "serviceId" not in item

    async with http.get(f"{sim.url}/api/v1/catalog/search/deploys") as response:
        assert len((await response.json())["deployments"]) == 5
    for query in ("pageSize=0", "pageSize=1001", "page=-1", "page=x"):
        async with http.get(f"{sim.url}/api/v1/catalog/search/deploys?{query}") as response:
            assert response.status == 400, query
            assert (await response.json())["details"].startswith(query.split("=")[0])
    async with http.get(f"{sim.url}/api/v1/catalog/nope/deploys") as response:
        assert response.status == 404


# Custom events


async def test_custom_events(sim: SimulatorServer, http: aiohttp.ClientSession, post: Post) -> None:
    full = event_body(
        description="Config event",
        url="https://example/x",
        customData={"test3": 678, "test4": "someVal3"},
        timestamp="2026-07-01T10:00:00Z",
    )
    response = await post(EVENTS, full, tagOrId="payments-api")
    assert response.status == 200
    created = await response.json()
    assert len(created["uuid"]) == 36
    assert {k: created[k] for k in full} == full | {"timestamp": "2026-07-01T10:00:00.000Z"}
    await post(
        EVENTS, event_body(type="SCALE", timestamp="2026-07-02T10:00:00+00:00"), tagOrId="payments-api"
    )
    await post(EVENTS, event_body(timestamp="2026-07-03T12:00:00+02:00"), tagOrId="payments-api")

    async def timestamps(query: str) -> list[str]:
        async with http.get(f"{sim.url}/api/v1/catalog/payments-api/custom-events?{query}") as response:
            assert response.status == 200, await response.text()
            return [e["timestamp"] for e in (await response.json())["events"]]

    assert await timestamps("") == [
        "2026-07-03T10:00:00.000Z",
        "2026-07-02T10:00:00.000Z",
        "2026-07-01T10:00:00.000Z",
    ]
    assert await timestamps("type=SCALE") == ["2026-07-02T10:00:00.000Z"]
    # Inclusive on both ends; a time without offset is UTC, one with an offset is converted.
    assert await timestamps("startTime=2026-07-02T10:00:00&endTime=2026-07-03T12:00:00%2B02:00") == [
        "2026-07-03T10:00:00.000Z",
        "2026-07-02T10:00:00.000Z",
    ]
    assert await timestamps("endTime=2026-07-01T10:00:00Z&type=POD_CREATION") == ["2026-07-01T10:00:00.000Z"]
    async with http.get(f"{sim.url}/api/v1/catalog/payments-api/custom-events?pageSize=2&page=1") as response:
        body = await response.json()
        assert (len(body["events"]), body["total"], body["totalPages"]) == (1, 3, 2)
    async with http.get(f"{sim.url}/api/v1/catalog/payments-api/custom-events?startTime=July") as response:
        assert response.status == 400
        assert (await response.json())["details"].startswith("startTime:")
    assert len((await sim_state(sim))["events"]["payments-api"]) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "x", "timestamp": "2026-07-13T18:26:52Z"}, "type"),
        (event_body(type=5), "type"),
        (event_body(timestamp="13/07/2026"), "timestamp"),
        (event_body(description=["no"]), "description"),
    ],
)
async def test_custom_event_validation(
    sim: SimulatorServer,
    http: aiohttp.ClientSession,
    request_schemas: dict[str, Any],
    body: dict[str, Any],
    field: str,
) -> None:
    assert not request_schemas[EVENTS].is_valid(body)
    async with http.post(f"{sim.url}/api/v1/catalog/search/custom-events", json=body) as response:
        assert response.status == 400
        assert (await response.json())["details"].startswith(f"{field}:")
    async with http.post(f"{sim.url}/api/v1/catalog/nope/custom-events", json=event_body()) as response:
        assert response.status == 404
    assert (await sim_state(sim))["counts"]["events"] == 0


async def test_naive_timestamps_mean_utc(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    # The official CLI sends events and metric points without an offset (docs/cortex-api.md).
    async with http.post(
        f"{sim.url}/api/v1/catalog/search/custom-events", json=event_body(timestamp="2026-07-13T18:26:52")
    ) as response:
        assert response.status == 200
        assert (await response.json())["timestamp"] == "2026-07-13T18:26:52.000Z"


# Custom metrics


async def test_metric_bulk(sim: SimulatorServer, http: aiohttp.ClientSession, post: Post) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    series = [
        {"timestamp": iso(now - timedelta(hours=2)), "value": 12.5},
        {"timestamp": iso(now), "value": 3},
    ]
    response = await post(BULK, {"series": series}, customMetricKey=METRIC, tagOrId="checkout-service")
    assert response.status == 200
    assert await response.read() == b""
    # A resend is stored again, as Cortex does (no dedupe by timestamp).
    await post(BULK, {"series": series[1:]}, customMetricKey=METRIC, tagOrId="checkout-service")
    stored = (await sim_state(sim))["metrics"][METRIC]["checkout-service"]
    expected = [{"timestamp": iso(now - timedelta(hours=2)).replace("Z", ".000Z"), "value": 12.5}] + [
        {"timestamp": iso(now).replace("Z", ".000Z"), "value": 3}
    ] * 2
    assert stored == expected
    async with http.get(
        f"{sim.url}/api/v1/eng-intel/custom-metrics/{METRIC}/entity/checkout-service"
    ) as response:
        body = await response.json()
        assert (body["data"], body["total"], body["page"], body["totalPages"]) == (expected, 3, 0, 1)


async def test_metric_points_older_than_six_months_are_dropped_with_200(
    sim: SimulatorServer, post: Post
) -> None:
    now = datetime.now(UTC)
    series = [
        {"timestamp": iso(now - timedelta(days=200)), "value": 1},
        {"timestamp": iso(now - timedelta(days=190)), "value": 2},
        {"timestamp": iso(now - timedelta(days=100)), "value": 3},
    ]
    response = await post(BULK, {"series": series}, customMetricKey=METRIC, tagOrId="search")
    assert response.status == 200
    snapshot = await sim_state(sim)
    assert [p["value"] for p in snapshot["metrics"][METRIC]["search"]] == [3]
    assert snapshot["discarded_old_points"] == 2
    assert snapshot["counts"]["metric_points"] == 1


async def test_metric_series_size(
    sim: SimulatorServer,
    http: aiohttp.ClientSession,
    post: Post,
) -> None:
    stamp = iso(datetime.now(UTC))
    point = {"timestamp": stamp, "value": 1.0}
    assert (
        await post(BULK, {"series": [point] * 100}, customMetricKey=METRIC, tagOrId="search")
    ).status == 200
    url = f"{sim.url}/api/v1/eng-intel/custom-metrics/{METRIC}/entity/search/bulk"
    refused: list[dict[str, Any]] = [
        {"series": [point] * 101},
        {"series": []},
        {},
        {"series": [{"value": 1}]},
    ]
    for body in refused:
        async with http.post(url, json=body) as response:
            assert response.status == 400, body
            assert (await response.json())["details"].startswith("series")
    for value in (b'"1"', b"1e999", b"true"):
        raw = b'{"series": [{"timestamp": "%s", "value": %s}]}' % (stamp.encode(), value)
        async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, value
            assert (await response.json())["details"].startswith("series.0.value:")
    assert (await sim_state(sim))["counts"]["metric_points"] == 100


async def test_metric_unknown_key_or_entity(sim: SimulatorServer, post: Post) -> None:
    body = {"series": [{"timestamp": iso(datetime.now(UTC)), "value": 1}]}
    response = await post(BULK, body, customMetricKey="no-such-metric", tagOrId="search")
    assert response.status == 404
    assert await response.json() == {
        "message": "Not Found",
        "details": "CustomMetricKey not found",
        "type": "NOT_FOUND",
        "httpStatus": 404,
    }
    response = await post(BULK, body, customMetricKey=METRIC, tagOrId="no-such-entity")
    assert response.status == 404
    assert (await response.json())["message"] == "Entity not found"
    assert (await sim_state(sim))["counts"]["metric_points"] == 0


async def test_metric_single_point(sim: SimulatorServer, http: aiohttp.ClientSession, post: Post) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    at = iso(before - timedelta(days=1))
    assert (
        await post(POINT, {"value": 3.0, "timestamp": at}, customMetricKey=METRIC, tagOrId="search")
    ).status == 200
    assert (await post(POINT, {"value": 4}, customMetricKey=METRIC, tagOrId="search")).status == 200
    url = f"{sim.url}/api/v1/eng-intel/custom-metrics/{METRIC}/entity/search"
    async with http.post(url, json={"value": "4"}) as response:
        assert response.status == 400
        assert (await response.json())["details"].startswith("value:")
    points = (await sim_state(sim))["metrics"][METRIC]["search"]
    assert points[0] == {"timestamp": at.replace("Z", ".000Z"), "value": 3.0}
    # Without a timestamp the point is taken as of now.
    assert before <= datetime.fromisoformat(points[1]["timestamp"]) <= datetime.now(UTC)
    assert len(points) == 2


async def test_list_metric_points_by_range(
    sim: SimulatorServer, http: aiohttp.ClientSession, post: Post
) -> None:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    # Sent newest first: the list is ordered by timestamp regardless.
    series = [{"timestamp": iso(day + timedelta(days=n)), "value": n} for n in reversed(range(5))]
    await post(BULK, {"series": series}, customMetricKey=METRIC, tagOrId="search")
    base = f"{sim.url}/api/v1/eng-intel/custom-metrics/{METRIC}/entity/search"
    start, end = iso(day + timedelta(days=1)), iso(day + timedelta(days=3))
    async with http.get(base, params={"startDate": start, "endDate": end}) as response:
        assert [p["value"] for p in (await response.json())["data"]] == [1, 2, 3]
    async with http.get(base, params={"pageSize": "2", "page": "2"}) as response:
        body = await response.json()
        assert ([p["value"] for p in body["data"]], body["totalPages"]) == ([4], 3)
    async with http.get(base, params={"endDate": "soon"}) as response:
        assert response.status == 400
    async with http.get(f"{sim.url}/api/v1/eng-intel/custom-metrics/nope/entity/search") as response:
        assert response.status == 404


async def test_metric_definitions(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    base = f"{sim.url}/api/v1/eng-intel/custom-metrics"
    async with http.get(base) as response:
        body = await response.json()
        assert [m["key"] for m in body["metrics"]] == ["deploy-duration", "lead-time"]
        assert all(m["type"] == "PUBLIC_API" for m in body["metrics"]) and body["total"] == 2
    async with http.get(f"{base}/lead-time") as response:
        assert (await response.json())["key"] == "lead-time"
    async with http.get(f"{base}/mttr") as response:
        assert response.status == 404
    definition = {
        "key": "mttr",
        "name": "MTTR",
        "valence": "NEGATIVE",
        "type": "PUBLIC_API",
        "isDraft": False,
    }
    async with http.post(base, json=definition) as response:
        assert response.status == 200
        assert (await response.json())["name"] == "MTTR"
    async with http.post(base, json=definition) as response:
        assert response.status == 409
        assert (await response.json())["type"] == "CONFLICT"
    for bad_key in ("-mttr", "m", "mt tr", "a" * 256):
        async with http.post(base, json={"key": bad_key}) as response:
            assert response.status == 400, bad_key
    point = {"series": [{"timestamp": iso(datetime.now(UTC)), "value": 1}]}
    async with http.post(f"{base}/mttr/entity/search/bulk", json=point) as response:
        assert response.status == 200
    async with http.get(f"{base}?pageSize=1&page=2") as response:
        assert [m["key"] for m in (await response.json())["metrics"]] == ["mttr"]


# Custom data


async def test_custom_data_bulk(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/api/v1/catalog/custom-data"
    body = {
        "values": {
            "search": [
                {"key": "my-key", "value": 100},
                {"key": "owner", "value": "Hello", "description": "d"},
            ],
            "ghost": [{"key": "different-key", "value": {"nested": "object"}}],
        }
    }
    async with http.put(url, json=body) as response:
        assert response.status == 200
        result = await response.json()
    assert result["errors"] == {"ghost": "NOT_FOUND"}
    assert [(v["key"], v["value"], v["source"]) for v in result["values"]] == [
        ("my-key", 100, "API"),
        ("owner", "Hello", "API"),
    ]
    assert result["values"][1]["description"] == "d"
    assert all(isinstance(v["id"], int) and v["dateUpdated"].endswith("Z") for v in result["values"])

    async with http.put(url, json={"values": {"search": [{"key": "my-key", "value": [1, 2]}]}}) as response:
        assert response.status == 200
        overwrite = await response.json()
    assert overwrite["errors"] == {}
    assert overwrite["values"][0]["id"] == result["values"][0]["id"]
    async with http.get(f"{sim.url}/api/v1/catalog/search/custom-data") as response:
        listed = await response.json()
        assert [(item["key"], item["value"]) for item in listed] == [("my-key", [1, 2]), ("owner", "Hello")]
    async with http.get(f"{sim.url}/api/v1/catalog/search/custom-data/owner") as response:
        assert (await response.json())["value"] == "Hello"
    async with http.get(f"{sim.url}/api/v1/catalog/search/custom-data/absent") as response:
        assert response.status == 404
    async with http.get(f"{sim.url}/api/v1/catalog/search") as response:
        assert {m["key"]: m["value"] for m in (await response.json())["metadata"]} == {
            "my-key": [1, 2],
            "owner": "Hello",
        }
    assert (await sim_state(sim))["custom_data"] == {
        "search": {
            "my-key": {"value": [1, 2], "description": None},
            "owner": {"value": "Hello", "description": "d"},
        }
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "values"),
        ({"values": {"search": [{"key": "k"}]}}, "values.search.0.value"),
        ({"values": {"search": [{"key": "k", "value": None}]}}, "values.search.0.value"),
        ({"values": {"search": [{"value": 1}]}}, "values.search.0.key"),
        ({"values": {"search": {"key": "k", "value": 1}}}, "values.search"),
    ],
)
async def test_custom_data_validation(
    sim: SimulatorServer, http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    async with http.put(f"{sim.url}/api/v1/catalog/custom-data", json=body) as response:
        assert response.status == 400
        assert (await response.json())["details"].startswith(f"{field}:")
    assert (await sim_state(sim))["counts"]["custom_data"] == 0


# Catalog


async def test_entity_details(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/api/v1/catalog/checkout-service") as response:
        entity = await response.json()
    assert entity["id"].startswith("en") and len(entity["id"]) == 18
    assert int(entity["id"][2:], 16) >= 0
    assert (entity["tag"], entity["name"], entity["type"], entity["isArchived"]) == (
        "checkout-service",
        "Checkout",
        "service",
        False,
    )
    assert entity["git"]["repository"] == "acme/checkout-service"
    async with http.get(f"{sim.url}/api/v1/catalog/{entity['id']}") as response:
        assert (await response.json())["tag"] == "checkout-service"
    async with http.get(f"{sim.url}/api/v1/catalog/nope") as response:
        assert response.status == 404
        assert (await response.json())["type"] == "NOT_FOUND"


async def test_catalog_filter_by_git_repository(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    async def tags(query: str) -> list[str]:
        async with http.get(f"{sim.url}/api/v1/catalog?{query}") as response:
            assert response.status == 200
            return [e["tag"] for e in (await response.json())["entities"]]

    assert await tags("") == ["checkout-service", "payments-api", "search"]
    assert await tags("gitRepositories=ACME/checkout-service") == ["checkout-service"]
    assert await tags("gitRepositories=acme/payments-api,acme/checkout-service") == [
        "checkout-service",
        "payments-api",
    ]
    assert await tags("gitRepositories=acme/payments-api&gitRepositories=acme/nothing") == ["payments-api"]
    assert await tags("gitRepositories=acme/nothing") == []
    assert await tags("pageSize=2&page=1") == ["search"]


# Protocol-level behaviour


async def test_unknown_api_path(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/api/v1/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["type"] == "NOT_FOUND"
    async with http.delete(f"{sim.url}/api/v1/catalog/search/custom-events") as response:
        assert response.status == 405
        assert (await response.json())["message"] == "Method Not Allowed"
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{sim.url}/api/v1/nothing-here") as response,
    ):
        assert response.status == 401


async def test_body_limit_is_2_mb(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/api/v1/catalog/custom-data"
    envelope = json.dumps({"values": {"search": [{"key": "blob", "value": ""}]}}).encode()
    padding = 2 * 1024 * 1024 - len(envelope)
    at_limit = envelope.replace(b'"value": ""', b'"value": "' + b"x" * padding + b'"')
    assert len(at_limit) == 2 * 1024 * 1024
    headers = {"Content-Type": "application/json"}
    async with http.put(url, data=io.BytesIO(at_limit), headers=headers) as response:
        assert response.status == 200
    over = at_limit.replace(b'"x', b'"xx', 1)
    async with http.put(url, data=io.BytesIO(over), headers=headers) as response:
        assert response.status == 413
        assert (await response.json())["httpStatus"] == 413
    assert len((await sim_state(sim))["custom_data"]["search"]["blob"]["value"]) == padding


async def test_rate_limit(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(rate_limit_per_minute=5))
    url = f"{sim.url}/api/v1/catalog/search/deploys"
    for _ in range(5):
        async with http.post(url, json=deploy_body()) as response:
            assert response.status == 200
    async with http.post(url, json=deploy_body()) as response:
        assert response.status == 429
        assert response.content_type == "application/problem+json"
        retry_after = int(response.headers["Retry-After"])
        problem = await response.json(content_type=None)
    assert 55 <= retry_after <= 60
    assert problem == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "retryAfter": retry_after,
    }
    async with http.get(f"{sim.url}/api/v1/catalog?pageSize=1") as response:
        assert response.status == 429
    # Inspection is never limited, and refused requests were not applied.
    assert (await sim_state(sim))["counts"]["deploys"] == 5
    log = await sim_requests(sim)
    assert [entry["status"] for entry in log] == [200] * 5 + [429] * 2
    assert most_admitted_in_a_minute(log) == 5
    # A reset starts a new window, as a fresh tenant would.
    async with http.post(f"{sim.url}/_sim/reset") as response:
        assert response.status == 200
    async with http.get(f"{sim.url}/api/v1/catalog?pageSize=1") as response:
        assert response.status == 200


def test_sliding_window() -> None:
    window = SlidingWindow()
    assert [window.admit(t, 3) for t in (100.0, 110.0, 130.0)] == [None, None, None]
    # Full until the entry of t=100 leaves the window at t=160.
    assert window.admit(130.5, 3) == 30
    assert window.admit(159.9, 3) == 1
    assert window.admit(160.0, 3) is None
    assert window.admit(160.1, 3) == 10
    # Lowering the limit at run time waits for enough entries to leave.
    assert window.admit(165.0, 1) == 55
    assert window.admit(165.0, 0) is None


async def test_retry_after_override(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(rate_limit_per_minute=1, faults=SimFaults(retry_after_seconds=3)))
    async with http.get(f"{sim.url}/api/v1/catalog") as response:
        assert response.status == 200
    async with http.get(f"{sim.url}/api/v1/catalog") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
        assert (await response.json(content_type=None))["retryAfter"] == 3


async def test_force_429_every(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(faults=SimFaults(force_429_every=3, retry_after_seconds=7)))
    statuses = []
    for n in range(7):
        async with http.post(
            f"{sim.url}/api/v1/catalog/search/deploys", json=deploy_body(title=str(n))
        ) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert response.headers["Retry-After"] == "7"
    assert statuses == [200, 200, 429, 200, 200, 429, 200]
    assert [d["title"] for d in (await sim_state(sim))["deploys"]["search"]] == ["0", "1", "3", "4", "6"]

    sim.config.faults = SimFaults(force_429_every=2)
    answers = []
    for _ in range(2):
        async with http.get(f"{sim.url}/api/v1/catalog") as response:
            answers.append((response.status, response.headers.get("Retry-After")))
    assert answers == [(200, None), (429, "1")]


async def test_error_rate_is_seeded(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(rate_limit_per_minute=0))

    async def statuses(faults: dict[str, Any]) -> list[int]:
        async with http.post(f"{sim.url}/_sim/faults", json=faults) as response:
            assert response.status == 200
        seen = []
        for _ in range(40):
            async with http.get(f"{sim.url}/api/v1/catalog?pageSize=1") as response:
                seen.append(response.status)
        return seen

    first = await statuses({"error_rate": 0.3, "seed": 42})
    draws = random.Random(42)
    assert first == [503 if draws.random() < 0.3 else 200 for _ in range(40)]
    assert await statuses({"error_rate": 0.3, "seed": 42}) == first
    assert await statuses({"error_rate": 0.3, "seed": 43}) != first
    sim.config.faults = SimFaults(error_rate=1.0)
    async with http.post(f"{sim.url}/api/v1/catalog/search/deploys", json=deploy_body()) as response:
        assert response.status == 503
    assert (await sim_state(sim))["counts"]["deploys"] == 0


async def test_drop_after_commit(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(faults=SimFaults(drop_after_commit_every=2)))
    url = f"{sim.url}/api/v1/catalog/search/deploys"
    async with http.post(url, json=deploy_body(title="first")) as response:
        assert response.status == 200
    # Neither reads nor refused writes count as committed writes.
    async with http.get(url) as response:
        assert response.status == 200
    async with http.post(url, json={"title": "invalid"}) as response:
        assert response.status == 400
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.post(url, json=deploy_body(title="second")) as response:
            await response.read()
    async with http.post(url, json=deploy_body(title="third")) as response:
        assert response.status == 200
    assert [d["title"] for d in (await sim_state(sim))["deploys"]["search"]] == ["first", "second", "third"]
    assert [entry["status"] for entry in await sim_requests(sim)] == [200, 200, 400, 0, 200]


async def test_outage_refuses_connections_until_resume(
    sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.url}/api/v1/catalog?pageSize=1"
    port = sim.port
    async with http.get(url) as response:
        assert response.status == 200
    await sim.outage(None)
    await asyncio.sleep(0.05)
    # Also the pooled keep-alive connection of ``http`` is gone, so it must connect anew.
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(url)
    async with aiohttp.ClientSession(headers=AUTH) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(url)
    await sim.resume()
    assert sim.port == port
    async with http.get(url) as response:
        assert response.status == 200
    assert len(await sim_requests(sim)) == 2


async def test_timed_outage(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/api/v1/catalog?pageSize=1"
    await sim.outage(0.3)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(url)
    await asyncio.sleep(0.5)
    async with http.get(url) as response:
        assert response.status == 200


async def test_latency(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(config(faults=SimFaults(latency_ms=150)))
    began = time.monotonic()
    async with http.get(f"{sim.url}/api/v1/catalog") as response:
        assert response.status == 200
    assert time.monotonic() - began >= 0.15
    began = time.monotonic()
    async with http.get(f"{sim.url}/_sim/healthz") as response:
        assert response.status == 200
    assert time.monotonic() - began < 0.15


async def test_inspection(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    before = time.time()
    async with http.post(f"{sim.url}/api/v1/catalog/search/deploys", json=deploy_body()) as response:
        assert response.status == 200
    async with http.get(f"{sim.url}/api/v1/catalog/nope") as response:
        assert response.status == 404
    log = await sim_requests(sim)
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/api/v1/catalog/search/deploys", 200),
        ("GET", "/api/v1/catalog/nope", 404),
    ]
    assert before <= log[0]["t"] <= log[1]["t"] <= time.time()
    assert (await sim_state(sim))["counts"] == {"deploys": 1, "events": 0, "metric_points": 0, "custom_data": 0}

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(f"{sim.url}/_sim/faults", json={"latency_ms": -1}) as response:
            assert response.status == 400
        async with anonymous.post(f"{sim.url}/_sim/faults", json={"force_429_every": 2}) as response:
            assert response.status == 200
        assert sim.config.faults.force_429_every == 2
        async with http.get(f"{sim.url}/api/v1/catalog") as response:
            assert response.status == 200
        async with anonymous.post(f"{sim.url}/_sim/reset") as response:
            assert response.status == 200
        snapshot = await sim_state(sim)
        assert snapshot["deploys"] == {} and snapshot["counts"]["deploys"] == 0
        assert await sim_requests(sim) == []
        # The reset also restarted the fault counters: this is again the first request, not the second.
        async with http.get(f"{sim.url}/api/v1/catalog") as response:
            assert response.status == 200
        async with anonymous.get(f"{sim.url}/_sim/healthz") as response:
            assert response.status == 200
