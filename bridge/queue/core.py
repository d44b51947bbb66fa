"""What every queue operation shares: the one database thread, its connection, the counts.

Every database call runs on one dedicated thread with one connection, so SQLite never sees
concurrent writers and the event loop never blocks on disk. The operation modules
(:mod:`~bridge.queue.appends`, :mod:`~bridge.queue.claims` ...) build on :class:`QueueCore`
and reach the database only through :meth:`QueueCore._run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge import metrics
from bridge.queue import inspect
from bridge.queue.errors import QueueUnavailable
from bridge.queue.schema import totals, transaction
from bridge.queue.signals import QueueSignals

T = TypeVar("T")


class QueueCore(QueueSignals):
    """The queue's database thread, connection, depth and gauges; the operations are mixins."""

    def __init__(
        self, path: Path, *, max_records: int, max_bytes: int, history_seconds: float, settle_seconds: float = 0.0
    ) -> None:
        super().__init__(max_records=max_records, max_bytes=max_bytes, history_seconds=history_seconds,
                         settle_seconds=settle_seconds)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread (package-internal: only bridge/queue calls it).

        A database failure is raised as :class:`QueueUnavailable` with SQLite's message, so no
        ``sqlite3.Error`` reaches a caller of the queue.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """The SQLite connection; use it only on the database thread (tests set pragmas through it)."""
        assert self._conn is not None, "queue is closed"
        return self._conn

    # -- depth and gauges --------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest age, states, kinds, dead letters (see :func:`inspect.stats`)."""
        return await self._run(self._stats_sync)

    def _stats_sync(self) -> dict[str, Any]:
        result = inspect.stats(self.conn)  # its counts are the totals row: take them, not read it twice
        self._count, self._bytes = result["undelivered"], result["undelivered_bytes"]
        return result

    def _recount_sync(self) -> int:
        """Depth and bytes from the totals row (which also sees other processes' changes,
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

    # -- writability -------------------------------------------------------------------------

    def _write_probe(self) -> Awaitable[None]:
        return self._run(self._probe_sync)

    def _probe_sync(self) -> None:
        # A checkpoint moves WAL frames into the database and truncates the WAL: on a small,
        # full volume that is often what gives the space back.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with transaction(self.conn):
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_write_probe', ?)", (str(time.time()),))
