"""Rows into and out of ``records``, counted in the ``totals`` row by the statement that moves them.

Depth and bytes (``totals``) must be exact in the same transaction as every change, whichever
process makes it (an operator's ``dlq replay`` uses these functions too). Up to schema version 3
a trigger updated the totals row once per inserted or deleted record: ~20 µs of CPU per record
on the thread that acknowledges input, measured in isolation (docs/benchmarks.md). One update per
statement keeps the same numbers for a fraction of that. Every INSERT into and DELETE from
``records`` on SQLite goes through here; the test of totals exercises each path that does one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.queue.rows import QueuedRow

_INSERT = ("INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at, next_attempt_at)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: ids per ``IN (...)`` (SQLite's default limit of bound parameters is far above this)
_CHUNK = 300


def insert_records(conn: sqlite3.Connection, rows: Sequence[QueuedRow], *, skip_present: bool = False) -> list[QueuedRow]:
    """Insert ``rows`` and count them; returns the rows inserted.

    ``skip_present``: rows whose id is queued already (or repeated within ``rows``) are left out,
    as ``INSERT OR IGNORE`` would; without it the caller knows them to be new, and a row that is
    not fails the statement (and so the caller's transaction) instead of being miscounted.
    """
    if skip_present:
        present = queued_ids(conn, [row[0] for row in rows])
        fresh: list[QueuedRow] = []
        for row in rows:
            if row[0] not in present:
                present.add(row[0])
                fresh.append(row)
        rows = fresh
    if rows:
        conn.executemany(_INSERT, rows)
        conn.execute("UPDATE totals SET records = records + ?, record_bytes = record_bytes + ?",
                     (len(rows), sum(row[5] for row in rows)))
    return list(rows)


class RecordDeletions:
    """``with RecordDeletions(conn) as deletions:`` inside a transaction: records deleted one by one,
    uncounted from the totals with one update when the block ends without an error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.count = 0
        self.size = 0

    def __enter__(self) -> RecordDeletions:
        return self

    def delete(self, seq: int) -> bool:
        """Delete the record ``seq``; whether it was there."""
        row = self.conn.execute("DELETE FROM records WHERE seq = ? RETURNING size", (seq,)).fetchall()
        if not row:
            return False
        self.count += 1
        self.size += int(row[0][0])
        return True

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None and self.count:
            self.conn.execute("UPDATE totals SET records = records - ?, record_bytes = record_bytes - ?",
                              (self.count, self.size))


def queued_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are in ``records``."""
    found: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        found.update(r[0] for r in conn.execute(f"SELECT id FROM records WHERE id IN ({marks})", chunk))
    return found
