"""Scenario 4: the queue at its size cap.

Cortex is down, producers keep posting, the queue fills to its configured cap. Producers must
get ``503`` + ``Retry-After`` (never a 202 for something that was not stored, never a 5xx other
than 503), the queue file must stay consistent (``PRAGMA integrity_check``) and within its cap,
and once Cortex is back the backlog drains, input is accepted again, and everything that was
acknowledged is delivered exactly once. (Kafka partitions pausing on a full queue is covered
by tests/sources/kafka/test_consume.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import BridgeFactory, sim_config, sim_state, wait_until
from tests.support.ledger import Ledger, integrity, scaled

FAST = {"rate_limit_per_minute": 60_000, "burst": 200}


async def test_full_queue_refuses_with_503_stays_consistent_and_recovers(
    make_bridge: BridgeFactory, tmp_path: Path
) -> None:
    cap = scaled(300, 20_000)
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as sim:
        await sim.outage(None)
        queue_path = tmp_path / "capped.db"
        bridge = await make_bridge(sim, queue_path=queue_path, cortex={**FAST, "verify_token_on_start": False},
                                   queue={"max_records": cap, "retry_after_seconds": 2})
        url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
        ledger = Ledger()
        refusals: list[tuple[int, str | None]] = []
        async with aiohttp.ClientSession() as http:

            async def producer() -> None:
                while len(refusals) < 20:
                    batch = ledger.batch(7)
                    async with http.post(url, json={"records": batch}) as resp:
                        ledger.statuses[str(resp.status)] += 1
                        if resp.status == 202:
                            body = await resp.json()
                            ledger.acked.update(zip(body["ids"], batch, strict=True))
                        else:
                            refusals.append((resp.status, resp.headers.get("Retry-After")))

            # Several producers race for the last free slots.
            await asyncio.gather(*(producer() for _ in range(4)))
        assert set(ledger.statuses) == {"202", "503"}, ledger.statuses
        assert all(ra == "2" for _, ra in refusals), refusals
        stats = await bridge.queue.stats()
        assert stats["undelivered"] == len(ledger.acked), "every 202 and only those are queued"
        assert cap - 7 < stats["undelivered"] <= cap
        assert integrity(queue_path) == "ok"

        await sim.resume()
        await wait_until(lambda: bridge.queue.depth == 0, timeout=60)
        assert integrity(queue_path) == "ok"
        # Full recovery: input is accepted again and delivered too.
        acked_at_cap = len(ledger.acked)
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                assert await ledger.post(http, f"http://127.0.0.1:{bridge.ingest_port}", ledger.batch(7)) == 202
        await wait_until(lambda: bridge.queue.depth == 0, timeout=60)
        assert len(ledger.acked) == acked_at_cap + 35
        assert (await bridge.queue.stats())["dead_letters"] == 0
        ledger.verify(await sim_state(sim))
