"""Dependencies and OpenAPI docs, end to end: native ingest -> queue -> sender -> simulated Cortex.

Every outcome the other kinds are tested for: delivered (2xx), a 400 in a bulk isolated to the
bad record, a 404 (an unknown callee fails the whole bulk in Cortex: isolated, only that edge
waits), 429, and answers lost after Cortex stored the write (a PUT is simply repeated). Docs:
only the newest document per entity is sent; older queued ones are superseded, never sent.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.app import Bridge
from bridge.cortex.simulator import SimEntity, SimFaults, SimulatorServer
from bridge.queue import inspect
from tests.sender.test_sender import drained, queue_conn
from tests.support.cortex import BridgeFactory, post_records, sim_config, sim_requests, sim_state, wait_until
from tests.support.paths import FIXTURES

REAL_SPEC = json.loads((FIXTURES / "cortex" / "openapi.json").read_text())


def edge(caller: str, callee: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "dependency", "entity": caller, "callee": callee, **fields}


def spec(version: str) -> dict[str, Any]:
    """Cortex's own spec, with the version changed so that documents differ."""
    return {**REAL_SPEC, "info": {**REAL_SPEC["info"], "version": version}}


def trace(bridge: Bridge, record_id: str) -> dict[str, Any]:
    """Where the queue says a record stands (``status``: queued, delivered, dead_letter)."""
    conn = queue_conn(bridge)
    try:
        found: dict[str, Any] = inspect.trace(conn, record_id)[0]
        return found
    finally:
        conn.close()


def writes(log: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [r for r in log if r["method"] == "PUT" and r["path"].endswith(suffix)]


async def test_dependencies_are_upserted_in_one_bulk_request(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, cortex={"linger_ms": 200})
    records = [edge("checkout-service", "payments-api", method="POST", path="/charge", description="old"),
               edge("checkout-service", "inventory"),
               edge("payments-api", "inventory", metadata={"protocol": "grpc"}),
               edge("checkout-service", "payments-api", method="POST", path="/charge", description="new")]
    status, body = await post_records(bridge, {"records": records})
    assert status == 202 and body["accepted"] == 4
    await wait_until(lambda: drained(bridge))
    stored = (await sim_state(sim))["dependencies"]
    assert sorted((d["callee"], d.get("description")) for d in stored["checkout-service"]) == [
        ("inventory", None), ("payments-api", "new")]
    assert stored["payments-api"] == [{"callee": "inventory", "method": None, "path": None, "tag": "inventory",
                                       "metadata": {"protocol": "grpc"}}]
    assert len(writes(await sim_requests(sim), "/catalog/dependencies")) == 1
    # the superseded edge is settled as delivered without being sent
    assert inspect.trace(queue_conn(bridge), body["ids"][0])[0]["status"] == "delivered"
    assert inspect.trace(queue_conn(bridge), body["ids"][0])[0]["how"] == "superseded"
    assert inspect.trace(queue_conn(bridge), body["ids"][3])[0]["how"] == "sent"


async def test_an_unknown_callee_fails_the_bulk_and_only_its_edge_waits(sim: SimulatorServer,
                                                                        make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, cortex={"linger_ms": 200}, retry={"not_found_retry_seconds": 0.3})
    records = [edge("checkout-service", "inventory"), edge("checkout-service", "ledger"),
               edge("payments-api", "inventory")]
    _, body = await post_records(bridge, {"records": records})
    good, missing = [body["ids"][0], body["ids"][2]], body["ids"][1]
    await wait_until(lambda: len((sim.store.snapshot()["dependencies"]).get("checkout-service", [])) == 1)
    await wait_until(lambda: "payments-api" in sim.store.snapshot()["dependencies"])
    # Cortex holds an edge before the sender has its answer and has recorded the delivery: wait
    # for the queue to have settled both good edges (and its depth to say so), not for Cortex.
    await wait_until(lambda: all(trace(bridge, i)["status"] == "delivered" for i in good)
                     and bridge.queue.depth == 1)
    waiting = trace(bridge, missing)  # the edge to the missing entity waits, the others went through
    assert waiting["status"] == "queued" and "ledger" in waiting["last_error"]
    log = await sim_requests(sim)
    assert [r["status"] for r in writes(log, "/catalog/dependencies")][0] == 404
    sim.store.entities["ledger"] = SimEntity(tag="ledger")
    await wait_until(lambda: drained(bridge))
    assert sorted(d["callee"] for d in (await sim_state(sim))["dependencies"]["checkout-service"]) == [
        "inventory", "ledger"]


async def test_a_rejected_dependency_is_isolated_and_dead_lettered(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(reject_bodies_containing="POISON"))) as sim:
        bridge = await make_bridge(sim, cortex={"linger_ms": 200})
        records = [edge("checkout-service", "inventory"), edge("payments-api", "inventory", description="POISON"),
                   edge("inventory", "payments-api")]
        status, body = await post_records(bridge, {"records": records})
        await wait_until(lambda: drained(bridge))
        dead = inspect.dlq_show(queue_conn(bridge), body["ids"][1])
        assert dead is not None and dead["status"] == 400
        assert sorted((await sim_state(sim))["dependencies"]) == ["checkout-service", "inventory"]


