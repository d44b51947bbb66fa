"""The simulator's dependency and OpenAPI-docs endpoints over real HTTP, against the official spec:
bodies expected to be accepted are validated against the spec's request schema first; refusals
store nothing; the faults every other write has (a 429, a 503, a connection dropped after the
write committed) apply to these too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from bridge.cortex.simulator import SimFaults, SimulatorServer
from tests.cortex.simulator.test_simulator import AUTH, OPENAPI_SPEC, config
from tests.support.cortex import sim_requests, sim_state

DEPENDENCIES = "/api/v1/catalog/dependencies"
DOCS = "/api/v1/catalog/{tagOrId}/documentation/openapi"
REAL_SPEC = OPENAPI_SPEC.read_text()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(config()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        session._retry_connection = False  # aiohttp would resend a PUT by itself (the bridge's client does not)
        yield session


@pytest.fixture(scope="module")
def schemas() -> dict[str, jsonschema.Draft202012Validator]:
    spec = json.loads(OPENAPI_SPEC.read_text())

    def validator(path: str, method: str) -> jsonschema.Draft202012Validator:
        body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        return jsonschema.Draft202012Validator({**body, "components": spec["components"]})

    return {"dependencies": validator(DEPENDENCIES, "put"), "docs": validator(DOCS, "put")}


def edges(**values: list[dict[str, Any]]) -> dict[str, Any]:
    return {"values": {caller.replace("_", "-"): items for caller, items in values.items()}}


async def test_bulk_upsert_keys_edges_by_caller_callee_method_and_path(
        sim: SimulatorServer, http: aiohttp.ClientSession, schemas: dict[str, Any]) -> None:
    first = edges(checkout_service=[{"tag": "payments-api", "method": "POST", "path": "/charge", "description": "a"},
                                    {"tag": "search", "metadata": {"k": "v"}}])
    schemas["dependencies"].validate(first)
    async with http.put(sim.url + DEPENDENCIES, json=first) as response:
        assert response.status == 200
        assert (await response.json())["values"]["checkout-service"][0]["tag"] == "payments-api"
    again = edges(checkout_service=[{"tag": "payments-api", "method": "POST", "path": "/charge", "description": "b"}])
    schemas["dependencies"].validate(again)
    async with http.put(sim.url + DEPENDENCIES, json=again) as response:
        assert response.status == 200
    async with http.get(f"{sim.url}/api/v1/catalog/checkout-service/dependencies") as response:
        listed = (await response.json())["dependencies"]
    assert sorted((d["calleeTag"], d["method"], d["description"]) for d in listed) == [
        ("payments-api", "POST", "b"), ("search", None, None)]
    assert all(d["callerTag"] == "checkout-service" for d in listed)

    async with http.delete(sim.url + DEPENDENCIES, json=edges(checkout_service=[{"tag": "search"}])) as response:
        assert response.status == 204
    stored = (await sim_state(sim))["dependencies"]["checkout-service"]
    assert [d["callee"] for d in stored] == ["payments-api"]


@pytest.mark.parametrize("body", [
    edges(checkout_service=[{"tag": "ghost"}, {"tag": "search"}]),  # unknown callee
    edges(ghost=[{"tag": "search"}], checkout_service=[{"tag": "search"}]),  # unknown caller
])
async def test_an_unknown_entity_fails_the_whole_bulk(sim: SimulatorServer, http: aiohttp.ClientSession,
                                                      schemas: dict[str, Any], body: dict[str, Any]) -> None:
    schemas["dependencies"].validate(body)
    async with http.put(sim.url + DEPENDENCIES, json=body) as response:
        assert response.status == 404
    assert (await sim_state(sim))["dependencies"] == {}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "values"),
    (edges(search=[{"method": "GET"}]), "values.search.0.tag"),
    (edges(search=[{"tag": "payments-api", "method": "FETCH", "path": "/x"}]), "values.search.0.method"),
    ({"values": {"search": {"tag": "payments-api"}}}, "values.search"),
])
async def test_invalid_dependency_bodies_are_400(sim: SimulatorServer, http: aiohttp.ClientSession,
                                                 body: dict[str, Any], field: str) -> None:
    async with http.put(sim.url + DEPENDENCIES, json=body) as response:
        assert response.status == 400
        assert (await response.json())["details"].startswith(f"{field}:")
    assert (await sim_state(sim))["dependencies"] == {}


async def test_openapi_docs_put_get_delete(sim: SimulatorServer, http: aiohttp.ClientSession,
                                           schemas: dict[str, Any]) -> None:
    url = sim.url + DOCS.format(tagOrId="payments-api")
    async with http.get(url) as response:
        assert response.status == 404
    body = {"spec": REAL_SPEC}
    schemas["docs"].validate(body)
    async with http.put(url, json=body) as response:
        assert response.status == 200
    async with http.get(url) as response:
        assert json.loads((await response.json())["spec"]) == json.loads(REAL_SPEC)
    async with http.put(sim.url + DOCS.format(tagOrId="ghost"), json=body) as response:
        assert response.status == 404
    async with http.delete(url) as response:
        assert response.status == 204
    assert (await sim_state(sim))["docs"] == {}


@pytest.mark.parametrize("body", [{}, {"spec": "not json"}, {"spec": "[1, 2]"}, {"spec": {"openapi": "3.0.0"}}])
async def test_invalid_docs_bodies_are_400(sim: SimulatorServer, http: aiohttp.ClientSession, body: Any) -> None:
    async with http.put(sim.url + DOCS.format(tagOrId="search"), json=body) as response:
        assert response.status == 400
    assert (await sim_state(sim))["docs"] == {}


async def test_faults_apply_to_dependency_and_docs_writes(sim: SimulatorServer, http: aiohttp.ClientSession) -> None:
    sim.config.faults = SimFaults(drop_after_commit_every=2)
    dependency = edges(search=[{"tag": "payments-api"}])
    docs = sim.url + DOCS.format(tagOrId="search")
    async with http.put(sim.url + DEPENDENCIES, json=dependency) as response:
        assert response.status == 200
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.put(docs, json={"spec": REAL_SPEC}) as response:
            await response.read()
    state = await sim_state(sim)
    assert state["docs"] == {"search": json.loads(REAL_SPEC)}  # committed, then the answer was lost
    assert [e["status"] for e in await sim_requests(sim)] == [200, 0]

    sim.config.faults = SimFaults(force_429_every=1, retry_after_seconds=4)
    async with http.put(sim.url + DEPENDENCIES, json=edges(search=[{"tag": "checkout-service"}])) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "4"
    sim.config.faults = SimFaults(error_rate=1.0)
    async with http.delete(docs) as response:
        assert response.status == 503
    state = await sim_state(sim)
    assert [d["callee"] for d in state["dependencies"]["search"]] == ["payments-api"] and "search" in state["docs"]
