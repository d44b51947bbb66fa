"""Read-backs that prove something: equal metric points counted as a multiset, and no read-back
while the original request may still be alive at Cortex (it commits after the client gave up)."""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cortex.budget import TokenBucket
from bridge.cortex.client import CortexClient
from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.queue import BatchPolicy, DurableQueue
from bridge.queue.schema import State
from bridge.records import BRIDGE_ID_KEY, format_timestamp, utc_now
from bridge.sender.reconcile import reconcile_ambiguous
from bridge.sender.requests import build_request
from bridge.sources.native import parse_native
from tests.support.cortex import SIM_TOKEN, BridgeFactory, post_records, sim_config, sim_state, wait_until
from tests.support.queue_file import sqlite_queue

NOW = utc_now().replace(microsecond=0)
ONE_AT_A_TIME = BatchPolicy(max_items={"metric": 1}, ambiguous_kinds=frozenset({"metric"}))

#: (timestamp offset, value, fate): few distinct points, so equal points are the rule
points = st.lists(st.tuples(st.integers(0, 1), st.sampled_from([1.0, 2.5]),
                            st.sampled_from(["delivered", "ambiguous_stored", "ambiguous_lost"])),
                  min_size=1, max_size=8)


def stored_points(state: dict[str, Any]) -> Counter[tuple[str, float]]:
    series = state["metrics"].get("lead-time", {}).get("checkout-service", [])
    return Counter((p["timestamp"], float(p["value"])) for p in series)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=points)
async def test_equal_points_are_matched_as_a_multiset(sim: SimulatorServer,
                                                      plan: list[tuple[int, float, str]]) -> None:
    sim.reset()
    client = CortexClient(sim.url, lambda: SIM_TOKEN, TokenBucket(60_000, 1000))
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "q.db")
        try:
            expected: Counter[tuple[str, float]] = Counter()
            for n, (offset, value, fate) in enumerate(plan):
                ts = format_timestamp(NOW - timedelta(seconds=offset))
                expected[(ts, value)] += 1
                record = parse_native({"kind": "metric", "id": f"p{n}", "entity": "checkout-service",
                                       "key": "lead-time", "timestamp": ts, "value": value}, source="t")[0]
                await queue.append([record])
                [claimed] = await queue.claim(ONE_AT_A_TIME)
                if fate != "ambiguous_lost":  # the request reached Cortex
                    request = build_request([claimed])
                    resp = await client.write(request.write)
                    assert resp.ok
                if fate == "delivered":
                    await queue.mark_delivered([(claimed.seq, None)])
                else:
                    await queue.mark_ambiguous([claimed.seq], "timeout")
            resolved, left = await reconcile_ambiguous(queue, client)
            assert left == 0 and resolved == sum(1 for *_, fate in plan if fate != "delivered")
            # Only the lost ones are resent; the stored ones are not, however many equal points exist.
            resend = await queue.claim(ONE_AT_A_TIME)
            while resend:
                request = build_request(resend)
                assert (await client.write(request.write)).ok
                await queue.mark_delivered([(q.seq, None) for q in resend])
                resend = await queue.claim(ONE_AT_A_TIME)
            assert queue.depth == 0
            assert stored_points(sim.store.snapshot()) == expected, "Cortex must hold every acknowledged point once"
        finally:
            await queue.close()
            await client.close()


async def test_a_lane_with_an_ambiguous_point_is_not_claimed_until_it_is_read_back(tmp_path: Path) -> None:
    held = BatchPolicy(max_items={"metric": 100}, ambiguous_kinds=frozenset({"metric"}),
                       hold_ambiguous_lanes=frozenset({"metric"}))
    queue = await DurableQueue.open(tmp_path / "q.db", settle_seconds=3600)
    records = [parse_native({"kind": "metric", "entity": entity, "key": "lead-time", "value": i,
                             "timestamp": format_timestamp(NOW - timedelta(seconds=i))}, source="t")[0]
               for i, entity in enumerate(["a", "a", "b"])]
    await queue.append(records[:1])
    [first] = await queue.claim(held)
    await queue.mark_ambiguous([first.seq], "timeout")
    await queue.append(records[1:])
    claimed = await queue.claim(held)
    assert [q.record.entity for q in claimed] == ["b"], "only the other lane may be sent meanwhile"
    assert await queue.claim(held) == []
    assert await queue.ambiguous(settled_by=NOW.timestamp() + 60) == [], "not settled for an hour"
    assert [q.seq for q in await queue.ambiguous()] == [first.seq]
    await queue.close()


def writes(kind: str, n: int) -> list[dict[str, Any]]:
    if kind == "deploy":
        return [{"kind": "deploy", "entity": "checkout-service", "title": f"slow {n}",
                 "timestamp": format_timestamp(NOW - timedelta(seconds=n))}]
    if kind == "event":
        return [{"kind": "event", "entity": "payments-api", "type": "SLOW", "title": f"slow {n}",
                 "timestamp": format_timestamp(NOW - timedelta(seconds=n))}]
    return [{"kind": "metric", "entity": "inventory", "key": "lead-time", "value": float(n),
             "timestamp": format_timestamp(NOW - timedelta(seconds=n))}]


async def run_slow_cortex(make_bridge: BridgeFactory, settle: float) -> dict[str, Any]:
    """Cortex holds every write 2.5 s, then stores it; the bridge gives up after 1 s."""
    async with SimulatorServer(sim_config(faults=SimFaults(commit_delay_ms=2500))) as sim:
        # The circuit breaker stays out of it: opened by the timeouts, it would delay the read-backs
        # past the commit and hide what the settle time alone does.
        bridge = await make_bridge(sim, cortex={"request_timeout_seconds": 1.0, "reconcile_settle_seconds": settle,
                                                "max_concurrency": 4, "circuit_failure_threshold": 1000})
        records = [r for n in range(3) for kind in ("deploy", "event", "metric") for r in writes(kind, n)]
        status, _ = await post_records(bridge, {"records": records})
        assert status == 202
        await wait_until(lambda: bridge.queue.depth == 0, timeout=60)
        state = await sim_state(sim)
        conn = sqlite_queue(bridge.queue).conn
        assert conn.execute("SELECT COUNT(*) FROM records WHERE state = ?", (State.AMBIGUOUS,)).fetchone()[0] == 0
        return state


def copies(state: dict[str, Any]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for table in ("deploys", "events"):
        for items in state[table].values():
            for item in items:
                seen[item["customData"][BRIDGE_ID_KEY]] += 1
    for series in state["metrics"].get("lead-time", {}).values():
        for p in series:
            seen[f"point {p['value']}"] += 1
    return seen


async def test_cortex_committing_after_the_client_timeout_is_read_back_after_settling(
    make_bridge: BridgeFactory,
) -> None:
    state = await run_slow_cortex(make_bridge, settle=4.0)
    seen = copies(state)
    assert len(seen) == 9, seen
    assert set(seen.values()) == {1}, f"stored twice: {[k for k, n in seen.items() if n > 1]}"


async def test_a_settle_time_shorter_than_cortex_holds_a_request_is_what_duplicates(
    make_bridge: BridgeFactory,
) -> None:
    # The control for the test above: it shows that the settle time is the window that matters.
    state = await run_slow_cortex(make_bridge, settle=1.2)
    assert max(copies(state).values()) > 1, "a read-back before Cortex committed should have resent"
