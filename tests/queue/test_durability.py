"""kill -9 of a real bridge process during ingest and delivery: nothing acknowledged is lost,
nothing is stored twice in Cortex."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.queue import inspect
from bridge.records import BRIDGE_ID_KEY
from tests.support.cortex import sim_config, sim_state, wait_until
from tests.support.processes import BridgeProcess


async def _ingest(url: str, start: int, acked: dict[str, dict[str, Any]], stop: asyncio.Event) -> None:
    """Post batches of unique events and metric points until stopped; remember what got a 202."""
    i = start
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            batch = []
            for _ in range(5):
                i += 1
                batch.append({"kind": "event", "entity": "checkout-service", "type": "CHAOS", "title": f"e{i}",
                              "timestamp": 1_790_000_000 + i})
                batch.append({"kind": "metric", "entity": "payments-api", "key": "lead-time",
                              "timestamp": 1_790_000_000 + i, "value": float(i)})
            try:
                async with http.post(f"{url}/v1/records", json={"records": batch}) as resp:
                    if resp.status == 202:
                        body = await resp.json()
                        for rid, rec in zip(body["ids"], batch, strict=True):
                            acked[rid] = rec
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.01)  # the process is being killed


async def test_kill9_during_ingest_and_delivery_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async with SimulatorServer(sim_config(faults=SimFaults(latency_ms=15), rate_limit_per_minute=0)) as sim:
        bridge = BridgeProcess(tmp_path, sim.url)
        try:
            await _kill_restart_rounds(bridge, sim)
        finally:
            bridge.cleanup()


async def _kill_restart_rounds(bridge: BridgeProcess, sim: SimulatorServer) -> None:
    acked: dict[str, dict[str, Any]] = {}
    for round_ in range(3):
        await bridge.start()
        stop = asyncio.Event()
        writers = [asyncio.create_task(_ingest(bridge.url, (round_ * 4 + w) * 100_000, acked, stop))
                   for w in range(4)]
        await asyncio.sleep(1.0)
        bridge.kill9()  # mid-ingest, mid-delivery
        stop.set()
        await asyncio.gather(*writers)
    await bridge.start()
    conn = inspect.open_file(bridge.queue)
    await wait_until(lambda: inspect.stats(conn)["undelivered"] == 0, timeout=60)
    assert bridge.terminate() == 0

    state = await sim_state(sim)
    assert inspect.stats(conn)["dead_letters"] == 0
    acked_events = {rid for rid, rec in acked.items() if rec["kind"] == "event"}
    acked_values = {rec["value"] for rec in acked.values() if rec["kind"] == "metric"}
    assert len(acked_events) > 50 and len(acked_values) > 50

    stored_ids = Counter(e["customData"][BRIDGE_ID_KEY] for e in state["events"]["checkout-service"])
    assert not acked_events - set(stored_ids), "an acknowledged event is missing"
    assert max(stored_ids.values()) == 1, "an event was stored twice"
    stored_values = Counter(p["value"] for p in state["metrics"]["lead-time"]["payments-api"])
    assert not acked_values - set(stored_values), "an acknowledged metric point is missing"
    assert max(stored_values.values()) == 1, "a metric point was stored twice"
