"""Every delivery outcome, end to end: native ingest -> SQLite queue -> sender -> simulated Cortex."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from bridge.app import Bridge
from bridge.cortex.simulator import SimEntity, SimFaults, SimulatorServer
from bridge.metrics import sample
from bridge.queue import inspect
from bridge.records import BRIDGE_ID_KEY, format_timestamp
from tests.support.cortex import BridgeFactory, post_records, sim_config, sim_requests, sim_state, wait_until
from tests.support.records import NOW, deploy, event, point


async def drained(bridge: Bridge) -> bool:
    return bridge.queue.depth == 0


def queue_conn(bridge: Bridge) -> Any:
    return inspect.open_file(bridge.settings.queue.path)


async def test_deploys_events_points_and_custom_data_are_delivered(sim: SimulatorServer,
                                                                   make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim)
    delivered_before = sample("cortex_bridge_records_delivered_total", {"source": "native", "kind": "metric"})
    requests_before = sample("cortex_bridge_cortex_requests_total",
                             {"endpoint": "custom_metrics.bulk", "status": "200"})
    records = [deploy(1), event(2)] + [point(i) for i in range(250)] + [
        {"kind": "custom_data", "entity": "payments-api", "key": "tier", "value": 1},
        {"kind": "custom_data", "entity": "inventory", "key": "owner", "value": {"team": "core"}}]
    status, body = await post_records(bridge, {"records": records})
    assert status == 202 and body["accepted"] == len(records)
    await wait_until(lambda: drained(bridge))
    state = await sim_state(sim)
    assert state["counts"] == {"deploys": 1, "events": 1, "metric_points": 250, "custom_data": 2}
    stored = state["deploys"]["checkout-service"][0]
    assert stored["customData"][BRIDGE_ID_KEY] == body["ids"][0]
    writes = [r for r in await sim_requests(sim) if r["method"] in ("POST", "PUT")]
    assert len([r for r in writes if r["path"].endswith("/bulk")]) == 3  # 250 points -> 100 + 100 + 50
    assert len([r for r in writes if r["path"] == "/api/v1/catalog/custom-data"]) == 1
    trace = inspect.trace(queue_conn(bridge), body["ids"][0])
    assert trace[0]["status"] == "delivered" and trace[0]["cortex_uuid"] == stored["uuid"]
    assert sample("cortex_bridge_records_delivered_total", {"source": "native", "kind": "metric"}) \
        - delivered_before == 250
    assert sample("cortex_bridge_cortex_requests_total",
                  {"endpoint": "custom_metrics.bulk", "status": "200"}) - requests_before == 3


async def test_429_pauses_all_sending_and_costs_no_attempt(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(force_429_every=3, retry_after_seconds=1))) as sim:
        bridge = await make_bridge(sim, cortex={"max_concurrency": 4})
        await post_records(bridge, {"records": [event(i) for i in range(8)]})
        await wait_until(lambda: drained(bridge))
        log = await sim_requests(sim)
        limited = [r for r in log if r["status"] == 429]
        assert limited
        for r in limited:
            # Requests already on the wire when the 429 was sent arrive within milliseconds of it.
            after = [x for x in log if r["t"] + 0.05 < x["t"] < r["t"] + 0.95]
            assert not after, "a request left during the Retry-After pause"
        assert (await sim_state(sim))["counts"]["events"] == 8
        assert inspect.stats(queue_conn(bridge))["dead_letters"] == 0


async def test_server_errors_back_off_then_deliver(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(error_rate=1.0))) as sim:
        bridge = await make_bridge(sim)
        await post_records(bridge, {"records": [deploy(1), point(1)]})
        await wait_until(lambda: sum(1 for r in sim.store.requests if r["status"] == 503) >= 4)
        assert bridge.queue.depth == 2
        sim.config.faults = SimFaults()
        await wait_until(lambda: drained(bridge))
        assert (await sim_state(sim))["counts"]["deploys"] == 1


async def test_failures_past_max_age_are_dead_lettered_not_dropped(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(error_rate=1.0))) as sim:
        bridge = await make_bridge(sim, retry={"max_age_seconds": 0.5})
        status, body = await post_records(bridge, deploy(1))
        await wait_until(lambda: drained(bridge))
        entry = inspect.dlq_show(queue_conn(bridge), body["ids"][0])
        assert entry is not None and entry["reason"] == "max_age" and "503" in entry["detail"]


async def test_connection_refused_is_retried_until_cortex_is_back(sim: SimulatorServer,
                                                                  make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim)
    await sim.outage(None)
    await post_records(bridge, {"records": [event(1), event(2)]})
    await asyncio.sleep(0.5)
    assert bridge.queue.depth == 2
    await sim.resume()
    await wait_until(lambda: drained(bridge))
    assert (await sim_state(sim))["counts"]["events"] == 2


async def test_ambiguous_failures_are_reconciled_without_duplicates(make_bridge: BridgeFactory) -> None:
    # Every 2nd write is stored by Cortex and then the connection drops without an answer.
    async with SimulatorServer(sim_config(faults=SimFaults(drop_after_commit_every=2))) as sim:
        bridge = await make_bridge(sim, cortex={"max_concurrency": 1})
        records = [deploy(i) for i in range(6)] + [event(i) for i in range(6)] + [
            point(i, key="deploy-duration") for i in range(120)]
        status, body = await post_records(bridge, {"records": records})
        assert status == 202
        await wait_until(lambda: drained(bridge), timeout=30)
        state = await sim_state(sim)
        assert state["counts"]["deploys"] == 6
        assert state["counts"]["events"] == 6
        assert state["counts"]["metric_points"] == 120
        ids = [d["customData"][BRIDGE_ID_KEY] for d in state["deploys"]["checkout-service"]]
        assert len(ids) == len(set(ids))
        values = sorted(p["value"] for p in state["metrics"]["deploy-duration"]["checkout-service"])
        assert values == [float(i) for i in range(120)]
        reconciled = [t for t in (inspect.trace(queue_conn(bridge), i)[0] for i in body["ids"])
                      if t.get("how") == "reconciled"]
        assert reconciled, "no delivery went through the read-back path"


async def test_unknown_entity_is_parked_then_delivered_once_it_exists(sim: SimulatorServer,
                                                                      make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, retry={"not_found_retry_seconds": 0.3})
    await post_records(bridge, {"records": [deploy(1, "new-service"),
                                            {"kind": "custom_data", "entity": "new-service", "key": "k", "value": 1},
                                            {"kind": "custom_data", "entity": "inventory", "key": "k", "value": 2}]})
    # The known entity's item goes through; the simulator stores it before the bridge marks it
    # done, so wait for both.
    await wait_until(lambda: sim.store.snapshot()["counts"]["custom_data"] == 1 and bridge.queue.depth == 2)
    assert sim.store.snapshot()["counts"]["deploys"] == 0  # the unknown entity's items wait
    sim.store.entities["new-service"] = SimEntity(tag="new-service")
    await wait_until(lambda: drained(bridge))
    counts = (await sim_state(sim))["counts"]
    assert counts["deploys"] == 1 and counts["custom_data"] == 2


async def test_points_older_than_six_months_are_dead_lettered_locally(sim: SimulatorServer,
                                                                      make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim)
    old = point(0)
    old["timestamp"] = format_timestamp(NOW - timedelta(days=200))
    status, body = await post_records(bridge, {"records": [old, point(1)]})
    await wait_until(lambda: drained(bridge))
    assert inspect.dlq_show(queue_conn(bridge), body["ids"][0])["reason"] == "too_old"  # type: ignore[index]
    state = await sim_state(sim)
    assert state["counts"]["metric_points"] == 1 and state["discarded_old_points"] == 0


async def test_rejected_token_stops_sending_until_it_is_accepted(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(tokens=["other"], forbidden_tokens=[])) as sim:
        bridge = await make_bridge(sim, retry={"auth_recheck_seconds": 0.2})
        await wait_until(lambda: bridge.sender.auth.failed)
        # Readiness is "can accept durably": a rejected token stops delivery, not ingest.
        assert bridge.readiness() == (True, [])
        healthy, reasons = bridge.delivery_health()
        assert not healthy and "401" in reasons[0]
        status, _ = await post_records(bridge, {"records": [event(1)]})
        assert status == 202
        await asyncio.sleep(0.5)
        assert bridge.queue.depth == 1  # kept, not dead-lettered
        sim.config.tokens.append("sim-token")
        await wait_until(lambda: drained(bridge))
        assert bridge.delivery_health() == (True, [])


async def test_forbidden_token_is_an_auth_failure_too(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(tokens=["sim-token"], forbidden_tokens=["sim-token"])) as sim:
        bridge = await make_bridge(sim, cortex={"verify_token_on_start": False})
        await post_records(bridge, {"records": [event(1)]})
        await wait_until(lambda: bridge.sender.auth.failed)
        assert bridge.sender.auth.status == 403 and bridge.queue.depth == 1


async def test_rejected_record_in_a_bulk_is_isolated_and_dead_lettered(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(reject_bodies_containing="POISON"))) as sim:
        bridge = await make_bridge(sim, cortex={"linger_ms": 200})
        records = [{"kind": "custom_data", "entity": "inventory", "key": f"k{i}", "value": f"v{i}"} for i in range(4)]
        records[2]["value"] = "POISON"
        status, body = await post_records(bridge, {"records": records + [event(1)]})
        await wait_until(lambda: drained(bridge))
        dead = inspect.dlq_show(queue_conn(bridge), body["ids"][2])
        assert dead is not None and dead["status"] == 400 and "POISON" in dead["detail"]
        state = await sim_state(sim)
        assert sorted(state["custom_data"]["inventory"]) == ["k0", "k1", "k3"]
        assert state["counts"]["events"] == 1