async def test_lost_answers_and_429s_end_with_every_edge_and_document_stored_once(make_bridge: BridgeFactory) -> None:
    faults = SimFaults(drop_after_commit_every=2, force_429_every=5, retry_after_seconds=0)
    async with SimulatorServer(sim_config(faults=faults)) as sim:
        bridge = await make_bridge(sim, cortex={"max_concurrency": 1},
                                   retry={"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.2})
        for i in range(6):
            await post_records(bridge, {"records": [edge("checkout-service", "inventory", description=f"v{i}"),
                                                    {"kind": "docs", "entity": "payments-api", "spec": spec(f"{i}")}]})
            await wait_until(lambda: drained(bridge), timeout=30)
        state = await sim_state(sim)
        assert [d["description"] for d in state["dependencies"]["checkout-service"]] == ["v5"]
        assert state["docs"]["payments-api"]["info"]["version"] == "5"
        log = await sim_requests(sim)
        assert any(r["status"] == 0 for r in log), "no answer was dropped"
        assert any(r["status"] == 429 for r in log), "no 429 was answered"
        assert inspect.dlq_list(queue_conn(bridge)) == []


async def test_only_the_newest_queued_document_of_an_entity_is_sent(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config()) as sim:
        # Cortex down while a CI job publishes three versions: once it is back, only the last goes.
        sim.config.faults.error_rate = 1.0
        bridge = await make_bridge(sim, retry={"initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.2})
        ids = []
        for version in ("1.0", "1.1", "1.2"):
            status, body = await post_records(bridge, {"kind": "docs", "entity": "inventory", "spec": spec(version)})
            assert status == 202
            ids += body["ids"]
        await wait_until(lambda: any(r["status"] == 503 for r in sim.store.requests))
        sim.config.faults.error_rate = 0.0
        await wait_until(lambda: drained(bridge), timeout=30)
        assert (await sim_state(sim))["docs"]["inventory"]["info"]["version"] == "1.2"
        answered = [r for r in writes(await sim_requests(sim), "/documentation/openapi") if r["status"] == 200]
        assert len(answered) == 1
        assert all(inspect.trace(queue_conn(bridge), i)[0]["status"] == "delivered" for i in ids)
        assert [inspect.trace(queue_conn(bridge), i)[0]["how"] for i in ids] == ["superseded", "superseded", "sent"]


async def test_docs_for_an_unknown_entity_wait_until_it_exists(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, retry={"not_found_retry_seconds": 0.3})
    await post_records(bridge, {"kind": "docs", "entity": "ledger", "spec": spec("1")})
    await wait_until(lambda: any(r["status"] == 404 for r in sim.store.requests))
    assert bridge.queue.depth == 1
    sim.store.entities["ledger"] = SimEntity(tag="ledger")
    await wait_until(lambda: drained(bridge))
    assert (await sim_state(sim))["docs"]["ledger"]["info"]["title"] == REAL_SPEC["info"]["title"]
