"""Appends with group commit: a 2xx means "on disk" without one fsync per request.

Producers call :meth:`Appends.append`; concurrent appends that arrive while a commit is running
are written together in the next transaction (one fsync for all of them), and each producer is
released only after that commit returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bridge import metrics
from bridge.queue.core import QueueCore
from bridge.queue.errors import QueueFull, QueueUnavailable
from bridge.queue.schema import state_key, transaction
from bridge.records import Record, encode_record, lane_of


@dataclass(frozen=True)
class AppendResult:
    """What an append stored."""

    new_ids: list[str]
    duplicate_ids: list[str]
    duplicate_delivery: bool = False


@dataclass
class Submission:
    """One append waiting for the next group commit (package-internal)."""

    rows: Sequence[tuple[str, str, str, str, str, int, float]]
    delivery: tuple[str, str] | None
    state_updates: dict[str, str]
    future: asyncio.Future[AppendResult]


class Appends(QueueCore):
    """Appending records (and source state) durably, many producers per commit."""

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
        self._pending.append(Submission(rows, delivery, dict(state_updates or {}), future))
        self._wakeup.set()
        try:
            # A cancelled caller (client gone) cancels only its wait: the writer still stores the
            # rows and skips the cancelled future.
            return await future
        finally:
            self._reserved_count -= len(rows)
            self._reserved_bytes -= size

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="queue-writer")

    async def _stop_writer(self) -> None:
        """Flush pending appends, then stop the writer."""
        if self._writer is None:
            return
        while self._pending:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

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
            except QueueUnavailable as exc:
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

    def _write_sync(self, batch: list[Submission]) -> list[AppendResult]:
        # A handful of statements per group commit, not two per submission: measured ~110 -> ~75 us
        # per record with 64 concurrent appends (docs/benchmarks.md).
        conn = self.conn
        now = time.time()
        results: list[AppendResult | None] = [None] * len(batch)
        with transaction(conn):
            seen = _seen_deliveries(conn, [sub.delivery for sub in batch if sub.delivery is not None])
            deliveries = []
            admitted: list[tuple[int, Submission]] = []
            for i, sub in enumerate(batch):
                if sub.delivery is not None:
                    if sub.delivery in seen:
                        results[i] = AppendResult([], [r[0] for r in sub.rows], duplicate_delivery=True)
                        continue
                    seen.add(sub.delivery)
                    deliveries.append((*sub.delivery, now, json.dumps([r[0] for r in sub.rows])))
                admitted.append((i, sub))
            known = known_ids(conn, [r[0] for _, sub in admitted for r in sub.rows])
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
                states.extend((state_key(key), state_key(value), now) for key, value in sub.state_updates.items())
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


def known_ids(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Ids already queued, delivered (within history) or dead-lettered."""
    known: set[str] = set()
    for start in range(0, len(ids), 300):
        chunk = ids[start : start + 300]
        marks = ",".join("?" * len(chunk))
        known.update(r[0] for r in conn.execute(
            f"SELECT id FROM records WHERE id IN ({marks}) UNION ALL SELECT id FROM delivered WHERE id IN ({marks})"
            f" UNION ALL SELECT id FROM dead WHERE id IN ({marks})", chunk * 3))
    return known
