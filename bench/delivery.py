"""Delivery efficiency under Cortex's quota (1000 requests/min), against the status quo.

**Mixed backlog** (scale 1): 10,400 records, shuffled: 1,000 deploys, 1,000 custom events,
7,500 metric points (50 entities x 5 metric keys x 30 points), 500 custom-data keys, 300
dependencies (each entity calls 6 others) and 100 OpenAPI documents (two per entity: the older
one is superseded, not sent). They are
appended to the queue file through the queue's own append path (as ingest does), then a bridge
starts and delivers them into the simulator, which enforces the limit (sliding 60 s window,
429 + Retry-After). Measured: Cortex requests used (the start-up token check included), time
from start until the queue is empty, 429s received. Targets: requests within 5 % of the minimum
the API allows for the mix (one per deploy and per event, one per 100 points of an entity x
metric key, one per 2 MB of custom data, one per 1000 dependencies and 2 MB, one per entity's
newest document), time within 5 % of that minimum at 1000 req/min, and
no 429 at all.

**Metric backlog**: 50 entities x 5 keys x 200 points (at least 100 when scaled down); requests
per metric point (target <= 0.011).

**Status quo**: one POST per record through the official CLI's client (cortexapps-cli 1.52.0:
token bucket 1000/min with burst 50 in front of urllib3's Retry(total=3, status_forcelist=[429],
respect_retry_after_header=True)), from one sequential process with zero network latency (its
best case). Computed exactly in virtual time with the CLI's bucket arithmetic against the same
sliding-window limit the simulator applies (``status_quo``): that run takes ten minutes of real
time per 10k records, and its outcome depends on nothing but these two algorithms.

**Time compression**: ``--compress K`` (default 10) shrinks the quota window from 60 s to 60/K s
in both the simulator and the bridge's request budget while keeping 1000 requests per window,
which is exactly the 1000/min scenario played K times faster; times are reported multiplied back
by K (normalized to 1000/min). Linger (50 ms) and network latency are not compressed, which
slightly favours the uncompressed run. ``--compress 1`` runs in real time (about 2.5 minutes).

    python -m bench.delivery [--scale 1.0] [--compress 10]
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Row, scaled_run_main
from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from bridge.logs import configure_logging
from bridge.queue.backend import QueueBackend
from bridge.queue.open import open_queue
from bridge.sources.native import parse_native
from tests.support.cortex import SIM_TOKEN

ENTITIES = [f"svc-{i:02d}" for i in range(50)]
METRIC_KEYS = [f"metric-{k}" for k in range(5)]
LIMIT = 1000
WINDOW = 60.0
CUSTOM_DATA_REQUEST_BYTES = 2 * 1024 * 1024
BASE_TS = int(time.time()) - 20 * 86400


def mixed_records(scale: float) -> list[dict[str, Any]]:
    """The mixed backlog, shuffled as sources would interleave it."""
    n_deploys = n_events = round(1000 * scale)
    per_lane = max(1, round(30 * scale))
    n_custom = round(500 * scale)
    n_edges = round(300 * scale)
    n_docs = max(2, round(100 * scale))
    out: list[dict[str, Any]] = []
    for i in range(n_deploys):
        out.append({"kind": "deploy", "entity": ENTITIES[i % 50], "title": f"deploy {i}", "timestamp": BASE_TS + i,
                    "type": "DEPLOY", "sha": f"{i:040x}", "environment": "prod"})
    for i in range(n_events):
        out.append({"kind": "event", "entity": ENTITIES[i % 50], "type": "INCIDENT", "title": f"event {i}",
                    "timestamp": BASE_TS + i})
    out += metric_records(per_lane)
    for i in range(n_custom):
        out.append({"kind": "custom_data", "entity": ENTITIES[i % 50], "key": f"key-{i}",
                    "value": {"owner": f"team-{i % 7}", "tier": i % 3}})
    for i in range(n_edges):
        caller = i % 50
        out.append({"kind": "dependency", "entity": ENTITIES[caller], "callee": ENTITIES[(caller + 1 + i // 50) % 50],
                    "description": f"edge {i}", "metadata": {"calls": i}})
    random.Random(1).shuffle(out)
    # Documents last and in order: the second of each entity is the newer one, the one to send.
    out += [{"kind": "docs", "entity": ENTITIES[i % 50], "spec": openapi_document(ENTITIES[i % 50], i // 50)}
            for i in range(n_docs)]
    return out


def openapi_document(service: str, version: int) -> dict[str, Any]:
    """A small OpenAPI 3 document of a service: 20 paths."""
    paths = {f"/v1/{service}/items/{n}": {"get": {"responses": {"200": {"description": "ok"}}}} for n in range(20)}
    return {"openapi": "3.0.3", "info": {"title": service, "version": f"1.{version}.0"}, "paths": paths}


def metric_records(per_lane: int) -> list[dict[str, Any]]:
    return [{"kind": "metric", "entity": e, "key": k, "timestamp": BASE_TS + n * 60, "value": float(n)}
            for e in ENTITIES for k in METRIC_KEYS for n in range(per_lane)]


def minimum_requests(records: list[dict[str, Any]]) -> int:
    """The fewest requests Cortex's API allows for these records."""
    lanes = Counter((r["key"], r["entity"]) for r in records if r["kind"] == "metric")
    custom_bytes = sum(len(json.dumps(r)) for r in records if r["kind"] == "custom_data")
    edges = [r for r in records if r["kind"] == "dependency"]
    edge_bytes = sum(len(json.dumps(r)) for r in edges)
    return (sum(1 for r in records if r["kind"] in ("deploy", "event"))
            + sum(math.ceil(n / 100) for n in lanes.values())
            + math.ceil(custom_bytes / CUSTOM_DATA_REQUEST_BYTES)
            + max(math.ceil(len(edges) / 1000), math.ceil(edge_bytes / CUSTOM_DATA_REQUEST_BYTES))
            + len({r["entity"] for r in records if r["kind"] == "docs"}))


