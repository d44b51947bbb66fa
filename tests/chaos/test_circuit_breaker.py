"""Cortex is down with hundreds of records queued: the bridge probes, it does not hammer.

Per-record backoff alone keeps a sender with many records at full rate (there is always another
record due). With the circuit breaker, an outage of N seconds costs a few requests per open
interval; when Cortex returns everything drains, each record stored exactly once.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import REGISTRY

from bridge.app import Bridge
from bridge.cortex.circuit import CircuitState
from bridge.cortex.simulator import SimFaults, SimulatorServer
from tests.support.cortex import BridgeFactory, sim_config, wait_until
from tests.support.ledger import FAST, Ledger, bridge_url, drain_and_verify

OUTAGE_SECONDS = 4.0
RECORDS = 300
CONCURRENCY = 8
CIRCUIT = {"circuit_failure_threshold": 5, "circuit_open_seconds": 0.2, "circuit_max_open_seconds": 1.0}
# Probe intervals are drawn from 50-100 % of 0.2, 0.4, 0.8, 1, 1, ... s: at most ~10 in 4 s.
MAX_PROBES = 12


def requests_attempted() -> float:
    """Every Cortex request this process sent or tried to send (the client's own counter)."""
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "cortex_bridge_cortex_requests"
               for sample in metric.samples if sample.name.endswith("_total"))


async def queue_records(bridge: Bridge, ledger: Ledger) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(RECORDS // 5):
            assert await ledger.post(http, bridge_url(bridge), ledger.batch(5)) == 202


@pytest.mark.parametrize("fault", ["connection refused", "503 storm"])
async def test_an_outage_costs_probes_not_the_full_rate(fault: str, make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as sim:
        bridge = await make_bridge(sim, cortex={**FAST, **CIRCUIT, "max_concurrency": CONCURRENCY},
                                   retry={"max_backoff_seconds": 0.5})
        if fault == "503 storm":
            sim.config.faults = SimFaults(error_rate=1.0)
        else:
            await sim.outage(None)
        ledger = Ledger()
        await queue_records(bridge, ledger)
        await wait_until(lambda: bridge.client.circuit.state is not CircuitState.CLOSED, timeout=10)

        before_client, before_server = requests_attempted(), len(sim.store.requests)
        await asyncio.sleep(OUTAGE_SECONDS)
        sent = requests_attempted() - before_client
        if fault == "503 storm":
            assert len(sim.store.requests) - before_server == sent  # what Cortex saw, too
        assert bridge.queue.depth >= RECORDS * 0.9, "the records must still be waiting"
        # Before the breaker: ~8 workers x per-record backoff of 0.05-0.5 s, hundreds of requests.
        assert sent <= MAX_PROBES, f"{sent:.0f} requests in {OUTAGE_SECONDS} s of outage"
        assert bridge.client.circuit.opens >= 2, "failed probes reopen the breaker"

        if fault == "503 storm":
            sim.config.faults = SimFaults()
        else:
            await sim.resume()
        await drain_and_verify(bridge, sim, ledger, timeout=60)
        assert bridge.client.circuit.state is CircuitState.CLOSED
