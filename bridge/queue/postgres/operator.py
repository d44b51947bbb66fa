"""The operator operations (bridge/queue/operator.py) on the shared PostgreSQL database.

An operator's command opens one connection of its own beside the running replicas. Reads
(``queue stats``, ``dlq list|show``, ``trace``) run the statements of bridge/queue/inspect.py
through :class:`QmarkConnection` in read-only transactions, so they also work against a standby.
Writes select rows as the SQLite operations do (the same selection functions) and change them
in chunks of one short transaction each, so a replica's claims and appends never wait long:

- ``queue retry`` updates only READY records not yet due, and re-checks that on the row it
  locks: a record a replica claimed meanwhile (``FOR UPDATE SKIP LOCKED`` in its claim) is left
  alone, so nothing in flight is ever made due twice.
- ``dlq replay`` moves the dead row into ``records`` in one statement; its id stays in
  ``admitted``, so a redelivery arriving meanwhile at any replica is still stored once.
- ``dlq purge`` deletes the dead row and forgets its id in ``admitted`` (unless it is queued or
  delivered), so, as on SQLite, a purged record may be stored again.

The running replicas see the changes at their next claim and recount their depth at the next
gauge refresh.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from bridge.queue import inspect
from bridge.queue.dead_letters import DLQ_CHUNK, dead_selection, replayable_selection
from bridge.queue.errors import NotAQueue
from bridge.queue.operator_spend import insert_spend, spends_since
from bridge.queue.outcomes import RETRY_CHUNK
from bridge.queue.postgres.core import dsn_password, unavailable
from bridge.queue.postgres.keeping import SPEND_INSERT, SPEND_WINDOW, spend_wait
from bridge.queue.postgres.schema import SPEND_LOCK, check_version, pg_statement, stored_text
from bridge.queue.schema import parked_clause, waiting_clause

T = TypeVar("T")


class QmarkConnection:
    """A psycopg connection that runs statements written with SQLite's ``?`` placeholders.

    For the statements written once for both engines (:func:`pg_statement`). Text parameters are looked up as the queue stores text (:func:`stored_text`: NUL and lone
    surrogates escaped), so an operator's id finds the row it names and never fails to encode.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        """Run ``sql`` with ``?`` placeholders."""
        return self.conn.execute(pg_statement(sql),
                                 [stored_text(p) if isinstance(p, str) else p for p in parameters])


