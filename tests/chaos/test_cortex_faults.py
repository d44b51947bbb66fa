"""Scenario 2: Cortex misbehaves while input keeps arriving, then recovers.

* a long outage (the simulator refuses connections; open connections are cut, so requests in
  flight become ambiguous);
* a 5xx storm (half of all requests answered 503);
* a 429 storm with ``Retry-After`` (every 4th request);
* ambiguous writes: every 3rd write is stored by Cortex and its answer dropped.

Each keeps producers posting during the fault, lifts it, waits until the queue is empty, and
checks the ledger against the simulator: nothing acknowledged missing, nothing stored twice,
nothing dead-lettered. Combined with ``kill -9``: see test_kill9.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest

from bridge.cortex.simulator import SimFaults, SimulatorServer
from tests.support.cortex import BridgeFactory, sim_config, wait_until
from tests.support.ledger import FAST, KINDS, Ledger, bridge_url, drain_and_verify, scaled


async def test_long_outage_then_recovery(make_bridge: BridgeFactory) -> None:
    outage_seconds = scaled(4, 60)
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=SimFaults(latency_ms=20))) as sim:
        bridge = await make_bridge(sim, cortex=FAST)
        ledger = Ledger()
        stop = asyncio.Event()
        writers = [asyncio.create_task(ledger.ingest(bridge_url(bridge), stop, pause=0.02)) for _ in range(2)]
        await asyncio.sleep(0.5)  # deliveries under way, some of them in flight
        await sim.outage(None)
        acked_before = len(ledger.acked)
        await asyncio.sleep(outage_seconds)
        accepted_during = len(ledger.acked) - acked_before
        assert bridge.readiness()[0], "a Cortex outage must not make the bridge refuse input"
        await sim.resume()
        stop.set()
        await asyncio.gather(*writers)
        assert accepted_during > 0, "input must keep being accepted (queued) while Cortex is down"
        assert set(ledger.statuses) == {"202"}, ledger.statuses
        await drain_and_verify(bridge, sim, ledger)


@dataclass(frozen=True)
class Storm:
    """A fault that stays on while a fixed amount of input arrives."""

    faults: SimFaults
    kinds: tuple[str, ...]
    batches: int
    #: the sign in the simulator's request log that the fault really happened
    evidence: str


STORMS = {
    "5xx storm": Storm(SimFaults(error_rate=0.5, seed=11), KINDS, scaled(20, 200), "503"),
    "429 storm with Retry-After": Storm(
        SimFaults(force_429_every=4, retry_after_seconds=1), ("metric", "event"), scaled(8, 40), "429"),
    "ambiguous: committed then dropped": Storm(SimFaults(drop_after_commit_every=3), KINDS, scaled(20, 200), "0"),
}


@pytest.mark.parametrize("name", list(STORMS))
async def test_storm_then_recovery(name: str, make_bridge: BridgeFactory) -> None:
    storm = STORMS[name]
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=storm.faults)) as sim:
        bridge = await make_bridge(sim, cortex=FAST, retry={"max_backoff_seconds": 0.3})
        ledger = Ledger(kinds=storm.kinds)
        async with aiohttp.ClientSession() as http:
            for _ in range(storm.batches):
                # Cortex's trouble is no reason to refuse input: every batch is accepted at once.
                assert await ledger.post(http, bridge_url(bridge), ledger.batch(5)) == 202
                await asyncio.sleep(0.05)  # spread input over the storm, so it meets in-flight work

        async def storm_seen() -> bool:
            return any(str(r["status"]) == storm.evidence for r in sim.store.requests)

        await wait_until(storm_seen, timeout=30)
        await asyncio.sleep(1.0)  # let the storm meet retries and read-backs too
        sim.config.faults = SimFaults()
        await drain_and_verify(bridge, sim, ledger)

