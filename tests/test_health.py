"""Readiness means "can accept durably"; Cortex's health is reported apart, on /healthz/delivery."""

from __future__ import annotations

from typing import Any

import aiohttp

from bridge.app import Bridge
from bridge.cortex.simulator import SimulatorServer
from bridge.metrics import sample
from tests.support.cortex import BridgeFactory, post_records, sim_config, wait_until
from tests.support.records import event


async def get(bridge: Bridge, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{bridge.ingest_port}{path}") as resp:
        return resp.status, await resp.json()


async def test_a_rejected_token_keeps_the_pod_ready_and_input_queued(make_bridge: BridgeFactory) -> None:
    async with SimulatorServer(sim_config(tokens=["another-token"])) as sim:
        bridge = await make_bridge(sim, retry={"auth_recheck_seconds": 60})
        await wait_until(lambda: bridge.sender.auth.failed)
        assert await get(bridge, "/readyz") == (200, {"ready": True, "reasons": []})
        status, body = await post_records(bridge, {"records": [event(1), event(2)]})
        assert status == 202 and body["accepted"] == 2
        assert bridge.queue.depth == 2
        status, health = await get(bridge, "/healthz/delivery")
        assert status == 503 and not health["delivering"]
        assert "Cortex rejected the token (401)" in health["reasons"][0]
        assert health["queue_depth"] == 2
        assert sample("cortex_bridge_cortex_auth_failed") == 1
        assert sample("cortex_bridge_ready") == 1


async def test_no_token_at_all_keeps_the_pod_ready(make_bridge: BridgeFactory, sim: SimulatorServer) -> None:
    bridge = await make_bridge(sim, cortex={"token": None})
    await wait_until(lambda: bridge.sender.auth.failed)
    assert (await get(bridge, "/readyz"))[0] == 200
    assert (await post_records(bridge, event(3)))[0] == 202


async def test_delivery_health_is_ok_when_cortex_takes_records(make_bridge: BridgeFactory,
                                                               sim: SimulatorServer) -> None:
    bridge = await make_bridge(sim)
    status, health = await get(bridge, "/healthz/delivery")
    assert status == 200 and health["delivering"] and health["reasons"] == []
