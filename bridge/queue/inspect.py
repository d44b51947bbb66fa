"""Operator access to a queue file from another process (``queue stats``, ``dlq``, ``trace``).

Read-only commands open the file with SQLite's ``mode=ro``; every command refuses a file that is
not a bridge queue. Safe while the daemon runs: SQLite serializes writers, reads see committed data only, and
nothing here touches records that are being sent (replay only moves dead letters back).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from bridge.queue.schema import (
    NotAQueue,
    State,
    check_is_queue,
    connect,
    connect_readonly,
    totals,
    transaction,
)


class QueueFileMissing(Exception):
    """No queue database at the given path."""


__all__ = ["NotAQueue", "QueueFileMissing", "open_file"]


def open_file(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """Open a queue file for an operator command; raises :class:`QueueFileMissing`, :class:`NotAQueue`.

    Read-only (SQLite ``mode=ro``) unless ``write``: inspecting never creates tables, changes the
    journal mode or writes anything, and a file that is not a bridge queue is refused untouched
    (a write command checks it read-only first, then opens it for writing).
    """
    if not path.is_file():
        raise QueueFileMissing(f"no queue database at {path}")
    conn = connect_readonly(str(path))
    try:
        check_is_queue(conn, str(path))
    except BaseException:
        conn.close()
        raise
    if not write:
        return conn
    conn.close()
    return connect(str(path))


def _totals(conn: sqlite3.Connection) -> tuple[int, int, int]:
    # Read-only: a version-1 file has no `totals` table yet (the daemon adds it), so count.
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone() is not None:
        return totals(conn)
    count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
    return int(count), int(size), int(conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0])


def oldest_age(conn: sqlite3.Connection) -> float:
    """Seconds since the oldest undelivered record was received (0 when empty)."""
    head = conn.execute("SELECT received_at FROM records WHERE seq = (SELECT MIN(seq) FROM records)").fetchone()
    return round(time.time() - head[0], 3) if head else 0.0


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    count, size, dead = _totals(conn)
    by_state = {State(s).name.lower(): n for s, n in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}
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


def dlq_list(conn: sqlite3.Connection, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, kind, source, reason, status, detail, dead_at, attempts FROM dead"
    params: list[Any] = []
    if reason:
        sql += " WHERE reason = ?"
        params.append(reason)
    sql += " ORDER BY dead_at DESC LIMIT ?"
    params.append(limit)
    cols = ("id", "kind", "source", "reason", "status", "detail", "dead_at", "attempts")
    return [dict(zip(cols, row, strict=True)) for row in conn.execute(sql, params)]


def dlq_show(conn: sqlite3.Connection, record_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, kind, source, reason, status, detail, dead_at, attempts, body FROM dead WHERE id = ?",
        (record_id,),
    ).fetchone()
    if row is None:
        return None
    cols = ("id", "kind", "source", "reason", "status", "detail", "dead_at", "attempts")
    out: dict[str, Any] = dict(zip(cols, row[:-1], strict=True))
    try:
        out["record"] = json.loads(row[-1])
    except ValueError:  # an ``unreadable`` dead letter: show what is stored as it is
        out["record"] = row[-1]
    return out


def _select_dead(ids: list[str] | None, reason: str | None) -> tuple[str, list[Any]]:
    where, params = [], []
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    return (" WHERE " + " AND ".join(where) if where else ""), params


#: Dead letters that are records; the others (e.g. Kafka poison messages, kind ``raw_input``)
#: hold an input that never became a record and cannot be sent: re-publish it instead.
REPLAYABLE_KINDS = ("deploy", "event", "metric", "custom_data")


#: Rows moved or deleted per transaction by ``dlq replay``/``purge``: a running bridge waits for
#: the write lock between them, not for the whole operation (its appends would time out).
DLQ_CHUNK = 1000


def dlq_replay(conn: sqlite3.Connection, *, ids: list[str] | None = None, reason: str | None = None,
               chunk: int = DLQ_CHUNK) -> int:
    """Move dead letters back to the queue as fresh records (attempts reset); returns how many."""
    where, params = _select_dead(ids, reason)
    kinds = f"kind IN ({','.join('?' * len(REPLAYABLE_KINDS))})"
    where = f"{where} AND {kinds}" if where else f" WHERE {kinds}"
    params = [*params, *REPLAYABLE_KINDS]
    moved = 0
    while True:
        now = time.time()
        with transaction(conn):
            rows = conn.execute(
                f"SELECT id, kind, lane, source, body, size, received_at FROM dead{where} LIMIT ?", [*params, chunk]
            ).fetchall()
            conn.executemany(
                "INSERT OR IGNORE INTO records (id, kind, lane, source, body, size, received_at, enqueued_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row, now, now) for row in rows],
            )
            conn.executemany("DELETE FROM dead WHERE id = ?", [(row[0],) for row in rows])
        moved += len(rows)
        if len(rows) < chunk:
            return moved


def dlq_purge(conn: sqlite3.Connection, *, ids: list[str] | None = None, reason: str | None = None,
              chunk: int = DLQ_CHUNK) -> int:
    """Delete dead letters for good; returns how many."""
    where, params = _select_dead(ids, reason)
    deleted = 0
    while True:
        with transaction(conn):
            n = conn.execute(f"DELETE FROM dead WHERE id IN (SELECT id FROM dead{where} LIMIT ?)",
                             [*params, chunk]).rowcount
        deleted += n
        if n < chunk:
            return deleted


def trace(conn: sqlite3.Connection, ident: str) -> list[dict[str, Any]]:
    """Where a record (by record id) or a whole delivery (by delivery id) stands."""
    ids = [ident]
    out: list[dict[str, Any]] = []
    for source, delivery_id, seen_at, record_ids in conn.execute(
        "SELECT source, delivery_id, seen_at, record_ids FROM deliveries WHERE delivery_id = ?", (ident,)
    ):
        out.append({"delivery_id": delivery_id, "source": source, "received_at": seen_at,
                    "record_ids": json.loads(record_ids)})
        ids = json.loads(record_ids)
    for rid in ids:
        row = conn.execute(
            "SELECT kind, source, state, attempts, last_error, received_at, next_attempt_at FROM records WHERE id = ?",
            (rid,),
        ).fetchone()
        if row:
            out.append({"id": rid, "status": "queued", "kind": row[0], "source": row[1],
                        "state": State(row[2]).name.lower(), "attempts": row[3], "last_error": row[4],
                        "received_at": row[5], "next_attempt_at": row[6]})
            continue
        row = conn.execute(
            "SELECT kind, entity, source, cortex_uuid, received_at, delivered_at, how FROM delivered WHERE id = ?",
            (rid,),
        ).fetchone()
        if row:
            out.append({"id": rid, "status": "delivered", "kind": row[0], "entity": row[1], "source": row[2],
                        "cortex_uuid": row[3], "received_at": row[4], "delivered_at": row[5], "how": row[6]})
            continue
        row = conn.execute("SELECT kind, source, reason, status, detail, dead_at FROM dead WHERE id = ?",
                           (rid,)).fetchone()
        if row:
            out.append({"id": rid, "status": "dead_letter", "kind": row[0], "source": row[1], "reason": row[2],
                        "cortex_status": row[3], "detail": row[4], "dead_at": row[5]})
            continue
        if rid != ident or not out:
            out.append({"id": rid, "status": "unknown"})
    return out
