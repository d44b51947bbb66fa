"""Replicas on PostgreSQL: ingest throughput with 1, 2 and 3 replicas beside SQLite, delivery
time against the API minimum, and failover time.

Side by side, in one run, on one machine, with a throwaway PostgreSQL from the pgserver wheel:

1. **Ingest**: ``cortex-bridge run`` (production settings) with a SQLite queue, then 1, 2 and 3
   replicas on one PostgreSQL database, each under wrk posting a unique ~300-byte native event
   per request (the same Lua load as bench/ingest.py; 32 connections in all, split over the
   replicas, one wrk per replica running at once). Measured: accepted-and-durable records/s
   (checked against the queue afterwards), as a ratio to the SQLite single replica.
2. **Delivery**: bench/delivery.py's 10k mixed set queued in PostgreSQL and delivered by one
   bridge (its request budget on the shared spend log: every request takes its slot in the
   database), time-compressed as there (``--compress``), against the API minimum (<= 1.05x).
3. **Failover**: two replicas under a light native load (10 records/s, each to the replica that
   is not sending); the sending replica is killed with ``kill -9``; the time from the kill to the
   next request Cortex receives (necessarily from the other replica) is the failover time.
   Repeated ``--failovers`` times; median and maximum reported.

On 2 shared cores, more replicas add processes, not CPU: the ingest rows show what one database
costs per record and that replicas do not serialize on each other, not horizontal scaling.

    python -m bench.replicas [--seconds 5] [--compress 10] [--scale 1] [--failovers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import NATIVE_EVENT_LUA, Row, run_wrk, table
from bench.delivery import deliver, minimum_requests, minimum_seconds, mixed_records
from bench.ingest import PRODUCTION_CORTEX, durable_total, sim_for_bench
from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import sim_config
from tests.support.ledger import Ledger
from tests.support.postgres import PostgresCluster
from tests.support.processes import BridgeProcess
from tests.support.replicas import Replicas, queue_stats

CONNECTIONS = 32


async def _pg_durable(dsn: str) -> int:
    stats = await queue_stats(dsn)
    return int(stats["undelivered"] + stats["delivered_history"] + stats["dead_letters"])


async def _load(urls: list[str], seconds: float, run_id: str) -> tuple[int, int]:
    """wrk on every url at once (connections split); returns the 202s and the requests that may
    have been stored without a 202 seen (in flight at the end, or timed out)."""
    per = max(1, CONNECTIONS // len(urls))
    results = await asyncio.gather(*(
        asyncio.to_thread(run_wrk, url, NATIVE_EVENT_LUA, seconds=seconds, connections=per, args=[f"{run_id}{n}"])
        for n, url in enumerate(urls)))
    return sum(r.ok for r in results), sum(r.socket_errors for r in results) + per * len(urls)


async def ingest(cluster: PostgresCluster, tmp: Path, seconds: float) -> dict[str, float]:
    """Durable records/s: SQLite single replica, then 1, 2, 3 replicas on one PostgreSQL."""
    rates: dict[str, float] = {}
    run_id = uuid.uuid4().hex[:6]
    async with SimulatorServer(sim_for_bench()) as sim:
        (tmp / "sqlite").mkdir()
        sqlite = BridgeProcess(tmp / "sqlite", sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"})
        try:
            await sqlite.start()
            before = durable_total(sqlite)
            started = time.monotonic()
            acked, unseen = await _load([sqlite.url], seconds, f"{run_id}s")
            elapsed = time.monotonic() - started
            stored = durable_total(sqlite) - before
            assert acked <= stored <= acked + unseen, (acked, stored)
            rates["sqlite x1"] = acked / elapsed
        finally:
            sqlite.cleanup()
        for count in (1, 2, 3):
            dsn = cluster.create_database()
            replicas = Replicas(tmp / f"pg{count}", sim.url, dsn, count, cortex=PRODUCTION_CORTEX,
                                log={"level": "info"})
            try:
                await replicas.start()
                before = await _pg_durable(dsn)
                started = time.monotonic()
                acked, unseen = await _load(replicas.urls(), seconds, f"{run_id}p{count}")
                elapsed = time.monotonic() - started
                stored = await _pg_durable(dsn) - before
                assert acked <= stored <= acked + unseen, (acked, stored, unseen)
                rates[f"postgres x{count}"] = acked / elapsed
            finally:
                replicas.cleanup()
    return rates


async def failover(cluster: PostgresCluster, tmp: Path, times: int) -> list[float]:
    """Seconds from ``kill -9`` of the sending replica to Cortex's next request, ``times`` times."""
    seconds: list[float] = []
    async with SimulatorServer(sim_config(rate_limit_per_minute=1000)) as sim:
        replicas = Replicas(tmp / "failover", sim.url, cluster.create_database(), 2, cortex=PRODUCTION_CORTEX)
        ledger = Ledger(kinds=("event",))
        try:
            await replicas.start()
            async with aiohttp.ClientSession() as http:
                for _ in range(times):
                    sender = await _sender(replicas)
                    other = replicas.processes[1 - sender]
                    stop = asyncio.Event()
                    load = asyncio.create_task(_trickle(http, ledger, other.url, stop))
                    await asyncio.sleep(2)  # steady state: the sender delivers every record at once
                    killed_at = time.time()
                    replicas.processes[sender].kill9()
                    while not [r for r in list(sim.store.requests) if r["t"] > killed_at]:
                        await asyncio.sleep(0.005)
                    first = min(r["t"] for r in sim.store.requests if r["t"] > killed_at)
                    seconds.append(first - killed_at)
                    stop.set()
                    await load
                    await replicas.processes[sender].start(timeout=30)
        finally:
            replicas.cleanup()
    return seconds


