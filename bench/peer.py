"""The same HTTP load through a peer forwarder: mq-bridge 1.2.0 (PyPI, Rust engine).

mq-bridge runs as an HTTP -> HTTP batching forwarder (HTTP listener in, JSON-array batches of up
to 512 messages out) into a counting sink (``bench.servers sink``). The bridge takes the same
load into its durable queue and delivers to the simulator. Both get the same wrk Lua load (one
~300-byte event per request), one after the other, best of the rounds.

**The peer gives no durability guarantee**: its 2xx means the message is in process memory (a
crash or kill loses everything not yet forwarded; there is no disk queue, no retry state that
survives a restart, no per-record dedup). The bridge answers 202 only after an fsync'd commit.
The ratio is therefore the price of durability plus Python, not a like-for-like race.

    python -m bench.peer [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import NATIVE_EVENT_LUA, Child, Row, run_wrk, stopping, table
from bench.ingest import PRODUCTION_CORTEX, durable_total, sim_for_bench
from bridge.cortex.simulator import SimulatorServer
from tests.support.processes import BridgeProcess


async def sink_count(sink: Child) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{sink.url}/count") as resp:
        return int((await resp.json())["documents"])


async def run(seconds: float = 5, rounds: int = 2, connections: int = 32) -> tuple[list[Row], dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_dir:
        async with SimulatorServer(sim_for_bench()) as sim:
            sink = await Child("bench.servers", "sink").start("/count")
            peer = Child("bench.servers", "mq-bridge", "--target", sink.url)
            bridge = BridgeProcess(Path(tmp_dir), sim.url, cortex=PRODUCTION_CORTEX, log={"level": "info"})
            with stopping(sink, peer, bridge):
                await peer.start()
                await bridge.start()
                peer_rates: list[float] = []
                bridge_rates: list[float] = []
                peer_ok = 0
                for n in range(rounds):
                    for side in (("peer", "bridge") if n % 2 == 0 else ("bridge", "peer")):
                        url = peer.url if side == "peer" else bridge.url
                        result = await asyncio.to_thread(run_wrk, url, NATIVE_EVENT_LUA, seconds=seconds,
                                                         connections=connections, args=[f"{run_id}{n}{side[0]}"])
                        (peer_rates if side == "peer" else bridge_rates).append(result.ok_per_s)
                        peer_ok += result.ok if side == "peer" else 0
                await asyncio.sleep(1)  # the peer's last batches reach the sink
                forwarded = await sink_count(sink)
                durable = durable_total(bridge)
    best_peer, best_bridge = max(peer_rates), max(bridge_rates)
    rows = [Row("same load vs mq-bridge 1.2.0 HTTP->HTTP batching (NOT durable): accepted/s",
                f"{best_bridge:,.0f}/s bridge, durable", f"{best_peer:,.0f}/s mq-bridge, in memory",
                best_bridge / best_peer, "reported", None)]
    details = {"peer_per_s": [round(r) for r in peer_rates], "bridge_per_s": [round(r) for r in bridge_rates],
               "peer_2xx": peer_ok, "peer_forwarded_to_sink": forwarded, "bridge_durable_records": durable}
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows, details = asyncio.run(run(args.seconds, args.rounds))
    print(table(rows))
    print(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
