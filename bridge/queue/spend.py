"""The request spend log: when this process and its predecessors sent requests to Cortex.

:class:`QueueSpendLog` implements :class:`bridge.cortex.budget.SpendLog` on the queue database
(table ``spend``, schema version 3), so a process that restarts within a minute knows what was
already spent of Cortex's sliding window.

Cost: concurrent :meth:`QueueSpendLog.record` calls share one small transaction on the queue's
database thread (a group commit of their own). That transaction commits with
``synchronous=NORMAL``: in WAL mode a commit is then written to the WAL without an fsync, which
survives ``kill -9`` of the process (the OS keeps the pages) though not a power cut, and costs a
few tens of microseconds instead of an fsync per request. The queue's own commits keep
``synchronous=FULL`` (and their fsync carries the spend rows with them). Rows older than
``keep_seconds`` are deleted in the same transactions, at most every ``EXPIRE_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable

from bridge.queue.backend import QueueBackend, SharedSpend
from bridge.queue.core import QueueCore
from bridge.queue.schema import transaction

#: How often (at most) a record transaction also deletes expired rows.
EXPIRE_EVERY = 30.0


class SpendRows(QueueCore):
    """The ``spend`` table as queue operations; :class:`QueueSpendLog` batches calls to them."""

    async def load_spends(self, since: float) -> list[float]:
        """Send stamps (wall clock) recorded at or after ``since``, by any process, oldest first."""
        return await self._run(self._load_spends_sync, since)

    def _load_spends_sync(self, since: float) -> list[float]:
        rows = self.conn.execute("SELECT sent_at FROM spend WHERE sent_at >= ? ORDER BY sent_at", (since,))
        return [float(r[0]) for r in rows]

    async def record_spends(
        self, count: int, *, clock: Callable[[], float], expiry: Callable[[float], float | None]
    ) -> None:
        """Durably note ``count`` requests sent at ``clock()``, read just before the commit.

        ``expiry(stamp)`` says before when sends are forgotten in the same transaction (``None``:
        not this time). Committed with ``synchronous=NORMAL`` (see the module docstring).
        """
        await self._run(self._record_spends_sync, count, clock, expiry)

    def _record_spends_sync(
        self, count: int, clock: Callable[[], float], expiry: Callable[[float], float | None]
    ) -> None:
        conn = self.conn
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            stamp = clock()  # on the database thread, just before the commit: as late as possible
            with transaction(conn):
                conn.executemany("INSERT INTO spend (sent_at) VALUES (?)", [(stamp,)] * count)
                before = expiry(stamp)
                if before is not None:
                    conn.execute("DELETE FROM spend WHERE sent_at < ?", (before,))
        finally:
            conn.execute("PRAGMA synchronous=FULL")


class QueueSpendLog:
    """:class:`~bridge.cortex.budget.SpendLog` kept in ``queue``'s database."""

    def __init__(
        self, queue: QueueBackend, *, keep_seconds: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.queue = queue
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._waiting: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._expired_at = -float("inf")
        #: this process among the replicas sharing the log (host and pid say which pod, when read)
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def shared(self) -> bool:
        """Whether other processes spend from this log at the same time (then use :meth:`admit`)."""
        return isinstance(self.queue, SharedSpend)

    async def admit(self, room: int, span: float) -> float:
        """Record one request now if other processes' requests of the last ``span`` seconds are
        fewer than ``room``: returns 0 once recorded, else the seconds until the oldest of them
        stops counting (ask again then). Raises a queue error when the log cannot be reached."""
        assert isinstance(self.queue, SharedSpend)
        wait = await self.queue.admit_spend(self.replica, room=room, span=span, expiry=self._expiry)
        return 0.0 if wait is None else max(0.01, wait)

    async def load(self, since: float) -> list[float]:
        """Send stamps (wall clock) recorded at or after ``since``, by any process."""
        return await self.queue.load_spends(since)

    async def record(self) -> None:
        """Durably note one request about to be sent; returns when committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="spend-log")
        await asyncio.shield(future)  # a cancelled caller leaves the commit to the others

    async def _flush(self) -> None:
        # Whatever arrives while a commit runs goes into the next one.
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self.queue.record_spends(len(batch), clock=self._clock, expiry=self._expiry)
            except Exception as exc:
                for future in batch:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: a cancelled caller never will
                continue
            for future in batch:
                if not future.done():
                    future.set_result(None)

    def _expiry(self, stamp: float) -> float | None:
        # Expired rows go at most every EXPIRE_EVERY seconds, not with every commit.
        if stamp - self._expired_at < EXPIRE_EVERY:
            return None
        self._expired_at = stamp
        return stamp - self.keep_seconds
