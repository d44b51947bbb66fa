"""What every PostgreSQL queue operation shares: the pool, transactions, error mapping, counts.

Every operation runs as one transaction through :meth:`PgCore._tx`, which turns whatever the
driver raises into a :class:`~bridge.queue.errors.QueueError` (so ingest answers 503 with
Retry-After and the sender pauses, exactly as for a full disk on SQLite) and retries the few
errors that mean "run it again" (a deadlock between replicas, a serialization failure). The
pool checks a connection before lending it and replaces broken ones, so the queue recovers by
itself when the database comes back.

Depth and bytes: SQLite keeps exact totals in one row (bridge/queue/totals.py); here every replica's commits would
queue on one totals row, so each replica adjusts its counts by what its own operations changed
and recounts from the tables with every gauge refresh (every few seconds). ``max_records`` is
therefore a bound per deployment that a burst from several replicas can overshoot by what they
accepted within one refresh.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from bridge import metrics
from bridge.queue.errors import QueueError, QueueUnavailable
from bridge.queue.inspect import count_parked_apart, parked_count
from bridge.queue.postgres.schema import pg_statement
from bridge.queue.schema import State
from bridge.queue.signals import QueueSignals

T = TypeVar("T")

#: Transactions tried again after a deadlock or serialization failure before giving up.
TX_ATTEMPTS = 5
#: Errors after which the same transaction may simply run again.
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)


def unavailable(exc: Exception, secret: str | None = None) -> QueueUnavailable:
    """The :class:`QueueUnavailable` a driver error becomes; ``secret`` (the password) never in it."""
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        message = "database is read-only (a standby, or a primary failing over)"
    elif isinstance(exc, errors.QueryCanceled):
        message = f"database statement timed out: {exc}"
    elif isinstance(exc, psycopg.OperationalError):  # PoolTimeout, a lost or refused connection
        message = f"database unreachable: {exc}"
    else:
        message = f"database error ({type(exc).__name__}): {exc}"
    message = " ".join(message.split())  # libpq's messages run over several lines
    if secret:
        message = message.replace(secret, "***")
    return QueueUnavailable(message)


def dsn_password(dsn: str) -> str | None:
    """The password ``dsn`` holds (what :func:`unavailable` keeps out of messages), or None.

    Raises :class:`QueueUnavailable` for a DSN libpq cannot parse, not with the parser's message:
    it quotes the part of the DSN it stumbled on.
    """
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        raise QueueUnavailable("queue.postgres.dsn is not a valid libpq connection string or URL") from None
    return None if password is None else str(password)


class PgCore(QueueSignals):
    """The pool, the transaction runner, depth and gauges; the operations are mixins."""

    unwritable_reason = "queue database unavailable"

    def __init__(self, pool: AsyncConnectionPool[Any], *, max_records: int, max_bytes: int,
                 history_seconds: float, settle_seconds: float, secret: str | None) -> None:
        super().__init__(max_records=max_records, max_bytes=max_bytes, history_seconds=history_seconds,
                         settle_seconds=settle_seconds)
        self.pool = pool
        self._secret = secret

    async def _tx(self, fn: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` in one transaction; return only after its COMMIT succeeded.

        A COMMIT whose outcome is unknown (the connection died during it) raises
        :class:`QueueUnavailable` like any other failure: the caller must not report it as stored.
        """
        for attempt in range(TX_ATTEMPTS):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    return await fn(conn)
            except _RETRYABLE as exc:
                if attempt == TX_ATTEMPTS - 1:
                    raise unavailable(exc, self._secret) from exc
            except QueueError:
                raise
            except psycopg.Error as exc:  # PoolTimeout is one too
                raise unavailable(exc, self._secret) from exc
        raise AssertionError("unreachable")

    # -- depth and gauges --------------------------------------------------------------------

    def _counted(self, records: int, size: int) -> None:
        """This replica's operation added (or, negative, removed) ``records`` of ``size`` bytes."""
        self._count = max(0, self._count + records)
        self._bytes = max(0, self._bytes + size)

    async def _recount(self, conn: AsyncConnection[Any]) -> tuple[int, float]:
        """Depth and bytes from the tables (every replica's changes); returns (dead, oldest age)."""
        cur = await conn.execute(
            "SELECT (SELECT COUNT(*) FROM records), (SELECT COALESCE(SUM(size), 0) FROM records),"
            " (SELECT COUNT(*) FROM dead), (SELECT MIN(received_at) FROM records)")
        row = await cur.fetchone()
        assert row is not None
        self._count, self._bytes = int(row[0]), int(row[1])
        oldest = 0.0 if row[3] is None else round(time.time() - float(row[3]), 3)
        return int(row[2]), oldest

    async def refresh_gauges(self) -> None:
        """Depth, bytes, oldest age and dead letters, recounted from the shared tables."""
        dead, oldest_age = await self._tx(self._recount)
        metrics.QUEUE_OLDEST_AGE.set(oldest_age)
        metrics.DEAD_LETTERS.set(dead)
        self._publish_gauges()

    def _publish_gauges(self) -> None:
        metrics.QUEUE_DEPTH.set(self._count)
        metrics.QUEUE_BYTES.set(self._bytes)
        metrics.QUEUE_FULL.set(1 if self.is_full else 0)

    async def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest age, records by state and kind, dead letters by reason, history size."""
        return await self._tx(self._stats)

    async def _stats(self, conn: AsyncConnection[Any]) -> dict[str, Any]:
        dead, oldest = await self._recount(conn)

        async def grouped(sql: str) -> dict[Any, int]:
            cur = await conn.execute(sql)
            return {key: int(n) for key, n in await cur.fetchall()}

        by_state = {State(s).name.lower(): n
                    for s, n in (await grouped("SELECT state, COUNT(*) FROM records GROUP BY state")).items()}
        sql, params = parked_count(time.time())
        cur = await conn.execute(pg_statement(sql), params)
        parked = await cur.fetchone()
        count_parked_apart(by_state, int(parked[0]) if parked else 0)
        cur = await conn.execute("SELECT COUNT(*) FROM delivered")
        delivered = await cur.fetchone()
        return {
            "undelivered": self._count,
            "undelivered_bytes": self._bytes,
            "oldest_age_seconds": oldest,
            "by_state": by_state,
            "by_kind": await grouped("SELECT kind, COUNT(*) FROM records GROUP BY kind"),
            "dead_letters": dead,
            "dead_by_reason": await grouped("SELECT reason, COUNT(*) FROM dead GROUP BY reason"),
            "delivered_history": int(delivered[0]) if delivered else 0,
        }

    # -- writability -------------------------------------------------------------------------

    def _write_probe(self) -> Awaitable[None]:
        return self._tx(self._probe)

    async def _probe(self, conn: AsyncConnection[Any]) -> None:
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_write_probe', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))
