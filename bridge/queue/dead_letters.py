"""The dead-letter set: the one module that writes the ``dead`` table.

Records the sender gave up on, records that can never be sent, inputs that produced no record
(:class:`~bridge.queue.poison.RawInput`) and stored rows that no longer read back all land here,
with their reason. An operator's ``dlq replay`` moves record entries back to the queue and
``dlq purge`` deletes entries for good (:func:`replay`, :func:`purge`, on a connection of their own
from another process).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge import metrics
from bridge.queue.appends import known_ids
from bridge.queue.core import QueueCore
from bridge.queue.poison import POISON_LANE, RAW_INPUT_KIND, RawInput
from bridge.queue.schema import column_text, transaction
from bridge.queue.totals import RecordDeletions, insert_records
from bridge.records import Record, encode_record, lane_of

#: Dead-letter reason of a stored row that does not read back as a record.
UNREADABLE = "unreadable"
#: Longest ``detail`` kept with a dead letter.
MAX_DETAIL = 4000
#: Dead letters that are records; the others (e.g. Kafka poison messages, kind ``raw_input``)
#: hold an input that never became a record and cannot be sent: re-publish it instead.
REPLAYABLE_KINDS = ("deploy", "event", "metric", "custom_data", "dependency", "docs")
#: Rows moved or deleted per transaction by ``dlq replay``/``purge``: a running bridge waits for
#: the write lock between them, not for the whole operation (its appends would time out).
DLQ_CHUNK = 1000


@dataclass(frozen=True)
class Unreadable:
    """A stored row that no longer reads back as a record; it was moved to the dead-letter set."""

    id: str
    kind: str
    source: str
    detail: str


class DeadLetters(QueueCore):
    """Writing the dead-letter set from the running queue."""

    async def dead_letter(self, seqs: Sequence[int], *, reason: str, detail: str, status: int | None) -> None:
        """Move records to the dead-letter set: they will not be retried unless replayed."""
        await self._run(self._dead_sync, list(seqs), reason, detail, status)

    def _dead_sync(self, seqs: list[int], reason: str, detail: str, status: int | None) -> None:
        with transaction(self.conn):
            move_to_dead(self.conn, seqs, reason, detail, status)
        self._recount_sync()

    async def dead_letter_input(
        self, records: Sequence[Record], *, reason: str, detail: str
    ) -> None:
        """Keep records that can never be sent (e.g. unresolvable entity) straight in the dead-letter set.

        One transaction, never through the ready queue, so the sender cannot pick them up.
        Raises :class:`~bridge.records.UnstorableRecord` or :class:`QueueUnavailable`.
        """
        bodies = [encode_record(record) for record in records]  # raises UnstorableRecord
        stored = await self._run(self._dead_input_sync, list(zip(records, bodies, strict=True)), reason, detail)
        for record in stored:
            metrics.RECORDS_DEAD_LETTERED.labels(record.provenance.source, record.kind, reason).inc()

    def _dead_input_sync(self, records: list[tuple[Record, str]], reason: str, detail: str) -> list[Record]:
        conn = self.conn
        now = time.time()
        stored = []
        with transaction(conn):
            known = known_ids(conn, [r.id for r, _ in records])
            for record, body in records:
                if record.id in known:
                    continue
                conn.execute(
                    "INSERT INTO dead (id, kind, lane, source, body, size, received_at, attempts, reason, detail,"
                    " status, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, ?)",
                    (record.id, record.kind, lane_of(record), record.provenance.source, body, len(body),
                     record.provenance.received_at.timestamp(), column_text(reason, MAX_DETAIL),
                     column_text(detail, MAX_DETAIL), now),
                )
                known.add(record.id)
                stored.append(record)
        return stored

    async def dead_letter_raw(self, inputs: Sequence[RawInput]) -> list[str]:
        """Store ``inputs`` in the dead-letter set durably (one transaction); return their entry ids.

        An entry that is already there (the same input redelivered) is kept as it was.
        Raises :class:`QueueUnavailable` when the database cannot be written.
        """
        now = time.time()
        rows = []
        for item in inputs:
            body = item.body()
            rows.append((item.id, RAW_INPUT_KIND, POISON_LANE, item.source, body, len(body), item.received_at, 0,
                         column_text(item.reason, MAX_DETAIL), column_text(item.detail, MAX_DETAIL), None, now))
        if rows:
            await self._run(self._dead_raw_sync, rows)
        return [row[0] for row in rows]

    def _dead_raw_sync(self, rows: list[tuple[Any, ...]]) -> None:
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO dead (id, kind, lane, source, body, size, received_at, attempts,"
                " reason, detail, status, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self._recount_sync()

    async def dead_counts_by_kind(self) -> dict[str, int]:
        """How many dead letters there are of each kind (``raw_input`` for inputs that were no record)."""
        return await self._run(self._dead_counts_sync)

    def _dead_counts_sync(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT kind, COUNT(*) FROM dead GROUP BY kind")
        return {str(kind): int(n) for kind, n in rows}


def move_to_dead(
    conn: sqlite3.Connection, seqs: list[int], reason: str, detail: str, status: int | None
) -> list[tuple[str, str, str]]:
    """Move records to ``dead`` (inside the caller's transaction); returns (id, kind, source) of each."""
    now = time.time()
    moved: list[tuple[str, str, str]] = []
    with RecordDeletions(conn) as deletions:
        for seq in seqs:
            row = conn.execute(
                "SELECT id, kind, lane, source, body, size, received_at, attempts FROM records WHERE seq = ?",
                (seq,),
            ).fetchone()
            if row is None:
                continue
            conn.execute(
                "INSERT OR REPLACE INTO dead (id, kind, lane, source, body, size, received_at, attempts,"
                " reason, detail, status, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, column_text(reason, MAX_DETAIL), column_text(detail, MAX_DETAIL), status, now),
            )
            deletions.delete(seq)
            moved.append((str(row[0]), str(row[1]), str(row[3])))
    return moved


# -- operator commands (another process, its own connection) ---------------------------------


def dead_selection(ids: list[str] | None, reason: str | None) -> tuple[str, list[Any]]:
    """The `` WHERE ...`` (and its parameters) on ``dead`` that an operator's ids and ``--reason`` select."""
    where, params = [], []
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def replayable_selection(ids: list[str] | None, reason: str | None) -> tuple[str, list[Any]]:
    """:func:`dead_selection` narrowed to the dead letters that are records (``dlq replay``)."""
    where, params = dead_selection(ids, reason)
    kinds = f"kind IN ({','.join('?' * len(REPLAYABLE_KINDS))})"
    return (f"{where} AND {kinds}" if where else f" WHERE {kinds}"), [*params, *REPLAYABLE_KINDS]


def replay(conn: sqlite3.Connection, *, ids: list[str] | None = None, reason: str | None = None,
           chunk: int = DLQ_CHUNK) -> int:
    """Move dead letters back to the queue as fresh records (attempts reset); returns how many."""
    where, params = replayable_selection(ids, reason)
    moved = 0
    while True:
        now = time.time()
        with transaction(conn):
            rows = conn.execute(
                f"SELECT id, kind, lane, source, body, size, received_at FROM dead{where} LIMIT ?", [*params, chunk]
            ).fetchall()
            # one already queued again (by its source) stays as it is: the dead letter goes
            insert_records(conn, [(*row, now, now) for row in rows], skip_present=True)
            conn.executemany("DELETE FROM dead WHERE id = ?", [(row[0],) for row in rows])
        moved += len(rows)
        if len(rows) < chunk:
            return moved


def purge(conn: sqlite3.Connection, *, ids: list[str] | None = None, reason: str | None = None,
          chunk: int = DLQ_CHUNK) -> int:
    """Delete dead letters for good; returns how many."""
    where, params = dead_selection(ids, reason)
    deleted = 0
    while True:
        with transaction(conn):
            n = conn.execute(f"DELETE FROM dead WHERE id IN (SELECT id FROM dead{where} LIMIT ?)",
                             [*params, chunk]).rowcount
        deleted += n
        if n < chunk:
            return deleted
