"""The durable queue on real SQLite files: group commit, dedupe, capacity, recovery, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.queue import (
    BatchPolicy,
    DurableQueue,
    QueueFull,
    QueueUnavailable,
    RawInput,
    dead_letters,
    files,
    inspect,
)
from bridge.queue.schema import SCHEMA_VERSION, State
from bridge.records import Record
from bridge.sources.native import parse_native
from tests.support.queue_file import stored_rows

POLICY = BatchPolicy(max_items={"metric": 100, "event": 1, "custom_data": 1000},
                     ambiguous_kinds=frozenset({"event", "metric"}))


def metric(i: int, entity: str = "svc") -> Record:
    return parse_native({"kind": "metric", "entity": entity, "key": "lead-time", "timestamp": 1_700_000_000 + i,
                         "value": i}, source="test")[0]


def event(i: int) -> Record:
    return parse_native({"kind": "event", "entity": "svc", "type": "T", "title": f"e{i}",
                         "timestamp": 1_700_000_000 + i}, source="test")[0]


async def open_queue(path: Path, **kw: int) -> DurableQueue:
    return await DurableQueue.open(path / "q.db", **kw)


async def test_concurrent_appends_share_commits_and_all_persist(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    results = await asyncio.gather(*[queue.append([metric(i)]) for i in range(300)])
    assert all(len(r.new_ids) == 1 for r in results)
    await queue.close()
    # A fresh process (new connection) sees every acknowledged record.
    conn = inspect.open_file(tmp_path / "q.db")
    assert inspect.stats(conn)["undelivered"] == 300


async def test_same_record_id_is_stored_once_even_after_delivery(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    first = await queue.append([metric(1)])
    again = await queue.append([metric(1)])
    assert first.new_ids and not again.new_ids and again.duplicate_ids == first.new_ids
    batch = await queue.claim(POLICY)
    await queue.mark_delivered([(q.seq, None) for q in batch])
    after = await queue.append([metric(1)])
    assert after.duplicate_ids and queue.depth == 0
    await queue.close()


async def test_delivery_id_dedupes_a_redelivered_input(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    first = await queue.append([metric(1), metric(2)], delivery=("github", "d-1"))
    second = await queue.append([metric(1), metric(2)], delivery=("github", "d-1"))
    assert len(first.new_ids) == 2 and second.duplicate_delivery
    assert queue.depth == 2
    await queue.close()


async def test_duplicates_within_one_group_commit_are_stored_once(tmp_path: Path) -> None:
    """Concurrent appends share a commit; duplicates among them are caught as across commits."""
    queue = await open_queue(tmp_path)
    results = await asyncio.gather(
        queue.append([metric(1)], delivery=("github", "d-7")),
        queue.append([metric(2)], delivery=("github", "d-7")),  # the same delivery, redelivered at once
        queue.append([metric(3), metric(3)]),  # one record twice in one input
        queue.append([metric(3)]),
        queue.append([metric(4)], delivery=("gitlab", "d-7")),  # same id, another source: not a duplicate
        queue.append([], state_updates={"k": "1"}),
        queue.append([], state_updates={"k": "2"}),  # later submission wins
    )
    assert [r.duplicate_delivery for r in results] == [False, True, False, False, False, False, False]
    assert len(results[2].new_ids) == 1 and results[2].duplicate_ids == results[2].new_ids
    assert results[3].duplicate_ids == results[2].new_ids and not results[3].new_ids
    assert queue.depth == 3 == inspect.stats(inspect.open_file(tmp_path / "q.db"))["undelivered"]
    assert await queue.get_state("k") == "2"
    await queue.close()


async def test_full_queue_refuses_without_storing_anything(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path, max_records=3)
    await queue.append([metric(1), metric(2)])
    with pytest.raises(QueueFull):
        await queue.append([metric(3), metric(4)])
    assert queue.depth == 2
    await queue.append([metric(3)])
    assert queue.is_full
    await queue.close()


async def test_claim_fills_a_bulk_request_from_one_lane(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([metric(i) for i in range(150)] + [metric(i, "other") for i in range(10)])
    first = await queue.claim(POLICY)
    second = await queue.claim(POLICY)
    third = await queue.claim(POLICY)
    assert [len(first), len(second), len(third)] == [100, 50, 10]
    assert {q.record.entity for q in third} == {"other"}
    assert await queue.claim(POLICY) == []
    await queue.close()


async def test_crash_recovery_turns_sending_into_ambiguous(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([event(1), event(2)])
    claimed = await queue.claim(POLICY)  # SENDING: the request may be on the wire
    assert len(claimed) == 1
    # Simulate kill -9: abandon the queue without closing it, reopen the file.
    reopened = await DurableQueue.open(tmp_path / "q.db")
    ambiguous = await reopened.ambiguous()
    assert [q.record.id for q in ambiguous] == [claimed[0].record.id]
    ready = await reopened.claim(POLICY)
    assert ready and ready[0].record.id != claimed[0].record.id
    await reopened.close()


async def test_dead_letters_keep_reason_and_can_be_replayed(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([event(1)])
    batch = await queue.claim(POLICY)
    await queue.dead_letter([batch[0].seq], reason="rejected", detail="Cortex 400: bad title", status=400)
    assert queue.depth == 0
    conn = files.open_file(tmp_path / "q.db", write=True)
    listed = inspect.dlq_list(conn)
    assert listed[0]["reason"] == "rejected" and listed[0]["status"] == 400
    assert inspect.dlq_show(conn, batch[0].record.id)["record"]["title"] == "e1"  # type: ignore[index]
    assert dead_letters.replay(conn, reason="rejected") == 1
    assert (await queue.stats())["undelivered"] == 1  # the daemon recounts what the operator replayed
    assert inspect.trace(conn, batch[0].record.id)[0]["status"] == "queued"
    conn.close()
    await queue.close()


async def test_reschedule_counts_attempts_only_when_asked(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([event(1)])
    batch = await queue.claim(POLICY)
    await queue.reschedule([batch[0].seq], next_attempt_at=0, error="429", count_attempt=False)
    batch = await queue.claim(POLICY)
    assert batch[0].attempts == 0 and batch[0].first_failure_at is None
    await queue.reschedule([batch[0].seq], next_attempt_at=0, error="503", count_attempt=True)
    batch = await queue.claim(POLICY)
    assert batch[0].attempts == 1 and batch[0].first_failure_at is not None
    await queue.close()


async def test_disk_full_refuses_input_and_recovers(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([metric(0)])
    # SQLite's own "database or disk is full" condition: cap the file at its current size.
    pages = queue.conn.execute("PRAGMA page_count").fetchone()[0]
    queue.conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(QueueUnavailable):
        await queue.append([metric(i) for i in range(1, 400)])
    assert not queue.writable
    assert queue.depth == 1
    queue.conn.execute("PRAGMA max_page_count=1073741823")
    await queue.append([metric(500)])
    assert queue.writable and queue.depth == 2
    await queue.close()
    conn = sqlite3.connect(tmp_path / "q.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM records WHERE state = ?", (State.READY,)).fetchone()[0] == 2


async def test_source_state_is_written_with_records(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([metric(1)], state_updates={"k8s/event/uid-1": "3"})
    await queue.put_state({"k8s/event/uid-2": "1"})
    assert await queue.get_states("k8s/event/") == {"k8s/event/uid-1": "3", "k8s/event/uid-2": "1"}
    await queue.close()


async def test_replay_skips_dead_inputs_that_are_not_records(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.append([event(1)])
    batch = await queue.claim(POLICY)
    await queue.dead_letter([batch[0].seq], reason="rejected", detail="400", status=400)
    await queue.dead_letter_raw([RawInput(source="events", input_id="t/0/7", reason="invalid_json",
                                           detail="Expecting value", payload=b"{oops")])
    conn = files.open_file(tmp_path / "q.db", write=True)
    assert inspect.stats(conn)["dead_letters"] == 2
    assert dead_letters.replay(conn) == 1  # the poison message has no record to send
    assert inspect.stats(conn)["dead_letters"] == 1
    claimed = await queue.claim(POLICY)
    assert [q.record.id for q in claimed] == [batch[0].record.id]
    conn.close()
    await queue.close()


def counted(db: Path) -> tuple[int, int, int]:
    """Depth, bytes and dead letters counted the slow way, to check the trigger-kept totals."""
    conn = sqlite3.connect(db)
    count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
    dead = conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
    conn.close()
    return count, size, dead


async def test_totals_stay_exact_through_every_change(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = await open_queue(tmp_path)

    async def check() -> None:
        await queue.refresh_gauges()
        count, size, dead = counted(db)
        assert (queue.depth, queue._bytes) == (count, size)
        stats = await queue.stats()
        assert (stats["undelivered"], stats["undelivered_bytes"], stats["dead_letters"]) == (count, size, dead)

    await queue.append([metric(i) for i in range(10)] + [event(i) for i in range(3)])
    await queue.append([metric(0), event(1)])  # duplicates: stored once
    await check()
    assert queue.depth == 13
    metrics = await queue.claim(POLICY)
    await queue.mark_delivered([(q.seq, None) for q in metrics[:4]])
    await queue.dead_letter([q.seq for q in metrics[4:6]], reason="rejected", detail="400", status=400)
    await check()
    await queue.dead_letter_input([event(99)], reason="unresolved_entity", detail="no entity")
    await queue.dead_letter_raw([RawInput(source="t", input_id="t/0/1", reason="invalid_json",
                                           detail="x", payload=b"{")])
    await check()
    assert counted(db)[2] == 4

    conn = files.open_file(db, write=True)  # an operator's CLI, another connection
    assert dead_letters.replay(conn, reason="rejected") == 2
    assert dead_letters.purge(conn, reason="invalid_json") == 1
    conn.close()
    await check()
    assert queue.depth == 9 and counted(db)[2] == 1
    await queue.close()


async def test_totals_are_computed_once_for_a_queue_file_from_before_them(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = await open_queue(tmp_path)
    await queue.append([metric(i) for i in range(5)])
    batch = await queue.claim(POLICY)
    await queue.dead_letter([batch[0].seq], reason="rejected", detail="400", status=400)
    await queue.close()
    conn = sqlite3.connect(db)  # make it look like a version-1 file: no totals, no triggers, no spend
    conn.executescript("DROP TABLE totals; DROP TABLE spend;"
                       " DROP TRIGGER records_resized; DROP TRIGGER dead_in; DROP TRIGGER dead_out;"
                       " UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    conn.close()

    reopened = await open_queue(tmp_path)
    assert reopened.depth == 4 == counted(db)[0]
    assert (await reopened.stats())["dead_letters"] == 1
    assert stored_rows(reopened, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    await reopened.append([metric(10)])
    assert reopened.depth == 5 == counted(db)[0]
    await reopened.close()


#: What a version-3 file has and version 4 drops: a trigger per inserted and per deleted record.
VERSION_3_TRIGGERS = """
CREATE TRIGGER records_in AFTER INSERT ON records BEGIN
    UPDATE totals SET records = records + 1, record_bytes = record_bytes + NEW.size;
