"""Run every benchmark, side by side on this machine, and print one table.

Each row: what was measured, the measurement, its baseline measured in the same run (or the
API's minimum / the target), the ratio, the target, and whether it is met. Details (every round,
every count behind the ratios) go to ``--json``. Not part of the test suite.

    python -m bench.run_all                      # everything (about 8 minutes on 2 cores)
    python -m bench.run_all --quick              # smaller and shorter (about 2 minutes)
    python -m bench.run_all --only ingest,delivery --profile

Requires wrk (``apt-get install -y wrk``), mq-bridge and psutil (``pip install mq-bridge==1.2.0
psutil``), and py-spy for ``--profile``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import delivery, ingest, latency, peer, priority, replicas, scale
from bench.common import BENCH_DIR, Row, machine, table

ALL = ["ingest", "peer", "delivery", "priority", "latency", "kafka", "scale", "replicas"]


def kafka(messages: int, rounds: int) -> tuple[list[Row], dict[str, Any]]:
    """The Kafka engineer's benchmark (bench/kafka_consume.py), run as its own process."""
    out = subprocess.run([sys.executable, "-m", "bench.kafka_consume", "--messages", str(messages),
                          "--rounds", str(rounds)], capture_output=True, text=True, check=True,
                         cwd=BENCH_DIR.parent, timeout=1800).stdout
    result: dict[str, Any] = json.loads(out[out.index("{"):])
    ratio, ignored = float(result["ratio"]), float(result["ignored_ratio"])
    return [Row("Kafka consume -> durable enqueue: msgs/s", f"{result['best_bridge']:,}/s",
                f"{result['best_raw']:,}/s raw aiokafka", ratio, ">= 0.1x (goal 0.2x)", ratio >= 0.1),
            Row("Kafka messages that map to nothing, discarded: msgs/s", f"{result['best_ignored']:,}/s",
                f"{result['best_raw']:,}/s raw aiokafka", ignored, ">= 0.3x", ignored >= 0.3)], result


async def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    only = args.only.split(",") if args.only else ALL
    rows: list[Row] = []
    details: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    timings: dict[str, float] = {}
    for name in only:
        started = time.monotonic()
        print(f"... {name}", file=sys.stderr, flush=True)
        if name == "ingest":
            got = await ingest.run(args.seconds, args.rounds)
        elif name == "peer":
            got = await peer.run(args.seconds, args.rounds)
        elif name == "delivery":
            got = await delivery.run(args.scale, args.compress)
        elif name == "priority":
            got = await priority.run(args.scale, args.compress)
        elif name == "latency":
            got = await latency.run(args.samples)
        elif name == "kafka":
            got = await asyncio.to_thread(kafka, args.kafka_messages, args.rounds)
        elif name == "scale":
            got = await scale.run(args.scale)
        elif name == "replicas":
            got = await replicas.run(args.seconds, args.compress, args.scale, failovers=2 if args.quick else 5)
        else:
            raise SystemExit(f"unknown benchmark {name!r} (known: {', '.join(ALL)})")
        rows += got[0]
        details[name] = got[1]
        timings[name] = round(time.monotonic() - started, 1)
    if args.profile:
        details["profile"] = await ingest.profile_native()
    details["seconds"] = timings
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--quick", action="store_true", help="shorter runs, scaled-down volumes")
    parser.add_argument("--seconds", type=float, default=None, help="wrk duration per run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per side (default 2)")
    parser.add_argument("--scale", type=float, default=None, help="volume scale of delivery/scale (default 1)")
    parser.add_argument("--compress", type=float, default=10.0, help="delivery time compression (1 = real time)")
    parser.add_argument("--samples", type=int, default=None, help="latency samples per path (default 100)")
    parser.add_argument("--kafka-messages", type=int, default=None, help="messages for the Kafka benchmark")
    parser.add_argument("--profile", action="store_true", help="py-spy the bridge under ingest load")
    parser.add_argument("--json", type=Path, default=None, help="write all details to this file")
    args = parser.parse_args()
    quick = args.quick
    args.seconds = args.seconds or (3 if quick else 5)
    args.rounds = args.rounds or (1 if quick else 2)
    args.scale = args.scale or (0.1 if quick else 1.0)
    args.samples = args.samples or (30 if quick else 100)
    args.kafka_messages = args.kafka_messages or (20_000 if quick else 100_000)
    rows, details = asyncio.run(run(args))
    m = details["machine"]
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
    print(table(rows))
    if "profile" in details:
        prof = details["profile"]
        print(f"\nprofile of the bridge's event loop at {prof['records_per_s']:,} records/s (py-spy, own time):")
        for frame, share in prof["event_loop"]["own"]:
            print(f"  {share * 100:5.1f}%  {frame}")
        print("inclusive time:")
        for frame, share in prof["event_loop"]["total"]:
            print(f"  {share * 100:5.1f}%  {frame}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows], **details}, indent=2, default=str))


if __name__ == "__main__":
    main()
