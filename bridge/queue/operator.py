"""The operator operations on a queue, defined once: ``queue stats``, ``queue retry``, ``dlq``, ``trace``.

:class:`OperatorQueue` is what the commands in bridge/queue_commands.py call; both backends
implement it on a connection of their own, beside running bridges: :class:`SqliteOperator` on a
queue file (bridge/queue/files.py opens it), ``PgOperator`` on the shared database
(bridge/queue/postgres/operator.py). What each operation selects is written once (the
selections in inspect.py, dead_letters.py and schema.py) and the output is the same document on
both: ISO 8601 UTC times, parked records counted apart. Every failure is a
:class:`~bridge.queue.errors.QueueError` with a one-line message that never quotes a DSN.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bridge.queue import dead_letters, inspect
from bridge.queue.errors import QueueUnavailable
from bridge.queue.files import open_file
from bridge.queue.operator_spend import insert_spend, spends_since
from bridge.queue.outcomes import retry_now
from bridge.queue.schema import column_text

T = TypeVar("T")


def _stored(text: str) -> str:
    """An operator's id or reason as SQLite holds text: a shell argument that is not UTF-8 arrives
    with lone surrogates, which the driver refuses to encode."""
    return column_text(text, len(text))


def _all_stored(ids: list[str] | None) -> list[str] | None:
    return None if ids is None else [_stored(i) for i in ids]


def _maybe_stored(reason: str | None) -> str | None:
    return None if reason is None else _stored(reason)


class OperatorQueue(Protocol):
    """The operator operations; write operations are safe while bridges claim from the queue."""

    def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest age, records by state (parked apart) and kind, dead letters, history."""

    def retry(self, ids: list[str] | None = None, *, parked: bool = False) -> int:
        """Make READY records that wait for a later attempt due now (all, ``ids``, or the parked
        ones); records being sent or read back are never touched. Returns how many."""

    def dlq_list(self, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
        """The newest dead letters (optionally of one ``reason``), without their bodies."""

    def dlq_show(self, record_id: str) -> dict[str, Any] | None:
        """One dead letter with what it holds, or None."""

    def replay(self, *, ids: list[str] | None = None, reason: str | None = None) -> int:
        """Move dead letters that are records back to the queue (attempts reset); returns how many."""

    def purge(self, *, ids: list[str] | None = None, reason: str | None = None) -> int:
        """Delete dead letters for good (their ids may be stored again); returns how many."""

    def trace(self, ident: str) -> list[dict[str, Any]]:
        """Where a record (by record id) or a whole delivery (by delivery id) stands."""

    def oldest_record(self) -> dict[str, Any] | None:
        """The record that has waited longest and what it waits for (state, attempts, last error)."""

    def recent_deliveries(self, since: float) -> dict[str, int]:
        """Records delivered since ``since`` (epoch seconds), counted by entity."""

    def load_spends(self, since: float) -> list[float]:
        """Send stamps of the requests any process recorded since ``since`` (the spend log)."""

    def record_spend(self, stamp: float) -> None:
        """Note one request to Cortex sent at ``stamp`` (needs a connection opened to write)."""

    def close(self) -> None:
        """Close the connection."""


class SqliteOperator:
    """:class:`OperatorQueue` on a SQLite queue file (read-only unless opened to ``write``)."""

    def __init__(self, path: Path, *, write: bool = False) -> None:
        self.conn = open_file(path, write=write)

    def _run(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise QueueUnavailable(f"queue database error: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        """See :meth:`OperatorQueue.stats`."""
        return self._run(lambda: inspect.stats(self.conn))

    def retry(self, ids: list[str] | None = None, *, parked: bool = False) -> int:
        """See :meth:`OperatorQueue.retry`."""
        return self._run(lambda: retry_now(self.conn, ids=_all_stored(ids), parked=parked))

    def dlq_list(self, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`OperatorQueue.dlq_list`."""
        return self._run(lambda: inspect.dlq_list(self.conn, limit=limit, reason=_maybe_stored(reason)))

    def dlq_show(self, record_id: str) -> dict[str, Any] | None:
        """See :meth:`OperatorQueue.dlq_show`."""
        return self._run(lambda: inspect.dlq_show(self.conn, _stored(record_id)))

    def replay(self, *, ids: list[str] | None = None, reason: str | None = None) -> int:
        """See :meth:`OperatorQueue.replay`."""
        return self._run(lambda: dead_letters.replay(self.conn, ids=_all_stored(ids), reason=_maybe_stored(reason)))

    def purge(self, *, ids: list[str] | None = None, reason: str | None = None) -> int:
        """See :meth:`OperatorQueue.purge`."""
        return self._run(lambda: dead_letters.purge(self.conn, ids=_all_stored(ids), reason=_maybe_stored(reason)))

    def trace(self, ident: str) -> list[dict[str, Any]]:
        """See :meth:`OperatorQueue.trace`."""
        return self._run(lambda: inspect.trace(self.conn, _stored(ident)))

    def oldest_record(self) -> dict[str, Any] | None:
        """See :meth:`OperatorQueue.oldest_record`."""
        return self._run(lambda: inspect.oldest_record(self.conn))

    def recent_deliveries(self, since: float) -> dict[str, int]:
        """See :meth:`OperatorQueue.recent_deliveries`."""
        return self._run(lambda: inspect.recent_deliveries(self.conn, since))

    def load_spends(self, since: float) -> list[float]:
        """See :meth:`OperatorQueue.load_spends`."""
        return self._run(lambda: spends_since(self.conn, since))

    def record_spend(self, stamp: float) -> None:
        """See :meth:`OperatorQueue.record_spend`."""
        self._run(lambda: insert_spend(self.conn, stamp))

    def close(self) -> None:
        """Close the file."""
        self.conn.close()