def minimum_seconds(requests: int) -> float:
    """Those requests at a steady 1000/min."""
    return requests / LIMIT * WINDOW


# -- the status quo, in virtual time -------------------------------------------------------------


@dataclass
class StatusQuo:
    requests: int
    rejected_429: int
    failed_records: int
    seconds: float


def status_quo(records: int, *, limit: int = LIMIT, window: float = WINDOW, burst: int = 50,
               retries: int = 3, latency: float = 0.0) -> StatusQuo:
    """One POST per record through cortexapps-cli 1.52.0's client, simulated exactly in virtual time.

    Client: ``TokenBucket(rate=limit/60, capacity=50)`` taken once per record (not per retry:
    urllib3 retries inside ``session.request``), then urllib3 ``Retry(total=3)`` on 429 sleeping
    ``Retry-After``. Server: the simulator's sliding window (admitted arrivals in the last
    ``window`` s; a 429 is not counted; Retry-After = whole seconds until a slot frees).
    A record still refused after the retries fails (the CLI raises ``CortexApiError``).
    """
    rate = limit / window
    tokens, updated, now = float(burst), 0.0, 0.0
    admitted: list[float] = []
    head = 0
    sent = rejected = failed = 0
    for _ in range(records):
        tokens = min(burst, tokens + (now - updated) * rate)
        updated = now
        if tokens < 1:
            now += (1 - tokens) / rate
            tokens = 1.0
            updated = now
        tokens -= 1
        for _attempt in range(retries + 1):
            sent += 1
            while head < len(admitted) and admitted[head] <= now - window:
                head += 1
            if len(admitted) - head < limit:
                admitted.append(now)
                now += latency
                break
            rejected += 1
            blocking = admitted[len(admitted) - limit]
            now += latency + max(1, math.ceil(blocking + window - now))
        else:
            failed += 1
    return StatusQuo(sent, rejected, failed, now)


# -- the bridge ------------------------------------------------------------------------------


async def fill_queue(queue: QueueBackend, records: list[dict[str, Any]]) -> None:
    """Append records to a queue the way ingest does (validated records, group commits)."""
    for start in range(0, len(records), 1000):
        await queue.append(parse_native({"records": records[start:start + 1000]}, source="bench"))


@dataclass
class Delivery:
    requests: int
    by_endpoint: dict[str, int]
    rejected_429: int
    seconds_normalized: float
    stored: dict[str, int]
    #: ``edges``: dependencies stored; ``docs``: each entity's document
    graph: dict[str, Any]


async def deliver(records: list[dict[str, Any]], compress: float, tmp: Path,
                  queue: dict[str, Any] | None = None) -> Delivery:
    """Start a bridge on a queue holding ``records``; deliver all under the compressed quota.

    ``queue``: the bridge's queue settings (default: a new SQLite file under ``tmp``).
    """
    window = WINDOW / compress
    configure_logging("warning")  # an in-process bridge: keep per-request debug lines off the report
    queue = queue or {"path": tmp / f"delivery-{time.monotonic_ns()}.db"}
    config = SimulatorConfig(tokens=[SIM_TOKEN], entities=[SimEntity(tag=t) for t in ENTITIES],
                             metric_keys=METRIC_KEYS, rate_limit_per_minute=LIMIT,
                             rate_limit_window_seconds=window)  # Cortex's quota window, compressed K times
    async with SimulatorServer(config) as sim:
        # The bridge's request budget with the same compressed window (1000 per window, burst 50).
        settings = load_settings(
            None, cortex={"url": sim.url, "token": SIM_TOKEN, "rate_limit_per_minute": LIMIT, "burst": 50,
                          "rate_limit_window_seconds": window},
            queue={**queue, "max_records": 10_000_000, "max_bytes": 1 << 34},
            http={"host": "127.0.0.1", "port": 0}, metrics={"host": "127.0.0.1", "port": 0},
            log={"level": "warning"}, ingest={"allow_unauthenticated": True})
        filling = await open_queue(settings.queue)
        try:
            await fill_queue(filling, records)
        finally:
            await filling.close()
        bridge = await Bridge.create(settings)
        started = time.monotonic()
        await bridge.start()
        elapsed, log, state = await drained(bridge, sim, started)
        graph = sim.store.graph.snapshot()
    by_endpoint = Counter(_endpoint(r["method"], r["path"]) for r in log)
    return Delivery(len(log), dict(by_endpoint), sum(1 for r in log if r["status"] == 429),
                    elapsed * compress, state,
                    {"edges": sum(map(len, graph["dependencies"].values())), "docs": graph["docs"]})


