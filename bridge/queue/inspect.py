"""Read-only inspection of a queue: stats, dead letters (list, show), where a record stands (trace).

Each function reads one connection and writes nothing: the running queue's own (``stats``,
gauges) or an operator's, opened read-only by :func:`~bridge.queue.files.open_file` (re-exported
here, since reading a file starts with it). The statements are written once, in SQL that SQLite
and PostgreSQL both run: a PostgreSQL operator passes a :class:`Reader` that turns the ``?``
placeholders into psycopg's (bridge/queue/postgres/operator.py). Changing the dead-letter set
(replay, purge) is :mod:`bridge.queue.dead_letters`. Times are ISO 8601 in UTC (what an operator reads and compares
with log lines), durations are seconds. A READY record parked after a 404 shows as ``parked``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.queue.files import open_file
from bridge.queue.schema import State, is_parked, parked_clause, totals
from bridge.records import format_timestamp

__all__ = ["Reader", "count_totals", "dlq_list", "dlq_show", "oldest_age", "oldest_record", "open_file",
           "recent_deliveries", "stats", "trace"]


class Rows(Protocol):
    """What a statement returns: rows to fetch or iterate (a DB-API cursor)."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """The remaining rows."""

    def __iter__(self) -> Any:
        """The remaining rows, one by one."""


class Reader(Protocol):
    """A connection that runs a statement with ``?`` placeholders (a ``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows:
        """Run ``sql`` with ``parameters``."""


def _totals(conn: sqlite3.Connection) -> tuple[int, int, int]:
    # Read-only: a version-1 file has no `totals` table yet (the daemon adds it), so count.
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone() is not None:
        return totals(conn)
    return count_totals(conn)


def count_totals(conn: Reader) -> tuple[int, int, int]:
    """(undelivered records, their bytes, dead letters), counted from the tables."""
    count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
    return int(count), int(size), int(conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0])


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as stored in the queue, as ISO 8601 UTC (None stays None)."""
    return None if epoch is None else format_timestamp(datetime.fromtimestamp(epoch, UTC))


def state_name(state: int, last_error: str | None, next_attempt_at: float, now: float) -> str:
    """How ``queue stats`` and ``trace`` name where a record stands: a state, or ``parked``."""
    return "parked" if is_parked(state, last_error, next_attempt_at, now) else State(state).name.lower()


def oldest_age(conn: Reader) -> float:
    """Seconds since the oldest undelivered record was received (0 when empty)."""
    head = conn.execute("SELECT received_at FROM records WHERE seq = (SELECT MIN(seq) FROM records)").fetchone()
    return round(time.time() - head[0], 3) if head else 0.0


def parked_count(now: float) -> tuple[str, list[object]]:
    """The statement (and its parameters) that counts the records parked after a 404 at ``now``."""
    where, params = parked_clause(now)
    return f"SELECT COUNT(*) FROM records WHERE {where}", params


def count_parked_apart(by_state: dict[str, int], parked: int) -> None:
    """Move ``parked`` of the ``ready`` records in ``by_state`` (counts by state name) to ``parked``."""
    if parked:
        by_state["ready"] -= parked
        by_state["parked"] = parked


def stats(conn: Reader, counts: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Depth, bytes, oldest age, records by state and kind, dead letters by reason, history size.

    ``counts``: (records, bytes, dead letters) when the caller has them; by default a SQLite
    connection's totals row.
    """
    if counts is None:
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError("stats: give the counts with a connection that is not SQLite's")
        counts = _totals(conn)
    count, size, dead = counts
    by_state = {State(s).name.lower(): n for s, n in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}
    sql, params = parked_count(time.time())
    count_parked_apart(by_state, conn.execute(sql, params).fetchone()[0])
    by_kind = dict(conn.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind").fetchall())
    dead_by_reason = dict(conn.execute("SELECT reason, COUNT(*) FROM dead GROUP BY reason").fetchall())
    delivered = conn.execute("SELECT COUNT(*) FROM delivered").fetchone()[0]
    return {
        "undelivered": count,
        "undelivered_bytes": size,
        "oldest_age_seconds": oldest_age(conn),
        "by_state": by_state,
        "by_kind": by_kind,
        "dead_letters": dead,
        "dead_by_reason": dead_by_reason,
        "delivered_history": delivered,
    }


def dlq_list(conn: Reader, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
    """The newest dead letters (optionally of one ``reason``), without their bodies."""
    sql = "SELECT id, kind, source, reason, status, detail, dead_at, attempts FROM dead"
    params: list[Any] = []
    if reason:
        sql += " WHERE reason = ?"
        params.append(reason)
    sql += " ORDER BY dead_at DESC LIMIT ?"
    params.append(limit)
    return [_dead_entry(row) for row in conn.execute(sql, params)]


def _dead_entry(row: tuple[Any, ...]) -> dict[str, Any]:
    cols = ("id", "kind", "source", "reason", "status", "detail", "dead_at", "attempts")
    out = dict(zip(cols, row, strict=True))
    out["dead_at"] = iso_time(out["dead_at"])
    return out


def dlq_show(conn: Reader, record_id: str) -> dict[str, Any] | None:
    """One dead letter with what it holds (``record``), or None."""
    row = conn.execute(
        "SELECT id, kind, source, reason, status, detail, dead_at, attempts, body FROM dead WHERE id = ?",
        (record_id,),
    ).fetchone()
    if row is None:
        return None
    out = _dead_entry(row[:-1])
    try:
        out["record"] = json.loads(row[-1])
    except ValueError:  # an ``unreadable`` dead letter: show what is stored as it is
        out["record"] = row[-1]
    return out


def trace(conn: Reader, ident: str) -> list[dict[str, Any]]:
    """Where a record (by record id) or a whole delivery (by delivery id) stands."""
    ids = [ident]
    now = time.time()
    out: list[dict[str, Any]] = []
    for source, delivery_id, seen_at, record_ids in conn.execute(
        "SELECT source, delivery_id, seen_at, record_ids FROM deliveries WHERE delivery_id = ?", (ident,)
    ):
        out.append({"delivery_id": delivery_id, "source": source, "received_at": iso_time(seen_at),
                    "record_ids": json.loads(record_ids)})
        ids = json.loads(record_ids)
    for rid in ids:
        row = conn.execute(
            "SELECT kind, source, state, attempts, last_error, received_at, next_attempt_at FROM records WHERE id = ?",
            (rid,),
        ).fetchone()
        if row:
            out.append({"id": rid, "status": "queued", "kind": row[0], "source": row[1],
                        "state": state_name(row[2], row[4], row[6], now), "attempts": row[3],
                        "last_error": row[4], "received_at": iso_time(row[5]),
                        "next_attempt_at": iso_time(row[6])})
            continue
        row = conn.execute(
            "SELECT kind, entity, source, cortex_uuid, received_at, delivered_at, how FROM delivered WHERE id = ?",
            (rid,),
        ).fetchone()
        if row:
            out.append({"id": rid, "status": "delivered", "kind": row[0], "entity": row[1], "source": row[2],
                        "cortex_uuid": row[3], "received_at": iso_time(row[4]), "delivered_at": iso_time(row[5]),
                        "how": row[6]})
            continue
        row = conn.execute("SELECT kind, source, reason, status, detail, dead_at FROM dead WHERE id = ?",
                           (rid,)).fetchone()
        if row:
            out.append({"id": rid, "status": "dead_letter", "kind": row[0], "source": row[1], "reason": row[2],
                        "cortex_status": row[3], "detail": row[4], "dead_at": iso_time(row[5])})
            continue
        if rid != ident or not out:
            out.append({"id": rid, "status": "unknown"})
    return out


def oldest_record(conn: Reader) -> dict[str, Any] | None:
    """The undelivered record that has waited longest, and what it waits for, or None."""
    row = conn.execute(
        "SELECT id, kind, source, state, attempts, last_error, received_at, next_attempt_at, body FROM records"
        " WHERE seq = (SELECT MIN(seq) FROM records)").fetchone()
    if row is None:
        return None
    now = time.time()
    try:
        entity = json.loads(row[8]).get("entity")
    except (ValueError, AttributeError):
        entity = None
    return {"id": row[0], "kind": row[1], "source": row[2], "entity": entity,
            "state": state_name(row[3], row[5], row[7], now), "attempts": row[4], "last_error": row[5],
            "received_at": iso_time(row[6]), "age_seconds": round(now - row[6], 3),
            "next_attempt_at": iso_time(row[7]), "due_in_seconds": round(max(0.0, row[7] - now), 3)}


def recent_deliveries(conn: Reader, since: float) -> dict[str, int]:
    """Records delivered at or after ``since`` (epoch seconds), counted by entity."""
    rows = conn.execute("SELECT entity, COUNT(*) FROM delivered WHERE delivered_at >= ? GROUP BY entity", (since,))
    return {str(entity): int(n) for entity, n in rows}
