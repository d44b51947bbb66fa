"""Latency on an idle system: input answered 2xx -> record stored in (simulated) Cortex.

A bridge process with production settings (50 ms linger, 1000 req/min, burst 50) delivers into a
simulator running in this process, whose store is wrapped to note the instant each record is
stored. One input at a time, 50-150 ms apart (an idle system: nothing queued, nothing in
flight), for both paths:

* native ``POST /v1/records`` (one event);
* GitHub webhook ``deployment_status`` (a real fixture, HMAC-signed, a new deployment id each).

Latency = stored instant - instant the 2xx arrived at the client (same clock). Targets: p50 <
100 ms, p99 < 500 ms.

    python -m bench.latency [--samples 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Row, table
from bench.ingest import FIXTURE, GITHUB_SECRET, PRODUCTION_CORTEX, sim_for_bench
from bridge.cortex.simulator import SimulatorServer
from tests.support.processes import BridgeProcess


class StoreClock:
    """Notes when the simulator stores each deploy/event, keyed by what identifies the input."""

    def __init__(self, sim: SimulatorServer) -> None:
        self.stored: dict[str, float] = {}
        store = sim.store
        original_event, original_deploy = store.add_event, store.add_deploy

        def wrap(original: Callable[[str, Any], dict[str, Any]], key: Callable[[Any], str]) -> Any:
            def stored(tag: str, body: Any) -> dict[str, Any]:
                result = original(tag, body)
                self.stored.setdefault(key(body), time.perf_counter())
                return result
            return stored

        store.add_event = wrap(original_event, lambda b: str(b["title"]))  # type: ignore[method-assign]
        store.add_deploy = wrap(original_deploy,  # type: ignore[method-assign]
                                lambda b: str((b.get("customData") or {}).get("deploymentId")))

    async def wait_for(self, key: str, timeout: float = 10) -> float:
        end = time.perf_counter() + timeout
        while key not in self.stored:
            if time.perf_counter() > end:
                raise RuntimeError(f"{key} was not stored within {timeout} s")
            await asyncio.sleep(0.001)
        return self.stored[key]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def sample_native(http: aiohttp.ClientSession, url: str, clock: StoreClock, n: int) -> float:
    title = f"latency {uuid.uuid4().hex} {n}"
    body = {"kind": "event", "entity": "checkout-service", "type": "LATENCY", "title": title,
            "timestamp": int(time.time())}
    async with http.post(f"{url}/v1/records", json=body) as resp:
        assert resp.status == 202, await resp.text()
        answered = time.perf_counter()
    return await clock.wait_for(title) - answered


async def sample_github(http: aiohttp.ClientSession, url: str, clock: StoreClock, payload: dict[str, Any]) -> float:
    deployment_id = random.randrange(10**9, 10**12)
    payload["deployment"]["id"] = deployment_id
    body = json.dumps(payload, separators=(",", ":")).encode()
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "deployment_status",
               "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": f"sha256={signature}"}
    async with http.post(f"{url}/webhooks/github", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        answered = time.perf_counter()
    return await clock.wait_for(str(deployment_id)) - answered


async def run(samples: int = 100) -> tuple[list[Row], dict[str, Any]]:
    payload = json.loads(FIXTURE.read_text())
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp_dir:
        async with SimulatorServer(sim_for_bench()) as sim:
            clock = StoreClock(sim)
            bridge = BridgeProcess(Path(tmp_dir), sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"}, sources=[{
                "name": "github", "type": "github", "secrets": [GITHUB_SECRET],
                "entity": {"static": {"Codertocat/Hello-World": "checkout-service"}, "lookup": False}}])
            try:
                await bridge.start()
                await asyncio.sleep(1)  # start-up token check and first linger out of the way
                results: dict[str, list[float]] = {"native": [], "github": []}
                async with aiohttp.ClientSession() as http:
                    for n in range(samples):
                        for path in ("native", "github"):
                            await asyncio.sleep(random.uniform(0.05, 0.15))
                            if path == "native":
                                results[path].append(await sample_native(http, bridge.url, clock, n))
                            else:
                                results[path].append(await sample_github(http, bridge.url, clock, payload))
            finally:
                bridge.cleanup()
    rows = []
    details: dict[str, Any] = {"samples": samples}
    for path, label in (("native", "native POST /v1/records"), ("github", "GitHub webhook (HMAC verified)")):
        values = [v * 1000 for v in results[path]]
        p50, p99 = percentile(values, 50), percentile(values, 99)
        details[path] = {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(max(values), 1),
                         "mean_ms": round(statistics.mean(values), 1)}
        rows.append(Row(f"idle latency, {label} 2xx -> stored in Cortex: p50", f"{p50:.0f} ms", "100 ms target",
                        p50 / 100, "< 100 ms", p50 < 100))
        rows.append(Row(f"idle latency, {label}: p99", f"{p99:.0f} ms", "500 ms target", p99 / 500, "< 500 ms",
                        p99 < 500))
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    rows, details = asyncio.run(run(args.samples))
    print(table(rows))
    print(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
