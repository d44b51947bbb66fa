"""The simulator's *Update deployment by UUID* and *Update custom event by UUID*, over real HTTP.

Bodies are checked against the official spec's request schema of the PUT (``SaveDeployRequest``,
``SaveCustomEventRequest``) and answers against its response schema (``CustomDeploy``,
``CustomEventResponse``); faults apply to these writes as to any other.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from bridge.cortex.simulator import SimEntity, SimFaults, SimulatorConfig, SimulatorServer
from tests.support.cortex import sim_requests, sim_state
from tests.support.paths import FIXTURES

TOKEN = "sim-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEPLOY = "/api/v1/catalog/{tagOrId}/deploys/{uuid}"
EVENT = "/api/v1/catalog/{tagOrId}/custom-events/{uuid}"
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"


def _spec_validators() -> dict[str, jsonschema.Draft202012Validator]:
    spec = json.loads((FIXTURES / "cortex" / "openapi.json").read_text())
    schemas = spec["components"]["schemas"]
    # docs/cortex-api.md "generator artifacts": customData values are any JSON; the spec says objects.
    for schema in schemas.values():
        custom = schema.get("properties", {}).get("customData")
        if custom is not None and (custom.get("additionalProperties") or {}).get("type") == "object":
            custom["additionalProperties"] = {}

    def validator(ref: dict[str, Any]) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({**ref, "components": spec["components"]},
                                               format_checker=jsonschema.FormatChecker())

    out = {}
    for template in (DEPLOY, EVENT):
        operation = spec["paths"][template]["put"]
        out[f"{template} request"] = validator(operation["requestBody"]["content"]["application/json"]["schema"])
        out[f"{template} response"] = validator(operation["responses"]["200"]["content"]["application/json"]["schema"])
    return out


VALIDATORS = _spec_validators()


def deploy_body(**fields: Any) -> dict[str, Any]:
    return {"title": "Deploy 9f1c2e", "timestamp": "2026-07-13T18:26:52Z", "type": "DEPLOY", **fields}


def event_body(**fields: Any) -> dict[str, Any]:
    return {"title": "Alert fired", "type": "INCIDENT", "timestamp": "2026-07-13T18:26:52Z", **fields}


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    config = SimulatorConfig(tokens=[TOKEN], entities=[SimEntity(tag="checkout-service"), SimEntity(tag="search")],
                             metric_keys=[])
    async with SimulatorServer(config) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def _create(http: aiohttp.ClientSession, sim: SimulatorServer, kind: str, tag: str,
                  body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{sim.url}/api/v1/catalog/{tag}/{kind}", json=body) as response:
        assert response.status == 200
        created: dict[str, Any] = await response.json()
    return created


async def _put(http: aiohttp.ClientSession, sim: SimulatorServer, template: str, body: Any,
               **params: str) -> tuple[int, Any]:
    async with http.put(sim.url + template.format(**params), json=body) as response:
        return response.status, await response.json()


async def test_update_deploy_replaces_fields_and_keeps_identity(
        sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    created = await _create(http, sim, "deploys", "checkout-service",
                            deploy_body(sha="9f1c2e", url="https://ci/1", customData={"a": 1}))
    update = deploy_body(timestamp="2026-07-13T18:30:00.25+00:00", sha="9f1c2e", environment="production",
                         url="https://argo/app", deployer={"name": "alice", "email": "alice@example.com"},
                         customData={"sources": [{"source": "github", "id": "x"}, {"source": "argocd", "id": "y"}]})
    VALIDATORS[f"{DEPLOY} request"].validate(update)
    status, updated = await _put(http, sim, DEPLOY, update, tagOrId="checkout-service", uuid=created["uuid"])
    assert status == 200, updated
    VALIDATORS[f"{DEPLOY} response"].validate(updated)
    assert {key: updated[key] for key in ("uuid", "id", "serviceId")} == {
        key: created[key] for key in ("uuid", "id", "serviceId")}
    assert updated["timestamp"] == "2026-07-13T18:30:00.250Z"
    assert (updated["environment"], updated["url"], updated["deployerName"]) == ("production", "https://argo/app",
                                                                                  "alice")
    assert updated["customData"] == update["customData"]  # replaced, not merged
    stored = (await sim_state(sim))["deploys"]["checkout-service"]
    assert stored == [updated]
    async with http.get(f"{sim.url}/api/v1/catalog/checkout-service/deploys") as response:
        listed = (await response.json())["deployments"]
    assert [d["uuid"] for d in listed] == [created["uuid"]] and listed[0]["deployer"]["name"] == "alice"


async def test_update_deploy_is_idempotent(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    created = await _create(http, sim, "deploys", "search", deploy_body())
    answers = [await _put(http, sim, DEPLOY, deploy_body(sha="abc"), tagOrId="search", uuid=created["uuid"])
               for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == 200
    assert (await sim_state(sim))["counts"]["deploys"] == 1


async def test_update_deploy_refusals(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    created = await _create(http, sim, "deploys", "search", deploy_body(title="kept"))
    uuid = created["uuid"]
    # Unknown uuid, a uuid of another entity's deploy, an unknown entity: 404.
    for tag, target in (("search", UNKNOWN_UUID), ("checkout-service", uuid), ("nope", uuid)):
        status, error = await _put(http, sim, DEPLOY, deploy_body(), tagOrId=tag, uuid=target)
        assert status == 404 and error["type"] == "NOT_FOUND", (tag, target, error)
    status, error = await _put(http, sim, DEPLOY, deploy_body(), tagOrId="search", uuid="not-a-uuid")
    assert status == 400 and error["details"].startswith("uuid:")
    invalid = deploy_body(type="RELEASE")
    assert not VALIDATORS[f"{DEPLOY} request"].is_valid(invalid)
    status, error = await _put(http, sim, DEPLOY, invalid, tagOrId="search", uuid=uuid)
    assert status == 400 and error["details"].startswith("type:")
    assert (await sim_state(sim))["deploys"]["search"] == [created]


async def test_update_event(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    created = await _create(http, sim, "custom-events", "checkout-service", event_body(description="firing"))
    update = event_body(title="Alert resolved", description="resolved", url="https://am/1",
                        customData={"status": "resolved"})
    VALIDATORS[f"{EVENT} request"].validate(update)
    status, updated = await _put(http, sim, EVENT, update, tagOrId="checkout-service", uuid=created["uuid"])
    assert status == 200, updated
    VALIDATORS[f"{EVENT} response"].validate(updated)
    assert updated == {**update, "uuid": created["uuid"], "timestamp": "2026-07-13T18:26:52.000Z"}
    assert (await sim_state(sim))["events"]["checkout-service"] == [updated]
    status, error = await _put(http, sim, EVENT, update, tagOrId="checkout-service", uuid=UNKNOWN_UUID)
    assert status == 404 and error["type"] == "NOT_FOUND"
    status, error = await _put(http, sim, EVENT, event_body(type=5), tagOrId="checkout-service",
                               uuid=created["uuid"])
    assert status == 400 and error["details"].startswith("type:")


@pytest.mark.parametrize("faults", [SimFaults(error_rate=1.0), SimFaults(force_429_every=1)])
async def test_refusing_faults_leave_the_item_unchanged(sim: SimulatorServer, http: aiohttp.ClientSession,
                                                        faults: SimFaults) -> None:
    created = await _create(http, sim, "deploys", "search", deploy_body(title="before"))
    event = await _create(http, sim, "custom-events", "search", event_body(title="before"))
    sim.config.faults = faults
    for template, body, uuid in ((DEPLOY, deploy_body(title="after"), created["uuid"]),
                                 (EVENT, event_body(title="after"), event["uuid"])):
        status, _ = await _put(http, sim, template, body, tagOrId="search", uuid=uuid)
        assert status in (429, 503)
    state = await sim_state(sim)
    assert state["deploys"]["search"][0]["title"] == state["events"]["search"][0]["title"] == "before"


async def test_dropped_answer_after_commit(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    created = await _create(http, sim, "deploys", "search", deploy_body(title="before"))
    sim.config.faults = SimFaults(drop_after_commit_every=1)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await _put(http, sim, DEPLOY, deploy_body(title="after"), tagOrId="search", uuid=created["uuid"])
    assert (await sim_state(sim))["deploys"]["search"][0]["title"] == "after"
    # aiohttp itself may repeat an idempotent PUT on a reused connection; each answer is lost.
    log = [(e["method"], e["status"]) for e in await sim_requests(sim)]
    assert log[0] == ("POST", 200) and set(log[1:]) == {("PUT", 0)}
    assert (await sim_state(sim))["counts"]["deploys"] == 1