class PgOperator:
    """:class:`~bridge.queue.operator.OperatorQueue` on the shared database."""

    def __init__(self, conn: psycopg.Connection[Any], secret: str | None) -> None:
        self.conn = QmarkConnection(conn)
        self._secret = secret

    @classmethod
    def open(cls, dsn: str, *, write: bool = False, statement_timeout_seconds: float = 10.0) -> PgOperator:
        """Connect and check that the database holds a queue this release can use.

        Read-only unless ``write``. Raises :class:`QueueUnavailable` (unreachable, refused, a bad
        DSN) or :class:`NotAQueue` (no bridge schema, or a newer one), never quoting the DSN.
        """
        secret = dsn_password(dsn)
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(2, math.ceil(statement_timeout_seconds)))
        except psycopg.Error as exc:
            raise unavailable(exc, secret) from None
        operator = cls(conn, secret)
        try:
            operator._run(lambda: operator._prepare(statement_timeout_seconds, write))
        except BaseException:
            conn.close()
            raise
        return operator

    def _prepare(self, statement_timeout_seconds: float, write: bool) -> None:
        conn = self.conn.conn
        conn.execute(f"SET statement_timeout = {max(1, int(statement_timeout_seconds * 1000))}")
        if not write:
            conn.execute("SET default_transaction_read_only = on")
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            raise NotAQueue("the queue database holds no cortex-bridge queue yet (a bridge creates it at its first start)")
        version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        check_version(int(version[0]) if version else 0)

    def _run(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except psycopg.Error as exc:
            raise unavailable(exc, self._secret) from None

    def _chunks(self, sql: str, before: list[Any], chunk: int, after: Sequence[Any] = ()) -> int:
        """Run ``sql`` (parameters: ``before``, the chunk size, ``after``; it returns how many rows it
        changed) until a run changes fewer than ``chunk``, each run its own transaction; returns the total."""
        total = 0
        while True:
            row = self.conn.execute(sql, [*before, chunk, *after]).fetchone()
            n = int(row[0]) if row else 0
            total += n
            if n < chunk:
                return total

    # -- reads: the statements of inspect.py --------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """See :meth:`~bridge.queue.operator.OperatorQueue.stats` (one snapshot for all counts)."""
        def read() -> dict[str, Any]:
            with self.conn.conn.transaction():
                self.conn.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                return inspect.stats(self.conn, inspect.count_totals(self.conn))
        return self._run(read)

    def dlq_list(self, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`~bridge.queue.operator.OperatorQueue.dlq_list`."""
        return self._run(lambda: inspect.dlq_list(self.conn, limit=limit, reason=reason))

    def dlq_show(self, record_id: str) -> dict[str, Any] | None:
        """See :meth:`~bridge.queue.operator.OperatorQueue.dlq_show`."""
        return self._run(lambda: inspect.dlq_show(self.conn, record_id))

    def trace(self, ident: str) -> list[dict[str, Any]]:
        """See :meth:`~bridge.queue.operator.OperatorQueue.trace`."""
        return self._run(lambda: inspect.trace(self.conn, ident))

    def oldest_record(self) -> dict[str, Any] | None:
        """See :meth:`~bridge.queue.operator.OperatorQueue.oldest_record`."""
        return self._run(lambda: inspect.oldest_record(self.conn))

    def recent_deliveries(self, since: float) -> dict[str, int]:
        """See :meth:`~bridge.queue.operator.OperatorQueue.recent_deliveries`."""
        return self._run(lambda: inspect.recent_deliveries(self.conn, since))

    def load_spends(self, since: float) -> list[float]:
        """See :meth:`~bridge.queue.operator.OperatorQueue.load_spends`."""
        return self._run(lambda: spends_since(self.conn, since))

    # -- writes ------------------------------------------------------------------------------

    def record_spend(self, stamp: float) -> None:
        """See :meth:`~bridge.queue.operator.OperatorQueue.record_spend`."""
        self._run(lambda: insert_spend(self.conn, stamp))

    def admit_spend(self, replica: str, *, room: int, span: float) -> float | None:
        """Take one request's slot in the deployment's window, as a replica does
        (``PostgresQueue.admit_spend``: the same statements, under the same lock); ``None`` once
        recorded, else the seconds to wait. Expired rows are left to the replicas to delete."""
        def admit() -> float | None:
            conn = self.conn.conn
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SPEND_LOCK,))
                row = conn.execute(SPEND_WINDOW, (span, replica, span, replica)).fetchone()
                assert row is not None
                stamp = float(row[0])
                wait = spend_wait(stamp, int(row[1]), row[2], room=room, span=span)
                if wait is None:
                    conn.execute(SPEND_INSERT, (stamp, replica))
                return wait
        return self._run(admit)

    def retry(self, ids: list[str] | None = None, *, parked: bool = False, chunk: int = RETRY_CHUNK) -> int:
        """See :meth:`~bridge.queue.operator.OperatorQueue.retry`."""
        now = time.time()
        where, params = parked_clause(now) if parked else waiting_clause(now)
        if ids is not None:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        # The condition twice: the subquery picks a chunk, the outer WHERE is re-checked on the
        # row version the UPDATE locks (a replica may have claimed it since the subquery read it).
        sql = (f"WITH released AS (UPDATE records SET next_attempt_at = ? WHERE {where}"
               f" AND seq IN (SELECT seq FROM records WHERE {where} LIMIT ?) RETURNING 1)"
               " SELECT COUNT(*) FROM released")
        return self._run(lambda: self._chunks(sql, [now, *params, *params], chunk))

    def replay(self, *, ids: list[str] | None = None, reason: str | None = None, chunk: int = DLQ_CHUNK) -> int:
        """See :meth:`~bridge.queue.operator.OperatorQueue.replay`."""
        where, params = replayable_selection(ids, reason)
        now = time.time()
        sql = ("WITH moved AS (DELETE FROM dead WHERE id IN"
               f" (SELECT id FROM dead{where} ORDER BY dead_at LIMIT ?)"
               " RETURNING id, kind, lane, source, body, size, received_at),"
               " kept AS (INSERT INTO admitted (id, admitted_at) SELECT id, ? FROM moved ON CONFLICT DO NOTHING),"
               " queued AS (INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at,"
               " next_attempt_at) SELECT id, kind, lane, source, body, size, received_at, ?, ? FROM moved"
               " ON CONFLICT (id) DO NOTHING)"
               " SELECT COUNT(*) FROM moved")
        return self._run(lambda: self._chunks(sql, params, chunk, (now, now, now)))

    def purge(self, *, ids: list[str] | None = None, reason: str | None = None, chunk: int = DLQ_CHUNK) -> int:
        """See :meth:`~bridge.queue.operator.OperatorQueue.purge`."""
        where, params = dead_selection(ids, reason)
        sql = (f"WITH gone AS (DELETE FROM dead WHERE id IN (SELECT id FROM dead{where} LIMIT ?) RETURNING id),"
               " forgotten AS (DELETE FROM admitted a USING gone WHERE a.id = gone.id"
               " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.id = a.id)"
               " AND NOT EXISTS (SELECT 1 FROM delivered d WHERE d.id = a.id))"
               " SELECT COUNT(*) FROM gone")
        return self._run(lambda: self._chunks(sql, params, chunk))

    def close(self) -> None:
        """Close the connection."""
        self.conn.conn.close()
