"""The PostgreSQL queue: the operations composed, with opening (migrations) and closing.

:class:`PostgresQueue` implements :class:`~bridge.queue.backend.QueueBackend` with the
guarantees of the SQLite queue, for any number of replicas on one database.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bridge.queue.errors import QueueError
from bridge.queue.postgres.core import dsn_password, unavailable
from bridge.queue.postgres.deploy_groups import PgDeployGroups
from bridge.queue.postgres.enrichment import PgGroupEnrichment
from bridge.queue.postgres.keeping import PgKeeping
from bridge.queue.postgres.schema import migrate
from bridge.queue.postgres.sender_lock import SenderLock
from bridge.queue.postgres.sending import PgSending
from bridge.queue.postgres.writes import PgWrites
from bridge.queue.schema import State

#: Longest wait for a pooled connection. When the database is down no connection comes, and a
#: webhook waiting longer than this would meet its sender's timeout (GitHub gives up after 10 s)
#: instead of a prompt 503 + Retry-After.
POOL_WAIT_SECONDS = 2.0


class PostgresQueue(PgWrites, PgSending, PgKeeping, PgDeployGroups, PgGroupEnrichment):
    """Queue of records, dead letters and delivery history in a PostgreSQL database."""

    _sender_lock: SenderLock | None = None
    _prepared_generation = 0

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = 10,
        statement_timeout_seconds: float = 10.0,
        max_records: int = 1_000_000,
        max_bytes: int = 1 << 30,
        history_seconds: float = 7 * 86400,
        settle_seconds: float = 0.0,
        sender_lock: bool = True,
    ) -> PostgresQueue:
        """Connect, migrate the schema (under an advisory lock), and count what is queued.

        ``sender_lock``: claim only while holding the one-sender lock (sender_lock.py), and on
        taking it, make what the previous holder left in flight ambiguous (SENDING: read back
        after ``settle_seconds``) or ready again (CLAIMED: safe to resend). Without it every
        replica claims (``SKIP LOCKED`` keeps claims disjoint) and none recovers in-flight
        records. Raises :class:`QueueUnavailable` when the database cannot be reached, and
        :class:`~bridge.queue.errors.NotAQueue` for a schema newer than this release.
        """
        secret = dsn_password(dsn)
        timeout_ms = max(1, int(statement_timeout_seconds * 1000))

        async def configure(conn: AsyncConnection[Any]) -> None:
            await conn.execute(f"SET statement_timeout = {timeout_ms}")
            await conn.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms * 3}")

        connect_kwargs: dict[str, Any] = {"connect_timeout": max(2, math.ceil(statement_timeout_seconds)),
                                          "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                                          "keepalives_count": 3}
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=2, max_size=pool_size, open=False, timeout=min(statement_timeout_seconds, POOL_WAIT_SECONDS),
            kwargs={"autocommit": True, **connect_kwargs}, configure=configure,
            check=AsyncConnectionPool.check_connection, name="cortex-bridge-queue")
        queue = cls(pool, max_records=max_records, max_bytes=max_bytes, history_seconds=history_seconds,
                    settle_seconds=settle_seconds, secret=secret)
        queue._init_group_commit()
        try:
            await pool.open(wait=True, timeout=statement_timeout_seconds)
            async with pool.connection() as conn:
                await migrate(conn)
                await queue._recount(conn)
        except (psycopg.Error, QueueError) as exc:
            await pool.close()
            if isinstance(exc, QueueError):
                raise
            raise unavailable(exc, secret) from exc
        if sender_lock:
            queue._sender_lock = SenderLock(dsn, connect_kwargs)
        queue._start_writer()
        queue._publish_gauges()
        return queue

    @property
    def is_sender(self) -> bool:
        """Whether this replica holds the one-sender lock (always True without the rule)."""
        return self._sender_lock is None or self._sender_lock.held

    async def may_send(self) -> bool:
        """Whether this replica holds the sender lock (always, without the one-sender rule); on
        taking it, first makes ready or ambiguous what the previous holder left in flight."""
        lock = self._sender_lock
        if lock is None:
            return True
        if not await lock.check():
            return False
        if self._prepared_generation != lock.generation:
            await self._tx(self._take_over)  # a failure leaves it for the next check
            self._prepared_generation = lock.generation
            self._notify_takeover()  # e.g. the request budget re-reads what the previous sender spent
            self._notify_ready()
        return True

    async def _take_over(self, conn: AsyncConnection[Any]) -> None:
        # The previous sender may have had a non-idempotent request in flight: read back first.
        await conn.execute("UPDATE records SET state = %s, next_attempt_at = %s WHERE state = %s",
                           (State.AMBIGUOUS, time.time() + self.settle_seconds, State.SENDING))
        await conn.execute("UPDATE records SET state = %s WHERE state = %s", (State.READY, State.CLAIMED))

    async def close(self) -> None:
        """Flush pending appends, release the sender lock, close the pool."""
        await self._stop_writer()
        if self._sender_lock is not None:
            await self._sender_lock.close()
        await self.pool.close()
