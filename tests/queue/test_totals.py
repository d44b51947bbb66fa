"""The totals row against a count, through any mix of inserts (repeats included) and deletes.

Since schema version 4 the statements that move records count them (bridge/queue/totals.py)
instead of a trigger per row; whatever the sequence, the totals must equal COUNT(*) / SUM(size).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.queue.rows import QueuedRow
from bridge.queue.schema import connect, totals, transaction
from bridge.queue.totals import RecordDeletions, insert_records

#: (id, body) of a row; a small alphabet of ids makes repeats, within a batch and across batches
ROWS = st.lists(st.tuples(st.sampled_from("abcdefgh"), st.text(max_size=30)), max_size=12)
STEPS = st.lists(st.one_of(st.tuples(st.just("insert"), ROWS),
                           st.tuples(st.just("delete"), st.lists(st.integers(1, 40), max_size=6)),
                           st.tuples(st.just("fail"), ROWS)), max_size=12)


def row(rid: str, body: str) -> QueuedRow:
    return (rid, "event", f"event\x1f{rid}", "test", body, len(body.encode()), 1.0, 2.0, 2.0)


def counted(conn: sqlite3.Connection) -> tuple[int, int]:
    count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
    return int(count), int(size)


@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_totals_equal_a_count_after_any_inserts_and_deletes(steps: list[tuple[str, list[Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(str(Path(tmp) / "q.db"))
        for what, args in steps:
            if what == "insert":
                with transaction(conn):
                    insert_records(conn, [row(rid, body) for rid, body in args], skip_present=True)
            elif what == "delete":
                with transaction(conn), RecordDeletions(conn) as deletions:
                    for seq in args:
                        deletions.delete(seq)
            else:  # a transaction that fails after its insert: nothing of it stays, counts included
                with pytest.raises(RuntimeError), transaction(conn):
                    insert_records(conn, [row(rid, body) for rid, body in args], skip_present=True)
                    raise RuntimeError("the rest of the transaction failed")
            assert totals(conn)[:2] == counted(conn)
        conn.close()


def test_rows_known_to_be_new_that_are_not_fail_the_transaction(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "q.db"))
    with transaction(conn):
        assert insert_records(conn, [row("a", "x")]) == [row("a", "x")]
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        insert_records(conn, [row("b", "y"), row("a", "again")])
    assert totals(conn)[:2] == counted(conn) == (1, 1)
    with transaction(conn):
        assert insert_records(conn, [row("a", "again"), row("c", "zz"), row("c", "z")], skip_present=True) == [
            row("c", "zz")]
    assert totals(conn)[:2] == counted(conn) == (2, 3)
    conn.close()
