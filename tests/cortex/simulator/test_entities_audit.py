"""The simulator's "Create or patch entity", "Retrieve audit logs" and expired tokens, over real HTTP.

Answers are checked against the response schemas of the official spec (``OpenApiResponse``,
``AuditLogsResponse``); descriptors anyone could send are fuzzed: always a 2xx or a 4xx with
violations, never a 500.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from tests.support.paths import FIXTURES

TOKEN = "sim-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPEN_API = "/api/v1/open-api"
AUDIT = "/api/v1/audit-logs"
YAML = {"Content-Type": "application/openapi;charset=UTF-8"}


def descriptor(tag: str, *, name: str | None = None, repository: str | None = None, provider: str = "github") -> str:
    lines = ["openapi: 3.0.1", "info:", f"  title: {name or tag}", f"  x-cortex-tag: {tag}", "  x-cortex-type: service"]
    if repository:
        lines += ["  x-cortex-git:", f"    {provider}:", f"      repository: {repository}"]
    return "\n".join(lines) + "\n"


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


@pytest.fixture(scope="module")
def response_schema() -> dict[str, jsonschema.Draft202012Validator]:
    spec = json.loads((FIXTURES / "cortex" / "openapi.json").read_text())
    return {name: jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                    "components": spec["components"]})
            for name in ("OpenApiResponse", "AuditLogsResponse")}


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    config = SimulatorConfig(tokens=[TOKEN, "no-audit"], key_identifiers={TOKEN: "cortex-bridge"},
                             audit_log_denied_tokens=["no-audit"],
                             entities=[SimEntity(tag="checkout-service", name="Checkout")], metric_keys=["lead-time"])
    async with SimulatorServer(config) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def patch(http: aiohttp.ClientSession, sim: SimulatorServer, text: str | bytes,
                **params: str) -> tuple[int, Any]:
    async with http.patch(sim.url + OPEN_API, data=text, params=params, headers=YAML) as resp:
        return resp.status, await resp.json()


async def test_dry_run_validates_and_changes_nothing(
        sim: SimulatorServer, http: aiohttp.ClientSession, response_schema: dict[str, Any]) -> None:
    status, body = await patch(http, sim, descriptor("billing", repository="acme/billing"), dryRun="true")
    assert status == 201 and body == {"ok": True, "violations": []}
    response_schema["OpenApiResponse"].validate(body)
    assert "billing" not in sim.store.entities
    async with http.get(sim.url + "/api/v1/catalog/billing") as resp:
        assert resp.status == 404


async def test_create_then_patch_merges(
        sim: SimulatorServer, http: aiohttp.ClientSession, response_schema: dict[str, Any]) -> None:
    status, body = await patch(http, sim, descriptor("billing", name="Billing", repository="acme/billing",
                                                     provider="gitlab"))
    assert status == 201 and body["ok"] is True
    async with http.get(sim.url + "/api/v1/catalog", params={"gitRepositories": "acme/billing"}) as resp:
        found = (await resp.json())["entities"]
    assert [(e["tag"], e["name"], e["git"]["provider"]) for e in found] == [("billing", "Billing", "gitlab")]
    status, body = await patch(http, sim, "openapi: 3.0.1\ninfo:\n  x-cortex-tag: billing\n  title: Billing 2\n")
    assert status == 200
    response_schema["OpenApiResponse"].validate(body)
    entity = sim.store.entities["billing"]
    assert (entity.name, entity.git_repository) == ("Billing 2", "acme/billing")  # what it left out is kept


async def test_fail_if_entity_does_not_exist(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    status, body = await patch(http, sim, descriptor("nobody"), failIfEntityDoesNotExist="true")
    assert status == 404 and body["ok"] is False
    status, _ = await patch(http, sim, descriptor("checkout-service"), failIfEntityDoesNotExist="true")
    assert status == 200


@pytest.mark.parametrize(("text", "path"), [
    ("info:\n  x-cortex-tag: x\n", "openapi"),
    ("openapi: 3.0.1\n", "info"),
    ("openapi: 3.0.1\ninfo:\n  title: no tag\n", "info.x-cortex-tag"),
    ("openapi: 3.0.1\ninfo:\n  x-cortex-tag: 'has space'\n", "info.x-cortex-tag"),
    ("openapi: 3.0.1\ninfo:\n  x-cortex-tag: x\n  x-cortex-git: {github: {repository: norepo}}\n",
     "info.x-cortex-git.github.repository"),
])
async def test_invalid_descriptor_is_400_with_violations(
        sim: SimulatorServer, http: aiohttp.ClientSession, response_schema: dict[str, Any], text: str,
        path: str) -> None:
    status, body = await patch(http, sim, text)
    assert status == 400 and body["ok"] is False
    response_schema["OpenApiResponse"].validate(body)
    assert path in [p for v in body["violations"] for p in v["paths"]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                   lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                          max_size=4),
                                   max_leaves=12).map(lambda v: json.dumps({"openapi": "3", "info": v}))))
async def test_any_body_is_answered_not_crashed(sim: SimulatorServer, text: str | bytes) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, body = await patch(http, sim, text, dryRun="true")
    assert status in (200, 201, 400), body


async def test_writes_are_audited_under_the_key_identifier(
        sim: SimulatorServer, http: aiohttp.ClientSession, response_schema: dict[str, Any]) -> None:
    deploy = {"title": "d", "timestamp": "2026-07-13T18:26:52Z", "type": "DEPLOY"}
    async with http.post(sim.url + "/api/v1/catalog/checkout-service/deploys", json=deploy) as resp:
        assert resp.status == 200
    async with http.post(sim.url + "/api/v1/catalog/nobody/deploys", json=deploy) as resp:
        assert resp.status == 404  # refused: not audited
    await patch(http, sim, descriptor("billing"), dryRun="true")  # a dry run is not a write
    await patch(http, sim, descriptor("billing"))
    async with http.get(sim.url + AUDIT, params={"actorApiKeyIdentifiers": "cortex-bridge", "pageSize": "10",
                                                 "page": "0"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    response_schema["AuditLogsResponse"].validate(body)
    assert [(e["action"], e["objectType"], e["objectIdentifier"], e["actorIdentifier"]) for e in body["logs"]] == [
        ("UPDATE", "CATALOG", "billing", "cortex-bridge"), ("CREATE", "DEPLOY", "checkout-service", "cortex-bridge")]
    assert body["total"] == 2
    async with http.get(sim.url + AUDIT, params={"actorApiKeyIdentifiers": "someone-else"}) as resp:
        assert (await resp.json())["total"] == 0
    async with http.get(sim.url + AUDIT, params={"startTime": "2999-01-01T00:00:00Z"}) as resp:
        assert (await resp.json())["total"] == 0


async def test_audit_logs_need_their_permission(sim: SimulatorServer) -> None:
    async with (aiohttp.ClientSession(headers={"Authorization": "Bearer no-audit"}) as http,
                http.get(sim.url + AUDIT) as resp):
        assert resp.status == 403
        assert "audit logs" in (await resp.json())["details"]


async def test_new_endpoints_have_the_faults_of_the_others(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession() as anonymous, anonymous.get(sim.url + AUDIT) as resp:
        assert resp.status == 401
    sim.config.faults = sim.config.faults.model_copy(update={"force_429_every": 1})
    status, _ = await patch(http, sim, descriptor("billing"))
    assert status == 429 and "billing" not in sim.store.entities
    sim.config.faults = sim.config.faults.model_copy(update={"force_429_every": 0, "error_rate": 1.0})
    async with http.get(sim.url + "/api/v1/eng-intel/custom-metrics/lead-time") as resp:
        assert resp.status == 503


async def test_expired_jwt_is_401(sim: SimulatorServer) -> None:
    expired, valid = jwt({"exp": int(time.time()) - 10}), jwt({"exp": int(time.time()) + 3600})
    sim.config.tokens.extend([expired, valid])
    url = sim.url + "/api/v1/catalog"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {expired}"}) as resp:
            assert resp.status == 401 and "expired" in (await resp.json())["details"]
        async with http.get(url, headers={"Authorization": f"Bearer {valid}"}) as resp:
            assert resp.status == 200
