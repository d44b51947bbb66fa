"""Cost of a backlog: memory, disk, and claim time with 100k and 1M records queued.

One queue file is filled in steps (10k, 100k, 1M records at scale 1; ~300-byte events and
metric points over 250 metric lanes) through the queue's own append path. At each step:

* **RSS**: ``cortex-bridge run`` is started on the file as a child process, with a Cortex token
  the simulator rejects (401), so it holds the backlog without sending; its resident set size is
  read after start-up settles (psutil). Baseline: the same process on an empty queue.
* **disk**: bytes of the queue file plus its WAL, per queued record (target < 1 KB).
* **acknowledgement latency**: while that process holds the backlog, one native event at a time
  is POSTed for ~11 s (spanning two of its 5-second gauge refreshes) and the time to its 202
  measured: a backlog must not stall what producers wait for. Baseline: the same at 10k.
* **claim time**: in this process, the sender's batch claim plus settling the batch as delivered,
  timed over 300 batches, at each depth, with its two fsyncs (reported) and without them (the
  query and index work, which must stay flat as the backlog grows; an fsync costs the same at
  any depth).

    python -m bench.scale [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.common import Row, table
from bench.delivery import ENTITIES, METRIC_KEYS
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from bridge.queue import DurableQueue
from bridge.sender.sender import POLICY
from bridge.sources.native import parse_native
from tests.support.processes import BridgeProcess
from tests.support.queue_file import queue_pragma

BASE_TS = int(time.time()) - 10 * 86400


def records(start: int, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(start, start + count):
        entity = ENTITIES[n % len(ENTITIES)]
        if n % 2:
            out.append({"kind": "metric", "entity": entity, "key": METRIC_KEYS[n % len(METRIC_KEYS)],
                        "timestamp": BASE_TS + n % 700_000, "value": float(n)})
        else:
            out.append({"kind": "event", "entity": entity, "type": "SCALE", "title": f"scale event {n}",
                        "timestamp": BASE_TS + n % 700_000, "description": "x" * 120})
    return out


async def fill(path: Path, start: int, count: int) -> None:
    queue = await DurableQueue.open(path, max_records=100_000_000, max_bytes=1 << 40)
    try:
        for offset in range(start, start + count, 5000):
            size = min(5000, start + count - offset)
            await queue.append(parse_native({"records": records(offset, size)}, source="bench"))
    finally:
        await queue.close()


async def depth(path: Path) -> int:
    queue = await DurableQueue.open(path)
    try:
        return queue.depth
    finally:
        await queue.close()


async def claim_times(path: Path, batches: int = 300, *, fsync: bool = True) -> float:
    """Median seconds to claim a batch and settle it as delivered, at the current depth.

    ``fsync=True`` is what the sender pays (two fsync'd commits). ``fsync=False`` times the same
    work with ``synchronous=OFF``: the query and index work alone, which is what a growing backlog
    could make slower (an fsync costs the same at any depth, but its time on a shared disk varies
    from one step to the next by more than the work does).
    """
    queue = await DurableQueue.open(path, max_records=100_000_000, max_bytes=1 << 40)
    try:
        if not fsync:
            await queue_pragma(queue, "synchronous=OFF")
        times = []
        for _ in range(batches):
            started = time.perf_counter()
            batch = await queue.claim(POLICY)
            await queue.mark_delivered([(q.seq, None) for q in batch])
            times.append(time.perf_counter() - started)
        return statistics.median(times)  # the median: fsync times on a shared disk have long tails
    finally:
        await queue.close()


async def ack_latencies(url: str, seconds: float = 11.0) -> list[float]:
    """Seconds from POST to 202 for unique native events sent one at a time for ``seconds``."""
    times: list[float] = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            body = {"kind": "event", "entity": ENTITIES[0], "type": "SCALE", "title": f"probe {time.time_ns()}",
                    "timestamp": BASE_TS}
            started = time.perf_counter()
            async with http.post(f"{url}/v1/records", json=body) as resp:
                await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"probe answered {resp.status}")
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
    return times


async def observe_bridge(path: Path, tmp: Path, sim: SimulatorServer) -> dict[str, float]:
    """RSS of ``cortex-bridge run`` holding the queue at ``path`` (Cortex rejects its token),
    then its acknowledgement latency (p50, p99, max in seconds) with that backlog."""
    work = tmp / f"proc-{time.monotonic_ns()}"
    work.mkdir()
    bridge = BridgeProcess(work, sim.url, cortex={"token": "rejected-token"}, queue={
        "path": str(path), "max_records": 100_000_000, "max_bytes": 1 << 40}, log={"level": "warning"})
    try:
        await bridge.start(timeout=120)
        await asyncio.sleep(3)  # start-up token check, sender parked on 401, gauges refreshed
        rss = int(psutil.Process(bridge.pid).memory_info().rss)
        acks = sorted(await ack_latencies(bridge.url))
        return {"rss": rss, "ack_p50": statistics.median(acks), "ack_p99": acks[int(len(acks) * 0.99)],
                "ack_max": acks[-1], "probes": len(acks)}
    finally:
        bridge.cleanup()


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def run(scale: float = 1.0) -> tuple[list[Row], dict[str, Any]]:
    steps = [max(1000, int(n * scale)) for n in (10_000, 100_000, 1_000_000)]
    results: dict[int, dict[str, float]] = {}
    config = SimulatorConfig(tokens=["sim-token"], entities=[SimEntity(tag=t) for t in ENTITIES],
                             metric_keys=METRIC_KEYS, rate_limit_per_minute=0)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        path = tmp / "queue.db"
        async with SimulatorServer(config) as sim:
            await fill(path, 0, 0)
            empty_rss = (await observe_bridge(path, tmp, sim))["rss"]
            next_n = 0
            body_bytes = sum(len(json.dumps(r)) for r in records(0, 1000)) / 1000
            for step in steps:
                # Timing claims settles some records: top the queue up to exactly `step` first.
                missing = step - await depth(path)
                await fill(path, next_n, missing)
                next_n += missing
                results[step] = {
                    **await observe_bridge(path, tmp, sim),
                    "bytes_per_record": file_bytes(path) / step,
                    "claim_seconds": await claim_times(path),
                    "claim_work_seconds": await claim_times(path, fsync=False),
                    "body_bytes": body_bytes,
                }
    small, mid, big = steps
    rows = [
        Row(f"RSS with {mid:,} records queued", f"{results[mid]['rss'] / 2**20:.0f} MB",
            f"{empty_rss / 2**20:.0f} MB empty queue", results[mid]["rss"] / empty_rss, "< 200 MB at 1M",
            results[mid]["rss"] < 200 * 2**20),
        Row(f"RSS with {big:,} records queued", f"{results[big]['rss'] / 2**20:.0f} MB",
            f"{empty_rss / 2**20:.0f} MB empty queue", results[big]["rss"] / empty_rss, "< 200 MB",
            results[big]["rss"] < 200 * 2**20),
        Row(f"queue file bytes per record at {mid:,}", f"{results[mid]['bytes_per_record']:.0f} B",
            f"{results[mid]['body_bytes']:.0f} B record JSON", results[mid]["bytes_per_record"] / results[mid]["body_bytes"],
            "< 1 KB", results[mid]["bytes_per_record"] < 1024),
        Row(f"queue file bytes per record at {big:,}", f"{results[big]['bytes_per_record']:.0f} B",
            f"{results[big]['body_bytes']:.0f} B record JSON", results[big]["bytes_per_record"] / results[big]["body_bytes"],
            "< 1 KB", results[big]["bytes_per_record"] < 1024),
    ]
    for step in (mid, big):
        p99, top = results[step]["ack_p99"] * 1000, results[step]["ack_max"] * 1000
        base_p99, base_top = results[small]["ack_p99"] * 1000, results[small]["ack_max"] * 1000
        rows.append(Row(f"native POST -> 202 with {step:,} queued: p99 / max", f"{p99:.1f} / {top:.1f} ms",
                        f"{base_p99:.1f} / {base_top:.1f} ms at {small:,}", p99 / base_p99, "reported", None))
    for step in (mid, big):
        ratio = results[step]["claim_seconds"] / results[small]["claim_seconds"]
        rows.append(Row(f"claim + settle one batch at {step:,} queued (2 fsyncs)",
                        f"{results[step]['claim_seconds'] * 1000:.2f} ms",
                        f"{results[small]['claim_seconds'] * 1000:.2f} ms at {small:,}", ratio, "reported", None))
    for step in (mid, big):
        ratio = results[step]["claim_work_seconds"] / results[small]["claim_work_seconds"]
        rows.append(Row(f"  same, query and index work only (no fsync) at {step:,}",
                        f"{results[step]['claim_work_seconds'] * 1000:.2f} ms",
                        f"{results[small]['claim_work_seconds'] * 1000:.2f} ms at {small:,}", ratio, "flat (<= 1.5x)",
                        ratio <= 1.5))
    details = {"steps": steps, "empty_rss_mb": round(empty_rss / 2**20, 1),
               "results": {str(k): {n: round(v, 4) for n, v in r.items()} for k, r in results.items()}}
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10k, 100k and 1M records")
    args = parser.parse_args()
    rows, details = asyncio.run(run(args.scale))
    print(table(rows))
    print(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
