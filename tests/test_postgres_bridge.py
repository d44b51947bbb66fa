"""A whole bridge on the PostgreSQL queue: input acknowledged, delivered to the simulator once,
and refused with 503 + Retry-After (readiness says why) while the database is away."""

from __future__ import annotations

import aiohttp

from bridge.cortex.simulator import SimulatorServer
from bridge.queue import BatchPolicy
from bridge.queue.postgres import PostgresQueue
from bridge.sources.native import parse_native
from tests.support.cortex import BridgeFactory, post_records, sim_state, wait_until
from tests.support.postgres import PostgresCluster
from tests.support.records import event


async def test_a_bridge_on_postgres_delivers_once_and_refuses_while_the_database_is_down(
    sim: SimulatorServer, make_bridge: BridgeFactory, pg_cluster: PostgresCluster, pg_dsn: str
) -> None:
    bridge = await make_bridge(sim, queue={"backend": "postgres",
                                           "postgres": {"dsn": pg_dsn, "statement_timeout_seconds": 2}})
    assert isinstance(bridge.queue, PostgresQueue)
    body = {"records": [event(i) for i in range(5)]}
    status, _ = await post_records(bridge, body)
    assert status == 202
    await wait_until(lambda: bridge.queue.depth == 0, timeout=30)
    assert (await post_records(bridge, body))[0] in (200, 202)  # the same records again: stored once
    pg_cluster.stop()
    try:
        status, answer = await post_records(bridge, {"records": [event(99)]})
        assert status == 503, answer
        url = f"http://127.0.0.1:{bridge.ingest_port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 503 and "queue database unavailable" in (await resp.json())["reasons"]
    finally:
        pg_cluster.start()
    await wait_until(bridge.queue.probe_writable, timeout=30, interval=0.2)
    assert (await post_records(bridge, {"records": [event(99)]}))[0] == 202
    await wait_until(lambda: bridge.queue.depth == 0, timeout=30)
    await bridge.queue.refresh_gauges()
    assert (await sim_state(sim))["counts"]["events"] == 6


async def test_a_takeover_reads_back_and_delivers_what_the_killed_sender_had_in_flight(
    sim: SimulatorServer, make_bridge: BridgeFactory, pg_dsn: str
) -> None:
    # The first replica holds the sender lock and has an event in flight when it goes away.
    first = await PostgresQueue.open(pg_dsn, settle_seconds=0)
    await first.append(parse_native(event(1), source="native"))
    in_flight = await first.claim(BatchPolicy(max_items={"event": 1}, ambiguous_kinds=frozenset({"event"})))
    assert len(in_flight) == 1
    bridge = await make_bridge(sim, queue={"backend": "postgres", "postgres": {"dsn": pg_dsn}})
    await first.close()  # the lock dies with its connection; the bridge takes the sending over

    async def delivered() -> bool:
        return sum(len(v) for v in (await sim_state(sim))["events"].values()) == 1

    # Before the takeover woke the read-back loop, the inherited ambiguous event waited forever.
    await wait_until(delivered, timeout=30, interval=0.2)
    assert bridge.queue.depth == 0 or await bridge.queue.ambiguous() == []