END;
CREATE TRIGGER records_out AFTER DELETE ON records BEGIN
    UPDATE totals SET records = records - 1, record_bytes = record_bytes - OLD.size;
END;
UPDATE meta SET value = '3' WHERE key = 'schema_version';
"""


async def test_a_version_3_file_loses_its_per_row_triggers_and_stays_exactly_counted(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = await open_queue(tmp_path)
    await queue.close()
    conn = sqlite3.connect(db)
    conn.executescript(VERSION_3_TRIGGERS)
    conn.close()
    old = await open_queue(tmp_path)  # what the version-3 triggers counted, before the upgrade ran
    assert stored_rows(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert stored_rows(old, "SELECT name FROM sqlite_master WHERE name IN ('records_in', 'records_out')") == []
    await old.close()

    conn = sqlite3.connect(db)  # the same file with records queued by version 3's triggers
    conn.executescript(VERSION_3_TRIGGERS)
    conn.close()
    reopened = await open_queue(tmp_path)
    await reopened.append([metric(i) for i in range(6)])  # counted once: no trigger doubles it
    claimed = await reopened.claim(POLICY)
    await reopened.mark_delivered([(q.seq, None) for q in claimed[:2]])
    await reopened.refresh_gauges()
    count, size, _ = counted(db)
    assert (reopened.depth, reopened._bytes) == (count, size) and count == 4
    await reopened.close()


async def test_gauge_refresh_reads_no_table_whole(tmp_path: Path) -> None:
    """Every 5 s on the thread that acknowledges input: it must not scan the queue."""
    queue = await open_queue(tmp_path)
    await queue.append([metric(i) for i in range(50)])
    statements: list[str] = []
    queue.conn.set_trace_callback(statements.append)
    await queue.refresh_gauges()
    queue.conn.set_trace_callback(None)
    assert statements
    for sql in statements:
        plan = " ".join(str(row[-1]) for row in queue.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN" not in plan, f"{sql!r} scans: {plan}"
    await queue.close()


async def test_history_expires_in_small_transactions_and_only_what_is_old(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db", history_seconds=3600)
    for i in range(7):
        await queue.append([event(i)], delivery=("github", f"d-{i}"))
    batch = []
    while claimed := await queue.claim(POLICY):
        batch += claimed
        await queue.mark_delivered([(q.seq, None) for q in claimed])
    assert len(batch) == 7
    old = [q.record.id for q in batch[:5]]
    conn = sqlite3.connect(tmp_path / "q.db")  # age five of them past the history
    conn.executemany("UPDATE delivered SET delivered_at = delivered_at - 7200 WHERE id = ?", [(i,) for i in old])
    conn.executemany("UPDATE deliveries SET seen_at = seen_at - 7200 WHERE delivery_id = ?",
                     [(f"d-{i}",) for i in range(5)])
    conn.commit()
    conn.close()
    statements: list[str] = []
    queue.conn.set_trace_callback(statements.append)
    assert await queue.prune_history(chunk=2) == 10
    queue.conn.set_trace_callback(None)
    assert statements.count("COMMIT") >= 3  # 5 + 5 rows, at most 2 per table per transaction
    assert (await queue.append([event(0)])).new_ids  # forgotten: the same input is new again
    assert (await queue.append([event(6)])).duplicate_ids  # still remembered
    assert (await queue.append([event(99)], delivery=("github", "d-6"))).duplicate_delivery
    assert not (await queue.append([event(98)], delivery=("github", "d-1"))).duplicate_delivery
    await queue.close()


async def test_dlq_replay_and_purge_move_in_small_transactions(tmp_path: Path) -> None:
    """An operator's replay of many dead letters must not hold the running bridge's write lock."""
    queue = await open_queue(tmp_path)
    await queue.dead_letter_input([event(i) for i in range(5)], reason="unresolved_entity", detail="x")
    await queue.dead_letter_input([event(i) for i in range(10, 13)], reason="rejected", detail="x")
    conn = files.open_file(tmp_path / "q.db", write=True)
    commits: list[str] = []
    conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    assert dead_letters.replay(conn, reason="unresolved_entity", chunk=2) == 5
    assert len(commits) == 3
    commits.clear()
    assert dead_letters.purge(conn, chunk=2) == 3
    assert len(commits) == 2
    assert inspect.stats(conn)["dead_letters"] == 0
    conn.close()
    assert (await queue.stats())["undelivered"] == 5
    await queue.close()


async def test_records_put_back_wake_the_sender_at_once(tmp_path: Path) -> None:
    # An idle worker waits up to 5 s for work; a reschedule must wake it, not leave the records
    # waiting for that timeout.
    queue = await open_queue(tmp_path)
    woken: list[int] = []
    queue.on_ready(lambda: woken.append(1))
    await queue.append([event(1)])
    before = len(woken)
    [claimed] = await queue.claim(POLICY)
    await queue.reschedule([claimed.seq], next_attempt_at=0, error="rate limited (429)", count_attempt=False)
    assert len(woken) == before + 1
    await queue.close()


def documented_rollback_sql() -> str:
    """The SQL docs/operations.md gives for a rollback to a release before schema version 4."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    block = text.split('sqlite3 /var/lib/cortex-bridge/queue.db "', 1)[1].split('"\n', 1)[0]
    return block


async def test_the_documented_rollback_gives_a_version_3_file_whose_triggers_count_right(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = await open_queue(tmp_path)
    await queue.append([metric(i) for i in range(5)])
    await queue.close()
    conn = sqlite3.connect(db)
    conn.executescript(documented_rollback_sql())
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    # what a version-3 release does: plain statements, its triggers counting
    conn.execute("INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at, next_attempt_at)"
                 " VALUES ('old-release', 'event', 'event\x1fsvc', 't', '{}', 2, 1, 1, 1)")
    conn.execute("DELETE FROM records WHERE seq = (SELECT MIN(seq) FROM records)")
    conn.commit()
    totals = conn.execute("SELECT records, record_bytes FROM totals").fetchone()
    conn.close()
    assert totals == counted(db)[:2] and totals[0] == 5
    upgraded = await open_queue(tmp_path)  # and this release takes it back
    await upgraded.append([metric(10)])
    await upgraded.refresh_gauges()
    assert (upgraded.depth, upgraded._bytes) == counted(db)[:2]
    await upgraded.close()
