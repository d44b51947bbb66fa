"""The one-sender rule: a replica sends to Cortex only while it holds a session advisory lock.

The lock lives on a connection of its own, so it dies with that connection: a replica that is
killed, or cut off from the database, loses it without any cooperation, and another replica
takes it within a second or two. The holder checks its connection at most every
:data:`CHECK_EVERY` seconds; the others try to take the lock as often.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection

from bridge.queue.postgres.schema import SENDER_LOCK

log = structlog.get_logger("bridge.queue")

#: Seconds between checks of the lock (holder) or attempts to take it (the others).
CHECK_EVERY = 1.0


class SenderLock:
    """Whether this replica is the one that sends; :meth:`check` keeps the answer fresh."""

    def __init__(self, conninfo: str, connect_kwargs: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._kwargs = connect_kwargs
        self._conn: AsyncConnection[Any] | None = None
        self._checked_at = -float("inf")
        self._guard = asyncio.Lock()
        self.held = False
        #: bumped at every acquisition, so the queue knows a takeover has to be prepared
        self.generation = 0

    async def check(self) -> bool:
        """Whether this replica holds the lock (re-checked at most every :data:`CHECK_EVERY` s)."""
        async with self._guard:
            if time.monotonic() - self._checked_at < CHECK_EVERY:
                return self.held
            self._checked_at = time.monotonic()
            try:
                if self._conn is None:
                    self._conn = await AsyncConnection.connect(self._conninfo, autocommit=True, **self._kwargs)
                if self.held:
                    await self._conn.execute("SELECT 1")
                else:
                    cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (SENDER_LOCK,))
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        self.held = True
                        self.generation += 1
                        log.info("sender_lock_acquired")
            except psycopg.Error as exc:
                if self.held:
                    log.warning("sender_lock_lost", error=type(exc).__name__)
                self.held = False
                await self._drop()
            return self.held

    async def close(self) -> None:
        """Release the lock (by closing its connection)."""
        async with self._guard:
            self.held = False
            await self._drop()

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except psycopg.Error:
                pass  # a dead connection holds no lock
