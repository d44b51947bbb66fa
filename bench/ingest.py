"""Ingest throughput and latency: the bridge's HTTP endpoints next to a bare aiohttp handler.

Side by side, in one run, with wrk (Debian) and the same Lua-generated load:

1. **native** ``POST /v1/records``, one ~300-byte event per request, each request a new record:
   the bridge's accepted-and-durable records/s (a 202 is sent only after the group commit's
   fsync) against the req/s of ``bench.servers floor`` (reads the body, answers 202). Target
   >= 0.5x. Rounds alternate which side runs first; the best round of each side counts.
2. **latency at 50 % of max**: wrk paced (each connection waits before each request) to half the
   bridge's best rate, against both the bridge and the floor; p50/p99 side by side.
3. **GitHub webhook** ``POST /webhooks/github`` with a real fixture (``deployment_status``
   success, ~9 KB) signed with HMAC-SHA256 per request (each request a new deployment id, so a
   new record): deliveries/s against the floor receiving the same requests.

The bridge runs as ``cortex-bridge run`` (a child process, production defaults: 1000 req/min to
Cortex, 50 ms linger, info logs to a file) against the simulator; durable counts are checked
against the queue file after the run.

    python -m bench.ingest [--seconds 5] [--rounds 2] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    NATIVE_EVENT_LUA,
    Child,
    Row,
    native_event_size,
    profile,
    run_wrk,
    run_wrk_cpu,
    stopping,
)
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from tests.support.cortex import SIM_TOKEN
from tests.support.ledger import queue_stats
from tests.support.paths import FIXTURES
from tests.support.processes import BridgeProcess

FIXTURE = FIXTURES / "webhooks" / "github" / "deployment_status.success.json"
GITHUB_SECRET = "bench-webhook-secret"
PLACEHOLDER = 987_654_321_000

#: Production settings of the request budget and batching (see bridge/config.py defaults).
PRODUCTION_CORTEX = {"rate_limit_per_minute": 1000, "burst": 50, "linger_ms": 50, "max_concurrency": 8}

GITHUB_LUA = r"""
local counter, sigs, parts, base, run = 0, {}, {}, 0, "r"
init = function(args)
  local f = io.open(args[1], "r")
  local n = tonumber(f:read("*l"))
  for k = 1, n do parts[k] = f:read("*l") end
  base = tonumber(f:read("*l"))
  for line in f:lines() do sigs[#sigs + 1] = line end
  f:close()
  run = args[2]
end
request = function()
  counter = counter + 1
  local i = (counter - 1) % #sigs
  local body = table.concat(parts, string.format("%d", base + i))
  return wrk.format("POST", "/webhooks/github", {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "deployment_status",
    ["X-GitHub-Delivery"] = run .. "-" .. counter,
    ["X-Hub-Signature-256"] = "sha256=" .. sigs[i + 1],
  }, body)
end
"""


def sim_for_bench() -> SimulatorConfig:
    tags = ["checkout-service", "payments-api", "inventory"]
    return SimulatorConfig(tokens=[SIM_TOKEN], entities=[SimEntity(tag=t) for t in tags],
                           metric_keys=["lead-time"], rate_limit_per_minute=1000)


def github_bodies(path: Path, count: int) -> int:
    """Write the body's parts around the request number, the base number and ``count`` signatures
    for GITHUB_LUA; return the body size.

    Each request is a new deployment of a new commit (the number is in the deployment id and in
    the sha): a new record and a deploy of its own, not another report of one change (those
    coalesce, bench/coalesce.py)."""
    payload = json.loads(FIXTURE.read_text())
    payload["deployment"]["id"] = PLACEHOLDER
    payload["deployment"]["sha"] = "f" * 28 + str(PLACEHOLDER)
    text = json.dumps(payload, separators=(",", ":"))
    parts = text.split(str(PLACEHOLDER))
    # New numbers on every run, 12 digits (a 40-character sha); below 2^53 so Lua prints them exactly.
    base = (uuid.uuid4().int % 9_000_000 + 1_000_000) * 100_000
    key = GITHUB_SECRET.encode()
    sigs = [hmac.new(key, str(base + i).join(parts).encode(), hashlib.sha256).hexdigest() for i in range(count)]
    path.write_text("\n".join([str(len(parts)), *parts, str(base), *sigs]) + "\n")
    return len(str(base).join(parts))


def durable_total(bridge: BridgeProcess) -> int:
    """Records the bridge holds or held: queued, delivered (history) or dead-lettered."""
    stats = queue_stats(bridge.queue)
    return int(stats["undelivered"] + stats["delivered_history"] + stats["dead_letters"])


async def run(seconds: float = 5, rounds: int = 2, connections: int = 32) -> tuple[list[Row], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "native").mkdir()
        (tmp / "github").mkdir()
        async with SimulatorServer(sim_for_bench()) as sim:
            floor = await Child("bench.servers", "floor").start()
            native = BridgeProcess(tmp / "native", sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"})
            github = BridgeProcess(tmp / "github", sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"}, sources=[{
                "name": "github", "type": "github", "secrets": [GITHUB_SECRET],
                "entity": {"static": {"Codertocat/Hello-World": "checkout-service"}, "lookup": False}}])
            with stopping(floor, native, github):
                await native.start()
                await github.start()
                return await _measure(floor, native, github, tmp, seconds, rounds, connections)


async def _measure(floor: Child, native: BridgeProcess, github: BridgeProcess, tmp: Path, seconds: float,
                   rounds: int, connections: int) -> tuple[list[Row], dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    floor_rates: list[float] = []
    bridge_rates: list[float] = []
    cpu: dict[str, list[float]] = {"floor": [], "bridge": []}
    accepted = 0
    for n in range(rounds):
        sides = ("floor", "bridge") if n % 2 == 0 else ("bridge", "floor")
        for side in sides:
            target, pid = (floor.url, floor.pid) if side == "floor" else (native.url, native.pid)
            result, per_request = await asyncio.to_thread(
                run_wrk_cpu, pid, target, NATIVE_EVENT_LUA, seconds=seconds, connections=connections,
                args=[f"{run_id}{n}{side[0]}"])
            cpu[side].append(per_request)
            if side == "floor":
                floor_rates.append(result.ok_per_s)
            else:
                bridge_rates.append(result.ok_per_s)
                accepted += result.ok
    durable = durable_total(native)
    # wrk stops with up to one request per connection in flight: stored, but not counted as a 202.
    assert accepted <= durable <= accepted + connections * rounds, f"202s ({accepted}) vs durable ({durable})"
    best_floor, best_bridge = max(floor_rates), max(bridge_rates)

    # Latency at half the bridge's best rate, the same paced load on both sides.
    rate = best_bridge / 2
    pause_ms = max(1, round(connections * 1000 / rate))
    paced = {}
    for side, target in (("bridge", native.url), ("floor", floor.url)):
        paced[side] = await asyncio.to_thread(run_wrk, target, NATIVE_EVENT_LUA, seconds=seconds,
                                              connections=connections, args=[f"{run_id}p{side[0]}", str(pause_ms)])

    # The same events, 10 to a request: what batching producers get (records/s, not requests/s).
    before = durable_total(native)
    batched = await asyncio.to_thread(run_wrk, native.url, NATIVE_EVENT_LUA, seconds=seconds,
                                      connections=connections, args=[f"{run_id}b", "0", "/v1/records", "10"])
    batched_rate = (durable_total(native) - before) / batched.seconds

    # GitHub webhooks with signature verification.
    sig_file = tmp / "github-bodies.txt"
    body_size = github_bodies(sig_file, max(20_000, int(best_bridge * seconds * 1.5)))
    before = durable_total(github)
    gh, gh_cpu = await asyncio.to_thread(run_wrk_cpu, github.pid, github.url, GITHUB_LUA, seconds=seconds,
                                         connections=connections, args=[str(sig_file), f"{run_id}g"])
    gh_records = durable_total(github) - before
    gh_floor, gh_floor_cpu = await asyncio.to_thread(run_wrk_cpu, floor.pid, floor.url, GITHUB_LUA, seconds=seconds,
                                                     connections=connections, args=[str(sig_file), f"{run_id}f"])
    gh_rate = gh_records / gh.seconds

    b, f = paced["bridge"], paced["floor"]
    native_cpu, floor_cpu = min(cpu["bridge"]), min(cpu["floor"])
    rows = [
        Row("native ingest: CPU per accepted request (process CPU / 202s, 1 record/request)",
            f"{native_cpu * 1e6:,.0f} µs", f"{floor_cpu * 1e6:,.0f} µs bare aiohttp", native_cpu / floor_cpu,
            "<= 3x (goal 2x)", native_cpu / floor_cpu <= 3),
        Row("GitHub webhook, HMAC verified: CPU per accepted request", f"{gh_cpu * 1e6:,.0f} µs",
            f"{gh_floor_cpu * 1e6:,.0f} µs bare aiohttp", gh_cpu / gh_floor_cpu, "<= 4x", gh_cpu / gh_floor_cpu <= 4),
        Row("native ingest: accepted+durable records/s (1 record/request)", f"{best_bridge:,.0f}/s",
            f"{best_floor:,.0f} req/s bare aiohttp", best_bridge / best_floor, ">= 0.5x", best_bridge / best_floor >= 0.5),
        Row(f"native ingest latency at 50% of max ({b.ok_per_s:,.0f} req/s achieved): p50 / p99",
            f"{b.p50_ms:.1f} / {b.p99_ms:.1f} ms", f"{f.p50_ms:.1f} / {f.p99_ms:.1f} ms bare aiohttp",
            b.p99_ms / f.p99_ms if f.p99_ms else None, "reported (p99 ratio)", None),
        Row("native ingest, 10 records/request: accepted+durable records/s", f"{batched_rate:,.0f}/s",
            f"{best_floor:,.0f} req/s bare aiohttp", batched_rate / best_floor, "reported", None),
        Row(f"GitHub webhook ingest, HMAC verified ({body_size / 1024:.1f} KB fixture): records/s",
            f"{gh_rate:,.0f}/s", f"{gh_floor.ok_per_s:,.0f} req/s bare aiohttp", gh_rate / gh_floor.ok_per_s,
            ">= 0.5x", gh_rate / gh_floor.ok_per_s >= 0.5),
    ]
    details = {
        "body_bytes": native_event_size(), "connections": connections, "seconds": seconds, "rounds": rounds,
        "cpu_us_per_request": {side: [round(v * 1e6) for v in values] for side, values in cpu.items()},
        "github_cpu_us_per_request": round(gh_cpu * 1e6), "github_floor_cpu_us_per_request": round(gh_floor_cpu * 1e6),
        "floor_req_per_s": [round(r) for r in floor_rates], "bridge_records_per_s": [round(r) for r in bridge_rates],
        "accepted_checked_against_queue": accepted,
        "paced": {side: vars(res) for side, res in paced.items()}, "paced_pause_ms": pause_ms,
        "github": {"requests": gh.requests, "non2xx": gh.non2xx, "records": gh_records, "body_bytes": body_size,
                   "floor_req_per_s": round(gh_floor.ok_per_s)},
    }
    return rows, details


async def profile_native(seconds: float = 8, connections: int = 32) -> dict[str, Any]:
    """py-spy the bridge's event-loop thread under maximum native ingest load (for the docs)."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with SimulatorServer(sim_for_bench()) as sim:
            bridge = BridgeProcess(tmp, sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"})
            with stopping(bridge):
                await bridge.start()
                load = asyncio.create_task(asyncio.to_thread(
                    run_wrk, bridge.url, NATIVE_EVENT_LUA, seconds=seconds + 2, connections=connections, args=["prof"]))
                await asyncio.sleep(1)
                frames = await asyncio.to_thread(profile, bridge.pid, seconds, tmp / "pyspy.txt")
                db_frames = await asyncio.to_thread(profile, bridge.pid, seconds / 2, tmp / "pyspy-db.txt", "queue-db")
                result = await load
    return {"records_per_s": round(result.ok_per_s), "event_loop": frames, "queue_db_thread": db_frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    from bench.common import table

    rows, details = asyncio.run(run(args.seconds, args.rounds, args.connections))
    print(table(rows))
    print(json.dumps(details, indent=2, default=str))


if __name__ == "__main__":
    main()
