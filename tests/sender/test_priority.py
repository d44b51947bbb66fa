"""A deploy posted behind a backlog of metric points is the next request Cortex sees (the ordering,
not the timing: the budget is slow on purpose so the backlog is still there)."""

from __future__ import annotations

from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import ENTITIES, METRIC_KEYS, BridgeFactory, post_records, sim_config, wait_until
from tests.support.records import deploy, point

#: 2 requests a second, one at a time: 24 metric requests take ~12 s to drain.
SLOW = {"rate_limit_per_minute": 120, "burst": 1, "max_concurrency": 1, "linger_ms": 0}


def writes(sim: SimulatorServer) -> list[str]:
    return [r["path"] for r in sim.store.requests if r["method"] in ("POST", "PUT")]


async def test_a_deploy_behind_a_metric_backlog_is_sent_next(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as sim:
        bridge = await make_bridge(sim, cortex=SLOW)
        # 24 lanes (entity x key x 4 slices of time) of 100 points: 24 bulk requests queued.
        points = [point(i * 100 + n, entity, key) for entity in ENTITIES for key in METRIC_KEYS
                  for i in range(4) for n in range(100)]
        for start in range(0, len(points), 400):
            status, _ = await post_records(bridge, {"records": points[start:start + 400]})
            assert status == 202
        await wait_until(lambda: len(writes(sim)) >= 2, timeout=30)
        status, _ = await post_records(bridge, {"records": [deploy(1)]})
        assert status == 202
        sent_before = len(writes(sim))
        await wait_until(lambda: any(p.endswith("/deploys") for p in writes(sim)), timeout=30)
        order = writes(sim)
        deploy_at = next(i for i, p in enumerate(order) if p.endswith("/deploys"))
        # At most the request already claimed when the deploy arrived goes before it.
        assert deploy_at <= sent_before + 1, order
        assert bridge.queue.depth > 0, "the backlog was still there: the deploy jumped it"
