"""The operator's write operations on PostgreSQL while replicas claim: chunked, nothing lost or doubled.

The commands themselves (output, exit codes, both backends) are tests/test_cli_operator.py; here
``PgOperator`` runs with small chunks beside two replicas that claim and deliver all the time.
"""

from __future__ import annotations

import asyncio
import time

from bridge.queue import BatchPolicy
from bridge.queue.postgres import PostgresQueue
from bridge.queue.postgres.operator import PgOperator
from tests.queue.contract import events

ALL = BatchPolicy(max_items={"event": 100})
SMALL = BatchPolicy(max_items={"event": 3})


async def test_replay_and_retry_beside_claiming_replicas_hand_out_each_record_once(pg_dsn: str) -> None:
    a = await PostgresQueue.open(pg_dsn, sender_lock=False)
    b = await PostgresQueue.open(pg_dsn, sender_lock=False)
    records = events(*range(60))
    await a.append(records)
    claimed = await a.claim(ALL)
    assert len(claimed) == 60
    await a.dead_letter([q.seq for q in claimed[:30]], reason="rejected", detail="400", status=400)
    await a.reschedule([q.seq for q in claimed[30:]], next_attempt_at=time.time() + 3600, error="not found",
                       count_attempt=True, parked=True)
    operator = PgOperator.open(pg_dsn, write=True)
    handed_out: list[str] = []
    done = asyncio.Event()

    async def replica(queue: PostgresQueue) -> None:
        while True:
            batch = await queue.claim(SMALL)
            handed_out.extend(q.record.id for q in batch)
            await queue.mark_delivered([(q.seq, None) for q in batch])
            if not batch:
                if done.is_set():
                    return
                await asyncio.sleep(0.01)

    replicas = [asyncio.create_task(replica(q)) for q in (a, b, a, b)]
    replayed, released = await asyncio.gather(asyncio.to_thread(lambda: operator.replay(chunk=4)),
                                              asyncio.to_thread(lambda: operator.retry(parked=True, chunk=5)))
    done.set()
    await asyncio.gather(*replicas)
    operator.close()
    assert (replayed, released) == (30, 30)
    assert sorted(handed_out) == sorted(r.id for r in records), "a record was lost or handed out twice"
    stats = await a.stats()
    assert stats["undelivered"] == 0 and stats["dead_letters"] == 0 and stats["delivered_history"] == 60
    await a.close()
    await b.close()


async def test_purge_in_chunks_forgets_only_what_it_deleted(pg_dsn: str) -> None:
    queue = await PostgresQueue.open(pg_dsn, sender_lock=False)
    records = events(*range(12))
    await queue.append(records)
    claimed = await queue.claim(ALL)
    await queue.dead_letter([q.seq for q in claimed[:6]], reason="rejected", detail="400", status=400)
    await queue.dead_letter([q.seq for q in claimed[6:9]], reason="too_old", detail="old", status=None)
    operator = PgOperator.open(pg_dsn, write=True)
    assert operator.purge(reason="rejected", chunk=4) == 6
    assert [e["reason"] for e in operator.dlq_list()] == ["too_old"] * 3
    operator.close()
    stored = await queue.append(records)
    assert sorted(stored.new_ids) == sorted(r.id for r in records[:6]), "only purged ids may be stored again"
    await queue.close()