async def _sender(replicas: Replicas) -> int:
    for _ in range(200):
        sender = await asyncio.to_thread(replicas.sender)
        if sender is not None:
            return sender
        await asyncio.sleep(0.05)
    raise RuntimeError("no replica took the sender lock")


async def _trickle(http: aiohttp.ClientSession, ledger: Ledger, url: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await ledger.post(http, url, ledger.batch(1))
        await asyncio.sleep(0.1)


async def run(seconds: float = 5, compress: float = 10, scale: float = 1.0,
              failovers: int = 3) -> tuple[list[Row], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp_dir:
        tmp = Path(tmp_dir)
        cluster = PostgresCluster.in_temporary_directory()
        try:
            rates = await ingest(cluster, tmp, seconds)
            mixed = mixed_records(scale)
            delivered = await deliver(mixed, compress, tmp, {"backend": "postgres", "postgres": {
                "dsn": cluster.create_database()}})
            takeovers = await failover(cluster, tmp, failovers)
        finally:
            cluster.close()
    base = rates["sqlite x1"]
    rows = [Row(f"native ingest, {name}: durable records/s", f"{rate:,.0f}/s", f"{base:,.0f}/s SQLite x1",
                rate / base, "reported", None) for name, rate in rates.items() if name != "sqlite x1"]
    min_req = minimum_requests(mixed)
    min_s = minimum_seconds(min_req)
    req_ratio, time_ratio = delivered.requests / min_req, delivered.seconds_normalized / min_s
    rows += [
        Row(f"{len(mixed):,} mixed on PostgreSQL: Cortex requests", f"{delivered.requests:,}",
            f"{min_req:,} API minimum", req_ratio, "<= 1.05x", req_ratio <= 1.05),
        Row("  time to deliver all (normalized to 1000/min)", f"{delivered.seconds_normalized:,.0f} s",
            f"{min_s:,.0f} s API minimum", time_ratio, "<= 1.05x", time_ratio <= 1.05),
        Row("  429s received", f"{delivered.rejected_429}", "0", None, "0", delivered.rejected_429 == 0),
        Row(f"failover: kill -9 of the sender -> next request (median of {len(takeovers)})",
            f"{statistics.median(takeovers):.2f} s", f"max {max(takeovers):.2f} s", None, "reported", None),
    ]
    details = {"ingest_records_per_s": {k: round(v) for k, v in rates.items()}, "seconds": seconds,
               "compress": compress, "scale": scale, "delivery_by_endpoint": delivered.by_endpoint,
               "failover_seconds": [round(s, 3) for s in takeovers]}
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5, help="wrk run per configuration")
    parser.add_argument("--compress", type=float, default=10.0, help="delivery time compression (1 = real time)")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = the 10k mixed set")
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    rows, details = asyncio.run(run(args.seconds, args.compress, args.scale, args.failovers))
    print(table(rows))
    print(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