async def drained(bridge: Bridge, sim: SimulatorServer, started: float) -> tuple[float, list[dict[str, Any]], dict[str, int]]:
    """Wait until the bridge's queue is empty, stop it; seconds since ``started`` (monotonic), the
    simulator's request log and its counts of what it stores."""
    while bridge.queue.depth > 0:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    await bridge.stop(deadline=5)
    return elapsed, list(sim.store.requests), sim.store.snapshot()["counts"]


def _endpoint(method: str, path: str) -> str:
    if path.endswith("/deploys"):
        return "deploys"
    if path.endswith("/custom-events"):
        return "custom-events"
    if "/custom-metrics/" in path:
        return "custom-metrics bulk"
    if path.endswith("/custom-data"):
        return "custom-data bulk"
    if path.endswith("/catalog/dependencies"):
        return "dependencies bulk"
    if path.endswith("/documentation/openapi"):
        return "openapi docs"
    return f"{method} {path.split('?')[0]}"


async def run(scale: float = 1.0, compress: float = 10.0) -> tuple[list[Row], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp_dir:
        tmp = Path(tmp_dir)
        mixed = mixed_records(scale)
        mixed_result = await deliver(mixed, compress, tmp)
        # At least 100 points per lane even when scaled down: a backlog that fills whole requests.
        points = metric_records(max(100, round(200 * scale)))
        metric_result = await deliver(points, compress, tmp)
    kinds = Counter(r["kind"] for r in mixed)
    stored = mixed_result.stored
    assert (stored["deploys"], stored["events"], stored["metric_points"], stored["custom_data"]) == (
        kinds["deploy"], kinds["event"], kinds["metric"], kinds["custom_data"]), (stored, kinds)
    assert mixed_result.graph["edges"] == kinds["dependency"], mixed_result.graph
    newest = {r["entity"]: r["spec"] for r in mixed if r["kind"] == "docs"}
    assert mixed_result.graph["docs"] == newest, "each entity holds its newest document"
    assert metric_result.stored["metric_points"] == len(points)

    min_req = minimum_requests(mixed)
    min_s = minimum_seconds(min_req)
    quo = status_quo(len(mixed))
    metric_requests = metric_result.by_endpoint.get("custom-metrics bulk", 0)
    per_point = metric_requests / len(points)
    min_per_point = minimum_requests(points) / len(points)
    req_ratio = mixed_result.requests / min_req
    time_ratio = mixed_result.seconds_normalized / min_s
    rows = [
        Row(f"{len(mixed):,} mixed records: Cortex requests used", f"{mixed_result.requests:,}",
            f"{min_req:,} API minimum", req_ratio, "<= 1.05x", req_ratio <= 1.05),
        Row("  same, vs status quo (1 POST/record, CLI bucket)", f"{mixed_result.requests:,}",
            f"{quo.requests:,} status quo", mixed_result.requests / quo.requests, "reported", None),
        Row("  time to deliver all (normalized to 1000/min)", f"{mixed_result.seconds_normalized:,.0f} s",
            f"{min_s:,.0f} s API minimum", time_ratio, "<= 1.05x", time_ratio <= 1.05),
        Row("  same, vs status quo", f"{mixed_result.seconds_normalized:,.0f} s", f"{quo.seconds:,.0f} s status quo",
            mixed_result.seconds_normalized / quo.seconds, "reported", None),
        Row("  429s received", f"{mixed_result.rejected_429}",
            f"{quo.rejected_429} status quo ({quo.failed_records} records failed)", None, "0",
            mixed_result.rejected_429 == 0),
        Row(f"metric backlog ({len(points):,} points): requests per point", f"{per_point:.4f}",
            f"{min_per_point:.4f} API minimum (100 points/request)", per_point / min_per_point, "<= 0.011",
            per_point <= 0.011),
    ]
    details = {
        "scale": scale, "compress": compress, "mix": dict(kinds),
        "bridge_requests_by_endpoint": mixed_result.by_endpoint, "minimum_requests": min_req,
        "status_quo": vars(quo), "metric_backlog": {"points": len(points), "requests": metric_result.by_endpoint,
                                                      "rejected_429": metric_result.rejected_429},
    }
    return rows, details


def main() -> None:
    scaled_run_main(__doc__, run, "1.0 = 10k mixed records, 50k metric points")


if __name__ == "__main__":
    main()
