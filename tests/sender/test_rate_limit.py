"""Cortex's quota, measured where it counts: at the (simulated) server, over a real minute."""

from __future__ import annotations

from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import BridgeFactory, post_records, sim_config, sim_requests, wait_until
from tests.support.records import deploy

LIMIT = 40


async def test_quota_is_never_exceeded_in_any_sliding_minute(make_bridge: BridgeFactory) -> None:
    # A naive bucket (burst 10 + 40/min refill) would send 50 requests in the first minute.
    async with SimulatorServer(sim_config(rate_limit_per_minute=LIMIT)) as sim:
        bridge = await make_bridge(sim, cortex={"rate_limit_per_minute": LIMIT, "burst": 10,
                                                "verify_token_on_start": False})
        status, _ = await post_records(bridge, {"records": [deploy(i) for i in range(LIMIT + 5)]})
        assert status == 202
        await wait_until(lambda: bridge.queue.depth == 0, timeout=120, interval=0.5)
        log = await sim_requests(sim)
        assert not [r for r in log if r["status"] == 429], "the bridge drew a 429"
        times = sorted(r["t"] for r in log)
        assert len(times) == LIMIT + 5
        busiest = max(sum(1 for u in times if t <= u < t + 60) for t in times)
        assert busiest <= LIMIT
        # ...and the quota is used: the first minute carries the whole budget.
        assert busiest == LIMIT
