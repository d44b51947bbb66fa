"""Dependencies a source stopped reporting are removed, end to end: sources -> queue -> sender ->
the simulator, with short windows (``reconcile_after_seconds`` of about a second).

Only edges the bridge delivered from a source named in the setting are ever deleted: edges of
other sources and edges Cortex got elsewhere stay. A source that keeps reporting an edge keeps
it. The ledger is durable (a restarted bridge removes what its predecessor delivered). A removal
Cortex cannot take now is tried again; one it refuses is narrowed down and forgotten.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.config import ConfigError, load_settings
from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.sender.edges import STATE_PREFIX
from tests.sender.test_sender import drained
from tests.support.cortex import SIM_TOKEN, BridgeFactory, post_records, sim_requests, sim_state, wait_until

#: A tracing pipeline's service graph: Jaeger dependency links (parent, child, callCount).
GRAPH_SOURCE = {
    "name": "graph", "type": "mapping", "allow_unauthenticated": True,
    "subject": {"keys": ["body.parent"]}, "entity": {"template": "{body.parent}", "lookup": False},
    "rules": [{"name": "edge", "when": "body.callCount > `0`", "kind": "dependency", "id": ["body.parent", "body.child"],
               "fields": {"callee": "body.child", "metadata": "{calls: body.callCount}"}}],
}
RECONCILE = {"reconcile_after_seconds": {"graph": 1.0}, "reconcile_interval_seconds": 0.2}


def edge(caller: str, callee: str) -> dict[str, Any]:
    return {"kind": "dependency", "entity": caller, "callee": callee}


async def report(bridge: Bridge, parent: str, child: str) -> None:
    url = f"http://127.0.0.1:{bridge.ingest_port}/webhooks/graph"
    async with aiohttp.ClientSession() as http, \
            http.post(url, json={"parent": parent, "child": child, "callCount": 3}) as response:
        assert response.status == 202, await response.text()


async def edges_in_cortex(sim: SimulatorServer) -> set[tuple[str, str]]:
    stored = (await sim_state(sim))["dependencies"]
    return {(caller, d["callee"]) for caller, items in stored.items() for d in items}


def deletes(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["method"] == "DELETE" and r["path"].endswith("/catalog/dependencies")]


async def ledger(bridge: Bridge) -> dict[str, str]:
    return await bridge.queue.get_states(STATE_PREFIX)


async def test_an_edge_no_longer_reported_is_removed_and_only_the_bridges_own(
        sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    # Cortex got one edge from elsewhere (another integration): never the bridge's to delete.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SIM_TOKEN}"}) as http, \
            http.put(f"{sim.url}/api/v1/catalog/dependencies",
                     json={"values": {"inventory": [{"tag": "payments-api"}]}}) as response:
        assert response.status == 200
    bridge = await make_bridge(sim, sources=[GRAPH_SOURCE], dependencies=RECONCILE)
    await report(bridge, "checkout-service", "payments-api")
    await report(bridge, "checkout-service", "inventory")
    # an edge from a source without reconciliation: kept whatever happens
    status, _ = await post_records(bridge, edge("payments-api", "inventory"))
    assert status == 202
    await wait_until(lambda: drained(bridge))
    assert await edges_in_cortex(sim) == {("inventory", "payments-api"), ("checkout-service", "payments-api"),
                                          ("checkout-service", "inventory"), ("payments-api", "inventory")}
    # checkout-service -> payments-api goes on being reported; -> inventory is not
    for _ in range(12):
        await report(bridge, "checkout-service", "payments-api")
        await asyncio.sleep(0.2)
    await wait_until(lambda: _missing(sim, ("checkout-service", "inventory")))
    assert await edges_in_cortex(sim) == {("inventory", "payments-api"), ("checkout-service", "payments-api"),
                                          ("payments-api", "inventory")}
    removals = deletes(await sim_requests(sim))
    assert [r["status"] for r in removals] == [204]  # one request removed the one stale edge
    assert len(await ledger(bridge)) == 1  # the edge still reported


async def test_the_ledger_survives_a_restart(sim: SimulatorServer, make_bridge: BridgeFactory,
                                             tmp_path: Path) -> None:
    queue = tmp_path / "edges.db"
    first = await make_bridge(sim, queue_path=queue, sources=[GRAPH_SOURCE],
                              dependencies={"reconcile_after_seconds": {"graph": 3600.0}})
    await report(first, "checkout-service", "inventory")
    await wait_until(lambda: drained(first))
    await first.stop()
    assert await edges_in_cortex(sim) == {("checkout-service", "inventory")}
    second = await make_bridge(sim, queue_path=queue, sources=[GRAPH_SOURCE], dependencies=RECONCILE)
    await wait_until(lambda: _missing(sim, ("checkout-service", "inventory")))
    assert await ledger(second) == {}


async def test_a_removal_cortex_cannot_take_now_is_tried_again(sim: SimulatorServer,
                                                               make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, sources=[GRAPH_SOURCE], dependencies=RECONCILE,
                               cortex={"circuit_failure_threshold": 1000})
    await report(bridge, "checkout-service", "inventory")
    await wait_until(lambda: drained(bridge))
    sim.config.faults = SimFaults(error_rate=1.0)
    await wait_until(lambda: _deletes_answered(sim, 503), timeout=10)
    assert len(await ledger(bridge)) == 1  # kept until Cortex confirms
    sim.config.faults = SimFaults()
    await wait_until(lambda: _missing(sim, ("checkout-service", "inventory")))
    await wait_until(lambda: _ledger_empty(bridge))


async def test_a_bulk_cortex_refuses_is_narrowed_and_the_refused_edge_forgotten(
        sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, sources=[GRAPH_SOURCE],
                               dependencies={"reconcile_after_seconds": {"graph": 1.0},
                                             "reconcile_interval_seconds": 1.5})
    for child in ("inventory", "payments-api"):
        await report(bridge, "checkout-service", child)
    await wait_until(lambda: drained(bridge))
    # payments-api is deleted from Cortex (its edges with it in a real tenant): a DELETE naming it is 404
    del sim.store.entities["payments-api"]
    await wait_until(lambda: _missing(sim, ("checkout-service", "inventory")))
    await wait_until(lambda: _ledger_empty(bridge))
    statuses = [r["status"] for r in deletes(await sim_requests(sim))]
    assert statuses[0] == 404 and 204 in statuses  # the bulk, then its halves


async def test_nothing_is_deleted_without_the_setting(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, sources=[GRAPH_SOURCE])
    await report(bridge, "checkout-service", "inventory")
    await wait_until(lambda: drained(bridge))
    assert bridge.sender is not None and bridge.sender.edges is None
    assert await ledger(bridge) == {}


async def _missing(sim: SimulatorServer, pair: tuple[str, str]) -> bool:
    return pair not in await edges_in_cortex(sim)


async def _deletes_answered(sim: SimulatorServer, status: int) -> bool:
    return sum(1 for r in deletes(await sim_requests(sim)) if r["status"] == status) >= 2


async def _ledger_empty(bridge: Bridge) -> bool:
    return not await ledger(bridge)


def test_ledger_values_are_json_the_module_reads_back() -> None:
    from bridge.sender.edges import _entry

    assert _entry(json.dumps({"edge": ["a", "b", "GET", "/x"], "seen": 5})) == (("a", "b", "GET", "/x"), 5.0)
    assert _entry("not json") is None and _entry(json.dumps({"edge": ["a"]})) is None and _entry(None) is None


def test_a_reconciled_source_must_exist() -> None:
    with pytest.raises(ConfigError, match="dependencies.reconcile_after_seconds: no source named tracing"):
        load_settings(None, ingest={"allow_unauthenticated": True},
                      dependencies={"reconcile_after_seconds": {"tracing": 3600}})
    settings = load_settings(None, ingest={"allow_unauthenticated": True}, sources=[GRAPH_SOURCE],
                             dependencies={"reconcile_after_seconds": {"graph": 3600, "native": 7200}})
    assert settings.dependencies.reconcile_after_seconds == {"graph": 3600.0, "native": 7200.0}
