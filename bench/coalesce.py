"""Requests per coalesced deploy: one change reported by three sources, coalescing on and off.

Each of ``--changes`` changes (default 50, each on one of 10 entities, one environment) is
reported three times within a minute, as a CI run, a CD sync and a rollout would: three native
deploy records with the same sha, posted to a running bridge in separate requests (interleaved
across changes), and delivered into the Cortex simulator. Counted from the simulator's request
log: deploy POSTs and PUTs, and the deploys Cortex ends up holding. Goal with coalescing: 1 POST
and at most 1 PUT per extra report (here: <= 1 POST + 2 PUT per change); the baseline (``deploys.coalesce:
false``) is today's one POST per report.

    python -m bench.coalesce [--changes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from bridge.logs import configure_logging

TOKEN = "bench-token"
ENTITIES = [f"svc-{n}" for n in range(10)]
REPORTERS = ("ci", "cd", "rollout")


def reports(changes: int) -> list[dict[str, Any]]:
    """Three reports per change, in a shuffled (seeded) arrival order."""
    out = []
    for n in range(changes):
        sha = f"{n:040x}"
        for k, reporter in enumerate(REPORTERS):
            out.append({"kind": "deploy", "entity": ENTITIES[n % len(ENTITIES)], "title": f"{reporter} {sha[:7]}",
                        "timestamp": 1_780_000_000 + n * 3600 + k * 20, "sha": sha, "environment": "production",
                        "url": f"https://{reporter}.example/{n}", "customData": {"reporter": reporter}})
    random.Random(14).shuffle(out)
    return out


async def run(changes: int, coalesce: bool) -> dict[str, float]:
    """One run on a fresh queue and simulator; the counts of its deploy requests."""
    config = SimulatorConfig(tokens=[TOKEN], entities=[SimEntity(tag=t) for t in ENTITIES], metric_keys=[])
    with tempfile.TemporaryDirectory() as tmp:
        async with SimulatorServer(config) as sim:
            settings = load_settings(
                None, cortex={"url": sim.url, "token": TOKEN, "linger_ms": 5}, queue={"path": Path(tmp) / "q.db"},
                http={"host": "127.0.0.1", "port": 0}, metrics={"host": "127.0.0.1", "port": 0},
                log={"level": "error"}, ingest={"allow_unauthenticated": True}, deploys={"coalesce": coalesce})
            bridge = await Bridge.create(settings)
            await bridge.start()
            started = time.perf_counter()
            try:
                url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
                async with aiohttp.ClientSession() as http:
                    for record in reports(changes):
                        async with http.post(url, json=[record]) as resp:
                            assert resp.status == 202, await resp.text()
                    while (await bridge.queue.stats())["undelivered"]:
                        await asyncio.sleep(0.02)
                    elapsed = time.perf_counter() - started
                    async with http.get(f"{sim.url}/_sim/requests") as resp:
                        log = await resp.json()
                    async with http.get(f"{sim.url}/_sim/state") as resp:
                        stored = (await resp.json())["counts"]["deploys"]
            finally:
                await bridge.stop(deadline=2)
    writes = [e["method"] for e in log if "/deploys" in e["path"] and e["method"] in ("POST", "PUT")]
    return {"posts": writes.count("POST") / changes, "puts": writes.count("PUT") / changes,
            "deploys": stored / changes, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    configure_logging("error")
    print(f"{args.changes} changes x {len(REPORTERS)} reports each")
    print(f"{'run':<22}{'POST/change':>12}{'PUT/change':>12}{'deploys/change':>16}{'seconds':>10}")
    for name, coalesce in (("coalesce on", True), ("baseline (off)", False)):
        result = asyncio.run(run(args.changes, coalesce))
        print(f"{name:<22}{result['posts']:>12.2f}{result['puts']:>12.2f}{result['deploys']:>16.2f}"
              f"{result['seconds']:>10.2f}")


if __name__ == "__main__":
    main()
