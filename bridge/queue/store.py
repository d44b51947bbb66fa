"""The durable queue: SQLite in WAL mode with group commit.

Every database call runs on one dedicated thread with one connection, so SQLite never sees
concurrent writers and the event loop never blocks on disk. Producers call :meth:`DurableQueue.append`;
concurrent appends that arrive while a commit is running are written together in the next
transaction (one fsync for all of them), and each producer is released only after that
commit returned. That is what makes a 2xx mean "on disk" without one fsync per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from bridge import metrics
from bridge.queue import inspect
from bridge.queue.schema import State, connect, totals, transaction
from bridge.records import Record, describe_invalid, encode_record, lane_of, parse_timestamp, record_from_json

T = TypeVar("T")

log = structlog.get_logger("bridge.queue")


class QueueError(Exception):
    """Base class of queue refusals."""


class QueueFull(QueueError):
    """The queue holds its configured maximum of records or bytes; retry later."""


class QueueUnavailable(QueueError):
    """The queue cannot write to disk (full, read-only, I/O error); nothing was stored."""


@dataclass(frozen=True)
class AppendResult:
    """What an append stored."""

    new_ids: list[str]
    duplicate_ids: list[str]
    duplicate_delivery: bool = False


@dataclass(frozen=True)
class QueuedRecord:
    """An undelivered record as the sender sees it."""

    seq: int
    record: Record
    attempts: int
    first_failure_at: float | None
    enqueued_at: float


@dataclass(frozen=True)
class BatchPolicy:
    """How many records of one lane may share one claim, by record kind."""

    max_items: dict[str, int]
    max_bytes: dict[str, int] = field(default_factory=dict)
    #: kinds whose request is not idempotent: claimed as SENDING so a crash makes them ambiguous
    ambiguous_kinds: frozenset[str] = frozenset()
    #: kinds whose lane is not claimed while it holds an ambiguous record: their read-back matches
    #: by content (metric points), so nothing of the lane may be in flight while it is counted
    hold_ambiguous_lanes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Unreadable:
    """A stored row that no longer reads back as a record; it was moved to the dead-letter set."""

    id: str
    kind: str
    source: str
    detail: str


#: Dead-letter reason of a stored row that does not read back as a record.
UNREADABLE = "unreadable"


@dataclass
class _Submission:
    rows: Sequence[tuple[str, str, str, str, str, int, float]]
    delivery: tuple[str, str] | None
    state_updates: dict[str, str]
    future: asyncio.Future[AppendResult]


class DurableQueue:
    """SQLite-backed queue of records, dead letters and delivery history."""

    def __init__(
        self, path: Path, *, max_records: int, max_bytes: int, history_seconds: float, settle_seconds: float = 0.0
    ) -> None:
        self.path = path
        self.settle_seconds = settle_seconds
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.history_seconds = history_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Submission] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._count = 0
        self._bytes = 0
        self._reserved_count = 0
        self._reserved_bytes = 0
        self.writable = True
        self._ready_listeners: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_records: int = 1_000_000,
        max_bytes: int = 1 << 30,
        history_seconds: float = 7 * 86400,
        settle_seconds: float = 0.0,
    ) -> DurableQueue:
        """Open (creating if needed) and recover: work that was in flight at a crash is resolved.

        ``settle_seconds``: how long an ambiguous request may still be alive at Cortex; records
        found SENDING (a request may have been in flight at the crash) are read back only then.
        """
        queue = cls(path, max_records=max_records, max_bytes=max_bytes, history_seconds=history_seconds,
                    settle_seconds=settle_seconds)
        await queue._run(queue._open_sync)
        queue._writer = asyncio.create_task(queue._write_loop(), name="queue-writer")
        queue._publish_gauges()
        return queue

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = connect(str(self.path))
        except sqlite3.DatabaseError as exc:
            raise QueueUnavailable(f"cannot open queue database {self.path}: {exc}") from exc
        conn = self._conn
        with transaction(conn):
            # A record claimed for a non-idempotent request may have reached Cortex: read back first.
            conn.execute("UPDATE records SET state = ?, next_attempt_at = ? WHERE state = ?",
                         (State.AMBIGUOUS, time.time() + self.settle_seconds, State.SENDING))
            conn.execute("UPDATE records SET state = ? WHERE state = ?", (State.READY, State.CLAIMED))
        self._recount_sync()

    async def close(self) -> None:
        """Flush pending appends, then close the database."""
        if self._writer is not None:
            while self._pending:
                self._wakeup.set()
                await asyncio.sleep(0.005)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._conn is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a failed checkpoint loses nothing: the WAL is replayed on the next open
        self._conn.close()
        self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "queue is closed"
        return self._conn

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever records became ready (new or put back)."""
        self._ready_listeners.append(callback)

    def _notify_ready(self) -> None:
        for callback in self._ready_listeners:
            callback()

    # -- append (group commit) ---------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    @property
    def is_full(self) -> bool:
        return self._count >= self.max_records or self._bytes >= self.max_bytes

    async def append(
        self,
        records: Sequence[Record],
        *,
        delivery: tuple[str, str] | None = None,
        state_updates: dict[str, str] | None = None,
    ) -> AppendResult:
        """Make ``records`` durable; return only after the commit's fsync.

        ``delivery`` = (source, delivery id): if that delivery was seen before, nothing is stored
        and ``duplicate_delivery`` is set. ``state_updates`` are written in the same transaction
        (a source's "what I already emitted" memory stays consistent with what is queued).
        Raises :class:`QueueFull`, :class:`QueueUnavailable` or
        :class:`~bridge.records.UnstorableRecord` (a record that would not read back); in each
        case nothing is stored.
        """
        rows = []
        size = 0
        for record in records:
            body = encode_record(record)
            rows.append(
                (record.id, record.kind, lane_of(record), record.provenance.source, body, len(body),
                 record.provenance.received_at.timestamp())
            )
            size += len(body)
        if rows and (
            self._count + self._reserved_count + len(rows) > self.max_records
            or self._bytes + self._reserved_bytes + size > self.max_bytes
        ):
            metrics.QUEUE_FULL.set(1)
            raise QueueFull(f"queue is full ({self._count} records, {self._bytes} bytes)")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._reserved_count += len(rows)
        self._reserved_bytes += size
        self._pending.append(_Submission(rows, delivery, dict(state_updates or {}), future))
        self._wakeup.set()
        try:
            # A cancelled caller (client gone) cancels only its wait: the writer still stores the
            # rows and skips the cancelled future.
            return await future
        finally:
            self._reserved_count -= len(rows)
            self._reserved_bytes -= size

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await self._run(self._write_sync, batch)
            except sqlite3.Error as exc:
                self.writable = False
                metrics.QUEUE_WRITABLE.set(0)
                err = QueueUnavailable(f"queue cannot write to disk: {exc}")
                for sub in batch:
                    if not sub.future.done():
                        sub.future.set_exception(err)
                continue
            metrics.QUEUE_COMMIT_SECONDS.observe(time.perf_counter() - started)
            self.writable = True
            metrics.QUEUE_WRITABLE.set(1)
            any_new = False
            for sub, result in zip(batch, results, strict=True):
                any_new = any_new or bool(result.new_ids)
                if not sub.future.done():
                    sub.future.set_result(result)
            self._publish_gauges()
            if any_new:
                self._notify_ready()

    def _write_sync(self, batch: list[_Submission]) -> list[AppendResult]:
        # A handful of statements per group commit, not two per submission: measured ~110 -> ~75 us
        # per record with 64 concurrent appends (docs/benchmarks.md).
        conn = self.conn
        now = time.time()
        results: list[AppendResult | None] = [None] * len(batch)
        with transaction(conn):
            seen = _seen_deliveries(conn, [sub.delivery for sub in batch if sub.delivery is not None])
            deliveries = []
            admitted: list[tuple[int, _Submission]] = []
            for i, sub in enumerate(batch):
                if sub.delivery is not None:
                    if sub.delivery in seen:
                        results[i] = AppendResult([], [r[0] for r in sub.rows], duplicate_delivery=True)
                        continue
                    seen.add(sub.delivery)
                    deliveries.append((*sub.delivery, now, json.dumps([r[0] for r in sub.rows])))
                admitted.append((i, sub))
            known = _known_ids(conn, [r[0] for _, sub in admitted for r in sub.rows])
            fresh: list[tuple[str, str, str, str, str, int, float, float, float]] = []
            states: list[tuple[str, str, float]] = []
            for i, sub in admitted:
                new_ids, dup_ids = [], []
                for row in sub.rows:
                    if row[0] in known:
                        dup_ids.append(row[0])
                    else:
                        known.add(row[0])
                        new_ids.append(row[0])
                        fresh.append((*row, now, now))
                states.extend((key, value, now) for key, value in sub.state_updates.items())
                results[i] = AppendResult(new_ids, dup_ids)
            if deliveries:
                conn.executemany(
                    "INSERT INTO deliveries (source, delivery_id, seen_at, record_ids) VALUES (?, ?, ?, ?)", deliveries
                )
            if fresh:
                conn.executemany(
                    "INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at,"
                    " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
            if states:
                conn.executemany(
                    "INSERT INTO source_state (key, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    states,
                )
        self._recount_sync()
        return [r for r in results if r is not None]

    # -- sender side -------------------------------------------------------------------------

    async def claim(self, policy: BatchPolicy, now: float | None = None) -> list[QueuedRecord]:
        """Claim the oldest due lane's records, as many as ``policy`` allows for that kind.

        A row that does not read back as a record is dead-lettered (reason ``unreadable``) in the
        same transaction, so it can never hold up its batch-mates or the worker.
        """
        claimed, unreadable = await self._run(self._claim_sync, policy, time.time() if now is None else now)
        _count_unreadable(unreadable)
        return claimed

    def _claim_sync(self, policy: BatchPolicy, now: float) -> tuple[list[QueuedRecord], list[Unreadable]]:
        unreadable: list[Unreadable] = []
        with transaction(self.conn):
            while True:
                claimed = self._claim_lane(policy, now, unreadable)
                if claimed is None or claimed:
                    return claimed or [], unreadable

    def _claim_lane(
        self, policy: BatchPolicy, now: float, unreadable: list[Unreadable]
    ) -> list[QueuedRecord] | None:
        """One lane's claim; ``None`` when nothing is due, ``[]`` when all it had was unreadable."""
        conn = self.conn
        held = sorted(policy.hold_ambiguous_lanes)
        # Cheap when nothing is ambiguous: the subquery is a search of the (state, ...) index.
        hold = (f" AND lane NOT IN (SELECT lane FROM records WHERE state = ? AND kind IN ({','.join('?' * len(held))}))"
                if held else "")
        head = conn.execute(
            f"SELECT lane, kind FROM records WHERE state = ? AND next_attempt_at <= ?{hold}"
            " ORDER BY next_attempt_at, seq LIMIT 1",
            (State.READY, now, *((State.AMBIGUOUS, *held) if held else ())),
        ).fetchone()
        if head is None:
            return None
        lane, kind = head
        limit = policy.max_items.get(kind, 1)
        rows = conn.execute(
            "SELECT seq, body, attempts, first_failure_at, enqueued_at, size FROM records"
            " WHERE lane = ? AND state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
            (lane, State.READY, now, limit),
        ).fetchall()
        byte_cap = policy.max_bytes.get(kind)
        if byte_cap is not None:
            kept: list[Any] = []
            total = 0
            for row in rows:
                if kept and total + row[5] > byte_cap:
                    break
                kept.append(row)
                total += row[5]
            rows = kept
        state = State.SENDING if kind in policy.ambiguous_kinds else State.CLAIMED
        claimed = self._decode(rows, unreadable)
        conn.executemany(
            "UPDATE records SET state = ? WHERE seq = ?", [(state, q.seq) for q in claimed]
        )
        return claimed

    def _decode(self, rows: Sequence[Any], unreadable: list[Unreadable]) -> list[QueuedRecord]:
        """Rows (seq, body, attempts, first_failure_at, enqueued_at, ...) as records; a row that
        does not read back is moved to the dead-letter set (inside the caller's transaction)."""
        out: list[QueuedRecord] = []
        for r in rows:
            try:
                out.append(QueuedRecord(r[0], record_from_json(r[1]), r[2], r[3], r[4]))
            except Exception as exc:  # whatever it is, it must not stop the sender
                detail = f"stored record does not read back: {describe_invalid(exc)}"
                for rid, kind, source in self._move_to_dead([r[0]], UNREADABLE, detail, None):
                    unreadable.append(Unreadable(rid, kind, source, detail))
        return out

    async def next_due_at(self) -> float | None:
        """When the earliest READY record becomes due (None when there is none)."""
        return await self._run(self._earliest_sync, State.READY)

    def _earliest_sync(self, state: State) -> float | None:
        """The earliest ``next_attempt_at`` of records in ``state`` (for AMBIGUOUS: settle time)."""
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM records WHERE state = ?", (state,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def mark_delivered(self, items: Iterable[tuple[int, str | None]], *, how: str = "sent") -> None:
        """Records (by seq) that Cortex stored, with the uuid it returned where there is one."""
        await self._run(self._delivered_sync, list(items), how)

    def _delivered_sync(self, items: list[tuple[int, str | None]], how: str) -> None:
        conn = self.conn
        now = time.time()
        with transaction(conn):
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
                conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
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
        self, seqs: Sequence[int], *, next_attempt_at: float, error: str, count_attempt: bool
    ) -> None:
        """Put records back to READY, due at ``next_attempt_at``; an idle worker is woken for them."""
        await self._run(self._reschedule_sync, list(seqs), next_attempt_at, error, count_attempt)
        self._notify_ready()

    def _reschedule_sync(self, seqs: list[int], due: float, error: str, count_attempt: bool) -> None:
        now = time.time()
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE records SET state = ?, next_attempt_at = ?, last_error = ?,"
                " attempts = attempts + ?, first_failure_at = COALESCE(first_failure_at, ?) WHERE seq = ?",
                [(State.READY, due, error[:1000], 1 if count_attempt else 0, now if count_attempt else None, s)
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
                [(State.AMBIGUOUS, settle_until, error[:1000], s) for s in seqs],
            )

    async def ambiguous(self, limit: int = 1000, *, settled_by: float | None = None) -> list[QueuedRecord]:
        """Records whose outcome is unknown, oldest first (lanes kept together).

        With ``settled_by``, only those whose settle time has passed by then. A row that does not
        read back is dead-lettered, as in :meth:`claim`.
        """
        found, unreadable = await self._run(self._ambiguous_sync, limit, settled_by)
        _count_unreadable(unreadable)
        return found

    def _ambiguous_sync(self, limit: int, settled_by: float | None) -> tuple[list[QueuedRecord], list[Unreadable]]:
        unreadable: list[Unreadable] = []
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT seq, body, attempts, first_failure_at, enqueued_at FROM records"
                " WHERE state = ? AND next_attempt_at <= ? ORDER BY lane, seq LIMIT ?",
                (State.AMBIGUOUS, float("inf") if settled_by is None else settled_by, limit),
            ).fetchall()
            found = self._decode(rows, unreadable)
        return found, unreadable

    async def next_settled_at(self) -> float | None:
        """When the earliest ambiguous record may be read back (None when there is none)."""
        return await self._run(self._earliest_sync, State.AMBIGUOUS)

    async def dead_letter(self, seqs: Sequence[int], *, reason: str, detail: str, status: int | None) -> None:
        """Move records to the dead-letter set: they will not be retried unless replayed."""
        await self._run(self._dead_sync, list(seqs), reason, detail, status)

    def _dead_sync(self, seqs: list[int], reason: str, detail: str, status: int | None) -> None:
        with transaction(self.conn):
            self._move_to_dead(seqs, reason, detail, status)
        self._recount_sync()

    def _move_to_dead(
        self, seqs: list[int], reason: str, detail: str, status: int | None
    ) -> list[tuple[str, str, str]]:
        """Move records to ``dead`` (inside the caller's transaction); returns (id, kind, source) of each."""
        conn = self.conn
        now = time.time()
        moved: list[tuple[str, str, str]] = []
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
                (*row, reason, detail[:4000], status, now),
            )
            conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
            moved.append((str(row[0]), str(row[1]), str(row[3])))
        return moved

    async def dead_letter_input(
        self, records: Sequence[Record], *, reason: str, detail: str
    ) -> None:
        """Keep records that can never be sent (e.g. unresolvable entity) straight in the dead-letter set.

        One transaction, never through the ready queue, so the sender cannot pick them up.
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
            known = _known_ids(conn, [r.id for r, _ in records])
            for record, body in records:
                if record.id in known:
                    continue
                conn.execute(
                    "INSERT INTO dead (id, kind, lane, source, body, size, received_at, attempts, reason, detail,"
                    " status, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, ?)",
                    (record.id, record.kind, lane_of(record), record.provenance.source, body, len(body),
                     record.provenance.received_at.timestamp(), reason, detail[:4000], now),
                )
                known.add(record.id)
                stored.append(record)
        return stored

    async def probe_writable(self) -> bool:
        """Try a tiny durable write; readiness comes back as soon as the disk has room again."""
        try:
            await self._run(self._probe_sync)
        except sqlite3.Error:
            self.writable = False
        else:
            self.writable = True
        metrics.QUEUE_WRITABLE.set(1 if self.writable else 0)
        return self.writable

    def _probe_sync(self) -> None:
        # A checkpoint moves WAL frames into the database and truncates the WAL: on a small,
        # full volume that is often what gives the space back.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with transaction(self.conn):
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_write_probe', ?)", (str(time.time()),))

    # -- maintenance and inspection ----------------------------------------------------------

    async def prune_history(self, chunk: int = 5000) -> int:
        """Forget delivered ids and delivery ids older than the configured history.

        In transactions of at most ``chunk`` rows per table: between them the database thread
        takes appends, so a large expiry (an hour of a busy metric stream) never holds up input.
        """
        cutoff = time.time() - self.history_seconds
        total = 0
        while True:
            removed = await self._run(self._prune_sync, cutoff, chunk)
            total += removed
            if removed == 0:
                return total

    def _prune_sync(self, cutoff: float, chunk: int) -> int:
        with transaction(self.conn):
            n = self.conn.execute(
                "DELETE FROM delivered WHERE id IN"
                " (SELECT id FROM delivered WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            n += self.conn.execute(
                "DELETE FROM delivered_points WHERE id IN"
                " (SELECT id FROM delivered_points WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            n += self.conn.execute(
                "DELETE FROM deliveries WHERE (source, delivery_id) IN"
                " (SELECT source, delivery_id FROM deliveries WHERE seen_at < ? ORDER BY seen_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
        return int(n)

    async def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest age, states, kinds, dead letters (see :func:`inspect.stats`)."""
        return await self._run(self._stats_sync)

    def _stats_sync(self) -> dict[str, Any]:
        result = inspect.stats(self.conn)  # its counts are the totals row: take them, not read it twice
        self._count, self._bytes = result["undelivered"], result["undelivered_bytes"]
        return result

    def _recount_sync(self) -> int:
        """Depth and bytes from the trigger-kept totals (which also see other processes' changes,
        e.g. an operator's ``dlq replay``); returns the dead-letter count."""
        self._count, self._bytes, dead = totals(self.conn)
        return dead

    async def refresh_gauges(self) -> None:
        """Depth, bytes, oldest age and dead letters; cheap at any depth (no counting)."""
        dead, oldest_age = await self._run(self._gauges_sync)
        metrics.QUEUE_OLDEST_AGE.set(oldest_age)
        metrics.DEAD_LETTERS.set(dead)
        self._publish_gauges()

    def _gauges_sync(self) -> tuple[int, float]:
        dead = self._recount_sync()
        return dead, inspect.oldest_age(self.conn)

    def _publish_gauges(self) -> None:
        metrics.QUEUE_DEPTH.set(self._count)
        metrics.QUEUE_BYTES.set(self._bytes)
        metrics.QUEUE_FULL.set(1 if self.is_full else 0)

    async def get_state(self, key: str) -> str | None:
        """A source's persisted state value."""
        return await self._run(self._get_state_sync, key)

    def _get_state_sync(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM source_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    async def get_states(self, prefix: str) -> dict[str, str]:
        """All persisted state values whose key starts with ``prefix``."""
        return await self._run(self._get_states_sync, prefix)

    def _get_states_sync(self, prefix: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT key, value FROM source_state WHERE key >= ? AND key < ?", (prefix, prefix + "\U0010ffff")
        )
        return {k: v for k, v in rows}

    async def put_state(self, updates: dict[str, str]) -> None:
        """Persist source state without records (same durability as an append)."""
        await self.append([], state_updates=updates)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only query for inspection commands (``dlq``, ``trace``)."""
        return await self._run(lambda: self.conn.execute(sql, params).fetchall())

    async def execute(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside one transaction on the database thread, then recount."""
        def work() -> T:
            with transaction(self.conn):
                result = fn(self.conn)
            self._recount_sync()
            return result
        result = await self._run(work)
        self._publish_gauges()
        self._notify_ready()
        return result


def point_key(timestamp: Any, value: Any) -> str:
    """A metric point as Cortex keeps it: epoch milliseconds and value (what a read-back can match)."""
    return f"{round(parse_timestamp(timestamp).timestamp() * 1000)}|{float(value)!r}"


def _count_unreadable(unreadable: list[Unreadable]) -> None:
    for item in unreadable:
        metrics.RECORDS_DEAD_LETTERED.labels(item.source, item.kind, UNREADABLE).inc()
        log.error("record_unreadable", record_id=item.id, kind=item.kind, detail=item.detail)


def _seen_deliveries(conn: sqlite3.Connection, deliveries: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (source, delivery id) pairs were stored before."""
    seen: set[tuple[str, str]] = set()
    for start in range(0, len(deliveries), 300):
        chunk = deliveries[start : start + 300]
        pairs = ",".join("(?, ?)" for _ in chunk)
        seen.update((r[0], r[1]) for r in conn.execute(
            # CROSS JOIN keeps the constant rows outside, so each pair is a primary-key search.
            f"SELECT d.source, d.delivery_id FROM (VALUES {pairs}) AS v CROSS JOIN deliveries AS d"
            " ON d.source = v.column1 AND d.delivery_id = v.column2",
            [part for pair in chunk for part in pair]))
    return seen


def _known_ids(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Ids already queued, delivered (within history) or dead-lettered."""
    known: set[str] = set()
    for start in range(0, len(ids), 300):
        chunk = ids[start : start + 300]
        marks = ",".join("?" * len(chunk))
        known.update(r[0] for r in conn.execute(
            f"SELECT id FROM records WHERE id IN ({marks}) UNION ALL SELECT id FROM delivered WHERE id IN ({marks})"
            f" UNION ALL SELECT id FROM dead WHERE id IN ({marks})", chunk * 3))
    return known
