"""Scenario 1 (and 2 combined): ``kill -9`` of the bridge process, over and over, during sustained
ingest and delivery, while Cortex also drops the answer of every Nth committed write.

tests/queue/test_durability.py proves the basic property with three kills and a well-behaved
Cortex. This scenario is its harsher sibling: all four record kinds, kills at random instants,
and ambiguous deliveries (stored by Cortex, answer lost) that must be read back rather than
resent, so a kill can land between a lost answer and its reconciliation. ``CHAOS_LONG=1`` runs
25 rounds instead of 4.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from bridge.cortex.simulator import SimFaults, SimulatorServer
from tests.support.cortex import sim_config, sim_state, wait_until
from tests.support.ledger import Ledger, queue_stats, scaled
from tests.support.processes import BridgeProcess


async def test_repeated_kill9_with_ambiguous_deliveries_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    faults = SimFaults(latency_ms=10, drop_after_commit_every=7)
    rounds = scaled(4, 25)
    rng = random.Random(7)
    async with SimulatorServer(sim_config(faults=faults, rate_limit_per_minute=0)) as sim:
        bridge = BridgeProcess(tmp_path, sim.url, cortex={"request_timeout_seconds": 2})
        ledger = Ledger()
        try:
            for _ in range(rounds):
                await bridge.start()
                stop = asyncio.Event()
                writers = [asyncio.create_task(ledger.ingest(bridge.url, stop)) for _ in range(3)]
                await asyncio.sleep(rng.uniform(0.4, 1.2))
                bridge.kill9()  # wherever it is: mid-commit, mid-claim, mid-request, mid-read-back
                stop.set()
                await asyncio.gather(*writers)
            await bridge.start()
            await wait_until(lambda: queue_stats(bridge.queue)["undelivered"] == 0, timeout=90)
            assert bridge.terminate() == 0
        finally:
            bridge.cleanup()
        stats = queue_stats(bridge.queue)
        assert stats["dead_letters"] == 0, stats["dead_by_reason"]
        counts = ledger.verify(await sim_state(sim))
        dropped = sum(1 for r in sim.store.requests if r["status"] == 0)
    assert all(n > 10 for n in counts.values()), counts
    assert dropped > 0, "no answer was dropped: the ambiguous path was not exercised"
