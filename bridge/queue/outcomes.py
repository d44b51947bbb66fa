"""Settling outcomes: what Cortex stored is history, what failed goes back, what is unknown waits.

A delivered record leaves ``records`` for ``delivered`` (and, for a metric, ``delivered_points``,
which reconciliation counts); a failed one is put back READY with its attempt counted (a 404 one
*parked*: its ``last_error`` starts with :data:`PARKED_PREFIX`); one whose request may or may not
have reached Cortex becomes AMBIGUOUS until it is read back. :func:`retry_now` (``cortex-bridge
queue retry``) makes waiting READY records due at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from bridge.queue.core import QueueCore
from bridge.queue.schema import PARKED_PREFIX, State, column_text, parked_clause, transaction, waiting_clause
from bridge.queue.totals import RecordDeletions
from bridge.records import parse_timestamp

#: Longest ``last_error`` kept with a record.
MAX_ERROR = 1000
#: Records released per transaction by :func:`retry_now`: a running bridge waits for the write
#: lock between them, not for the whole operation.
RETRY_CHUNK = 1000


class Outcomes(QueueCore):
    """Settling claimed records: delivered, rescheduled or ambiguous."""

    async def mark_delivered(self, items: Iterable[tuple[int, str | None]], *, how: str = "sent") -> None:
        """Records (by seq) that Cortex stored, with the uuid it returned where there is one."""
        await self._run(self._delivered_sync, list(items), how)

    def _delivered_sync(self, items: list[tuple[int, str | None]], how: str) -> None:
        conn = self.conn
        now = time.time()
        with transaction(conn), RecordDeletions(conn) as deletions:
            for seq, cortex_uuid in items:
                row = conn.execute(
                    "SELECT id, kind, lane, body, source, received_at FROM records WHERE seq = ?", (seq,)
                ).fetchone()
                if row is None:
                    continue
                rid, kind, lane, body, source, received_at = row
                doc = json.loads(body)
                conn.execute(
                    "INSERT OR REPLACE INTO delivered (id, kind, entity, source, cortex_uuid, received_at,"
                    " delivered_at, how) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rid, kind, doc["entity"], source, cortex_uuid, received_at, now, how),
                )
                if kind == "metric":
                    # A point is only its (timestamp, value): reconciliation must know how many equal
                    # points of this lane Cortex already holds from the bridge.
                    conn.execute(
                        "INSERT OR REPLACE INTO delivered_points (id, lane, point, delivered_at) VALUES (?, ?, ?, ?)",
                        (rid, lane, point_key(doc["timestamp"], doc["value"]), now),
                    )
                deletions.delete(seq)
        self._recount_sync()

    async def delivered_points(self, lane: str, since: float) -> tuple[Counter[str], bool]:
        """How many points of each :func:`point_key` the bridge delivered on ``lane``.

        The flag says whether the lane has a request in flight or delivered anything at or
        after ``since`` (wall-clock): then a read-back taken since may be incomplete.
        """
        return await self._run(self._delivered_points_sync, lane, since)

    def _delivered_points_sync(self, lane: str, since: float) -> tuple[Counter[str], bool]:
        conn = self.conn
        counts: Counter[str] = Counter()
        moving = False
        for point, delivered_at in conn.execute(
            "SELECT point, delivered_at FROM delivered_points WHERE lane = ?", (lane,)
        ):
            counts[point] += 1
            moving = moving or delivered_at >= since
        in_flight = conn.execute(
            "SELECT 1 FROM records WHERE lane = ? AND state IN (?, ?) LIMIT 1", (lane, State.SENDING, State.CLAIMED)
        ).fetchone()
        return counts, moving or in_flight is not None

    async def reschedule(
        self, seqs: Sequence[int], *, next_attempt_at: float, error: str, count_attempt: bool,
        parked: bool = False,
    ) -> None:
        """Put records back to READY, due at ``next_attempt_at``; an idle worker is woken for them.

        ``parked``: Cortex answered 404, the records wait for an entity or metric key to exist
        (their error is kept under :data:`PARKED_PREFIX`).
        """
        error = PARKED_PREFIX + error if parked else error
        await self._run(self._reschedule_sync, list(seqs), next_attempt_at, error, count_attempt)
        self._notify_ready()

    async def retry_now(self, ids: Sequence[str] | None = None, *, parked: bool = False) -> int:
        """Make waiting READY records due now (see :func:`retry_now`); returns how many."""
        released = await self._run(retry_now, self.conn, list(ids) if ids else None, parked)
        self._notify_ready()
        return released

    def _reschedule_sync(self, seqs: list[int], due: float, error: str, count_attempt: bool) -> None:
        now = time.time()
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE records SET state = ?, next_attempt_at = ?, last_error = ?,"
                " attempts = attempts + ?, first_failure_at = COALESCE(first_failure_at, ?) WHERE seq = ?",
                [(State.READY, due, column_text(error, MAX_ERROR), 1 if count_attempt else 0,
                  now if count_attempt else None, s)
                 for s in seqs],
            )

    async def mark_ambiguous(self, seqs: Sequence[int], error: str) -> None:
        """The request for these records may or may not have been stored by Cortex.

        They are read back only after ``settle_seconds``: until then the request may still be
        alive at Cortex, and a read-back could miss what it is about to store.
        """
        await self._run(self._ambiguous_mark_sync, list(seqs), time.time() + self.settle_seconds, error)

    def _ambiguous_mark_sync(self, seqs: list[int], settle_until: float, error: str) -> None:
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE records SET state = ?, next_attempt_at = ?, last_error = ? WHERE seq = ?",
                [(State.AMBIGUOUS, settle_until, column_text(error, MAX_ERROR), s) for s in seqs],
            )


def retry_now(conn: sqlite3.Connection, ids: list[str] | None = None, parked: bool = False,
              chunk: int = RETRY_CHUNK) -> int:
    """Make READY records that wait for a later attempt due now; returns how many were released.

    All waiting ones, or only those with ``ids`` (record ids), or only the parked ones (404).
    Records being sent or waiting for a read-back are never touched: resending those could store
    a duplicate. Attempts and the first failure time are kept, so the max age still counts.
    Safe from another process while the bridge runs (its sender looks for due records at least
    every few seconds).
    """
    now = time.time()
    where, params = parked_clause(now) if parked else waiting_clause(now)
    if ids is not None:
        where += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    # Released rows are due at ``now`` and so leave the selection: each chunk finds new ones.
    select = f"SELECT seq FROM records WHERE {where} LIMIT ?"
    released = 0
    while True:
        with transaction(conn):
            n = conn.execute(f"UPDATE records SET next_attempt_at = ? WHERE seq IN ({select})",
                             [now, *params, chunk]).rowcount
        released += n
        if n < chunk:
            return released


def point_key(timestamp: Any, value: Any) -> str:
    """A metric point as Cortex keeps it: epoch milliseconds and value (what a read-back can match)."""
    return f"{round(parse_timestamp(timestamp).timestamp() * 1000)}|{float(value)!r}"
