"""Group commit, shared by both backends: a 2xx means "durable" without one commit per request.

Producers call :meth:`GroupCommit.append`; concurrent appends that arrive while a commit is
running are written together in the next transaction, and each producer is released only after
that commit returned. A backend supplies :meth:`GroupCommit._commit` (one transaction for a
batch of submissions) and the depth it keeps; the reservation of room, the writer task and the
release of producers are the same for SQLite and PostgreSQL, so they live here once.

When the previous commit was shared (requests are arriving together), the writer waits
:attr:`GroupCommit.commit_delay_seconds` before taking the next batch, so that more of them share
one fsync: under load that halves the writer's CPU per request. A lone append after a lone commit
is never delayed, and the wait ends as soon as :attr:`GroupCommit.commit_delay_enough` appends
are pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge import metrics
from bridge.queue.deploy_groups import Claim, DeployPolicy, claims_of
from bridge.queue.errors import QueueFull, QueueUnavailable
from bridge.queue.rows import Row, encode_rows
from bridge.records import Record
from bridge.tasks import cancel_and_wait


@dataclass(frozen=True)
class AppendResult:
    """What an append stored."""

    new_ids: list[str]
    duplicate_ids: list[str]
    duplicate_delivery: bool = False
    #: deploys not stored by their source's ``deploys`` mode (``off``; ``enrich-only`` with nothing to enrich)
    skipped_ids: list[str] = field(default_factory=list)


@dataclass
class Submission:
    """One append waiting for the next group commit (package-internal)."""

    rows: Sequence[Row]
    delivery: tuple[str, str] | None
    state_updates: dict[str, str]
    future: asyncio.Future[AppendResult]
    #: the deploy reports among ``rows`` to group in the same transaction
    deploys: Sequence[Claim] = ()


class GroupCommit:
    """The append front of a queue: room reserved, producers batched, one commit per batch."""

    max_records: int
    max_bytes: int
    writable: bool
    _count: int
    _bytes: int
    _reserved_count: int
    _reserved_bytes: int
    _pending: list[Submission]
    _wakeup: asyncio.Event
    _enough: asyncio.Event
    _writer: asyncio.Task[None] | None
    _closing: bool
    #: the readiness reason while the queue cannot store records
    unwritable_reason: str = "queue cannot write to disk"
    #: deploy coalescing and per-source deploy modes (None: every deploy stored, none grouped)
    deploy_policy: DeployPolicy | None = None
    #: how long the writer gathers appends after a shared commit (PostgreSQL's ``commit_delay``)
    commit_delay_seconds: float = 0.001
    #: pending appends that end the gathering early
    commit_delay_enough: int = 64

    def _init_group_commit(self) -> None:
        """The append front's state (a backend's constructor calls it)."""
        self._pending = []
        self._wakeup = asyncio.Event()
        self._enough = asyncio.Event()
        self._writer = None
        self._closing = False
        self._reserved_count = 0
        self._reserved_bytes = 0

    async def append(
        self,
        records: Sequence[Record],
        *,
        delivery: tuple[str, str] | None = None,
        state_updates: dict[str, str] | None = None,
    ) -> AppendResult:
        """Make ``records`` durable; return only after the commit that holds them succeeded.

        ``delivery`` = (source, delivery id): if that delivery was seen before, nothing is stored
        and ``duplicate_delivery`` is set. ``state_updates`` are written in the same transaction
        (a source's "what I already emitted" memory stays consistent with what is queued).
        Raises :class:`QueueFull`, :class:`QueueUnavailable` or
        :class:`~bridge.records.UnstorableRecord` (a record that would not read back); in each
        case nothing is stored.
        """
        if self._closing:
            raise QueueUnavailable("queue is closed")
        claims: list[Claim] = []
        skipped: list[str] = []
        if self.deploy_policy is not None:
            kept, claims = claims_of(self.deploy_policy, records)
            stored = {id(r) for r in kept}
            skipped = [r.id for r in records if id(r) not in stored]
            records = kept
        rows, size = encode_rows(records)
        if rows and (
            self._count + self._reserved_count + len(rows) > self.max_records
            or self._bytes + self._reserved_bytes + size > self.max_bytes
        ):
            metrics.QUEUE_FULL.set(1)
            raise QueueFull(f"queue is full ({self._count} records, {self._bytes} bytes)")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._reserved_count += len(rows)
        self._reserved_bytes += size
        self._pending.append(Submission(rows, delivery, dict(state_updates or {}), future, claims))
        self._wakeup.set()
        if len(self._pending) >= self.commit_delay_enough:
            self._enough.set()
        try:
            # A cancelled caller (client gone) cancels only its wait: the writer still stores the
            # rows and skips the cancelled future.
            result = await future
            result.skipped_ids.extend(skipped)
            return result
        finally:
            self._reserved_count -= len(rows)
            self._reserved_bytes -= size

    async def _commit(self, batch: list[Submission]) -> list[AppendResult]:
        """Store ``batch`` in one transaction; raise :class:`QueueUnavailable` unless it committed."""
        raise NotImplementedError

    def _publish_gauges(self) -> None:
        raise NotImplementedError

    def _notify_ready(self) -> None:
        raise NotImplementedError

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="queue-writer")

    async def _stop_writer(self) -> None:
        """Let the writer commit what is pending and the batch it is committing, then stop it.

        Cancelling a writer mid-commit would leave that batch's producers waiting forever (and
        whether their rows are stored undecided); so the writer is asked to finish and ends itself.
        Only the closer's own cancellation (a shutdown deadline) interrupts it.
        """
        writer = self._writer
        if writer is None:
            return
        self._closing = True
        self._wakeup.set()
        self._enough.set()
        try:
            await asyncio.wait([writer])
        finally:
            if not writer.done():
                await cancel_and_wait(writer)
            self._writer = None
        closed = QueueUnavailable("queue is closed")
        for sub in self._pending:
            if not sub.future.done():
                sub.future.set_exception(closed)
        self._pending = []
        if not writer.cancelled() and (error := writer.exception()) is not None:
            raise error

    async def _gather(self) -> None:
        """Wait up to the commit delay, or until enough appends are pending."""
        self._enough.clear()
        if len(self._pending) >= self.commit_delay_enough:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.commit_delay_seconds):
                await self._enough.wait()

    async def _write_loop(self) -> None:
        last_batch = 0
        while True:
            if not self._closing:
                await self._wakeup.wait()
            self._wakeup.clear()
            if last_batch > 1 and not self._closing:
                await self._gather()
            batch, self._pending = self._pending, []
            last_batch = len(batch)
            if not batch:
                if self._closing:
                    return
                continue
            started = time.perf_counter()
            try:
                results = await self._commit(batch)
            except QueueUnavailable as exc:
                self.writable = False
                metrics.QUEUE_WRITABLE.set(0)
                err = QueueUnavailable(f"{self.unwritable_reason}: {exc}")
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
