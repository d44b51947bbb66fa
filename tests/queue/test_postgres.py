"""What only a shared PostgreSQL queue must show: several replicas on one database, and the
database itself failing (restart, read-only) while input arrives."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.queue import BatchPolicy, QueueUnavailable
from bridge.queue.postgres import SCHEMA_VERSION, PostgresQueue
from tests.queue.contract import events
from tests.support.cortex import wait_until
from tests.support.postgres import PostgresCluster, with_password

SMALL = BatchPolicy(max_items={"event": 3})


async def test_two_replicas_claim_disjoint_records_under_concurrency(pg_dsn: str) -> None:
    a = await PostgresQueue.open(pg_dsn, sender_lock=False)
    b = await PostgresQueue.open(pg_dsn, sender_lock=False)
    stored = await a.append(events(*range(60)))
    claimed: list[int] = []

    async def drain(queue: PostgresQueue) -> None:
        while batch := await queue.claim(SMALL):
            claimed.extend(q.seq for q in batch)

    await asyncio.gather(*(drain(q) for q in (a, b, a, b)))
    assert len(claimed) == len(set(claimed)) == len(stored.new_ids)
    await a.close()
    await b.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numbers=st.lists(st.integers(0, 30), min_size=1, max_size=12), delivery=st.text(min_size=1, max_size=20))
async def test_one_delivery_posted_to_two_replicas_at_once_is_stored_once(
    pg_cluster: PostgresCluster, numbers: list[int], delivery: str
) -> None:
    dsn = pg_cluster.create_database()
    a = await PostgresQueue.open(dsn)
    b = await PostgresQueue.open(dsn)
    records = events(*numbers)
    results = await asyncio.gather(*(q.append(records, delivery=("gh", delivery)) for q in (a, b, a, b)))
    assert sum(1 for r in results if not r.duplicate_delivery) == 1
    stored = [rid for r in results for rid in r.new_ids]
    assert sorted(stored) == sorted({r.id for r in records})
    assert (await a.stats())["undelivered"] == len(set(numbers))
    await a.close()
    await b.close()


async def test_a_record_id_appended_through_two_replicas_at_once_is_stored_once(pg_dsn: str) -> None:
    a = await PostgresQueue.open(pg_dsn)
    b = await PostgresQueue.open(pg_dsn)
    results = await asyncio.gather(*(q.append(events(i % 7)) for i in range(40) for q in (a, b)))
    assert sorted(rid for r in results for rid in r.new_ids) == sorted(r.id for r in events(*range(7)))
    await a.close()
    await b.close()


async def test_replicas_starting_at_once_migrate_once(pg_dsn: str) -> None:
    queues = await asyncio.gather(*(PostgresQueue.open(pg_dsn) for _ in range(4)))
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_version")
        assert [r[0] for r in await cur.fetchall()] == list(range(1, SCHEMA_VERSION + 1))
    for queue in queues:
        await queue.close()


async def test_a_database_restart_mid_append_refuses_then_recovers(pg_cluster: PostgresCluster, pg_dsn: str) -> None:
    queue = await PostgresQueue.open(pg_dsn, statement_timeout_seconds=2)
    await queue.append(events(0))
    appends = [asyncio.create_task(queue.append(events(i))) for i in range(1, 30)]
    await asyncio.sleep(0)
    pg_cluster.stop()
    try:
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert refused and all(isinstance(o, QueueUnavailable) for o in refused), refused
        with pytest.raises(QueueUnavailable):
            await queue.append(events(100))
        assert not queue.writable
    finally:
        pg_cluster.start()
    await wait_until(queue.probe_writable, timeout=30, interval=0.2)
    assert (await queue.append(events(101))).new_ids == [events(101)[0].id]
    accepted = {rid for o in outcomes if not isinstance(o, BaseException) for rid in o.new_ids}
    undelivered = (await queue.stats())["undelivered"]
    # Nothing acknowledged is missing; a refused append may or may not have committed.
    assert undelivered >= len(accepted) + 2
    await queue.close()


async def test_a_read_only_database_refuses_with_queue_unavailable(pg_cluster: PostgresCluster, pg_dsn: str) -> None:
    queue = await PostgresQueue.open(pg_dsn)
    database = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    pg_cluster.execute_admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    pg_cluster.terminate_sessions(pg_dsn)  # new sessions see the setting, as after a failover
    with pytest.raises(QueueUnavailable, match="read-only"):
        await queue.append(events(1))
    assert not queue.writable and queue.unwritable_reason == "queue database unavailable"
    assert not await queue.probe_writable()
    pg_cluster.execute_admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
    pg_cluster.terminate_sessions(pg_dsn)
    await wait_until(queue.probe_writable, timeout=30, interval=0.2)
    assert (await queue.append(events(1))).new_ids
    await queue.close()


async def test_one_sender_at_a_time_and_a_takeover_reads_back_what_was_in_flight(pg_dsn: str) -> None:
    policy = BatchPolicy(max_items={"event": 1}, ambiguous_kinds=frozenset({"event"}))
    first = await PostgresQueue.open(pg_dsn, settle_seconds=0)
    second = await PostgresQueue.open(pg_dsn, settle_seconds=0)
    takeovers: list[str] = []
    second.on_sender_takeover(lambda: takeovers.append("second"))
    await first.append(events(1, 2))
    sending = await first.claim(policy)
    assert sending and first.is_sender
    assert await second.claim(policy) == [] and not second.is_sender
    await first.close()  # the sender is gone with a request in flight

    async def took_over() -> bool:
        return bool(await second.ambiguous())

    await wait_until(took_over, timeout=10, interval=0.2)
    assert [q.seq for q in await second.ambiguous()] == [q.seq for q in sending]
    assert second.is_sender and len(await second.claim(policy)) == 1
    assert takeovers == ["second"], "the budget is told once, before the new sender's first claim"
    await second.close()


async def test_errors_never_show_the_password(pg_cluster: PostgresCluster, pg_dsn: str) -> None:
    password = "s3cr3t-pw-do-not-print"
    pg_cluster.execute_admin(f"CREATE ROLE bridge_pw LOGIN PASSWORD '{password}'")
    with contextlib.suppress(psycopg.Error):
        pg_cluster.execute_admin("ALTER SYSTEM SET password_encryption = 'scram-sha-256'")
    wrong = with_password(pg_dsn, "no_such_user", password)
    with pytest.raises(QueueUnavailable) as refused:
        await PostgresQueue.open(wrong, statement_timeout_seconds=2)
    assert password not in str(refused.value) and password not in repr(refused.value.__cause__)
    with pytest.raises(QueueUnavailable) as bad:
        await PostgresQueue.open(f"host=/tmp password={password} port=notaport ='", statement_timeout_seconds=2)
    assert password not in str(bad.value)


async def test_spend_admission_counts_the_other_replicas_and_never_gives_away_the_last_slot(pg_dsn: str) -> None:
    a = await PostgresQueue.open(pg_dsn, sender_lock=False)
    b = await PostgresQueue.open(pg_dsn, sender_lock=False)
    try:
        def keep(stamp: float) -> None:
            return None

        # b's own earlier requests never count against b; a's do, until they leave the span.
        assert await a.admit_spend("a", room=2, span=60, expiry=keep) is None
        assert await a.admit_spend("a", room=2, span=60, expiry=keep) is None
        assert await b.admit_spend("b", room=5, span=60, expiry=keep) is None
        wait = await b.admit_spend("b", room=2, span=60, expiry=keep)
        assert wait is not None and 59 < wait <= 60, wait
        assert await b.admit_spend("b", room=3, span=60, expiry=keep) is None
        # Ten replicas racing for the last three slots: exactly three get one.
        answers = await asyncio.gather(*(q.admit_spend(f"r{i}", room=7, span=60, expiry=keep)
                                         for i, q in enumerate([a, b] * 5)))
        assert sum(answer is None for answer in answers) == 3, answers
        # A span that ended admits again.
        await asyncio.sleep(0.3)
        assert await a.admit_spend("z", room=1, span=0.2, expiry=keep) is None
    finally:
        await a.close()
        await b.close()
