"""The spend log from an operator's connection: what a command sends to Cortex counts in the window.

A command that asks Cortex (``doctor``, ``dlq register-entities``) beside a running bridge must
count its requests where the bridge counts its own, in the queue database's ``spend`` table
(bridge/queue/spend.py), or the two together could exceed Cortex's quota. Opening the queue
as the daemon does would run crash recovery under the running bridge; so the command records
through its :class:`~bridge.queue.operator.OperatorQueue` connection instead, one committed
row per request: on SQLite recorded (and loaded at the first request) in SQL both engines run;
on PostgreSQL, where replicas share the log, each request admitted as a replica's is.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bridge.queue.inspect import Reader

if TYPE_CHECKING:
    from bridge.queue.operator import OperatorQueue


def spends_since(conn: Reader, since: float) -> list[float]:
    """Send stamps (wall clock) in the ``spend`` table at or after ``since``, oldest first."""
    rows = conn.execute("SELECT sent_at FROM spend WHERE sent_at >= ? ORDER BY sent_at", (since,))
    return [float(r[0]) for r in rows]


def insert_spend(conn: Reader, stamp: float) -> None:
    """Note one request sent at ``stamp`` (autocommit: durable when it returns)."""
    conn.execute("INSERT INTO spend (sent_at) VALUES (?)", (stamp,))


@runtime_checkable
class SharedOperatorSpend(Protocol):
    """An operator's connection to a spend log replicas share (PostgreSQL): each request takes
    its slot as a replica's does, under the same lock (bridge/queue/postgres/keeping.py)."""

    def admit_spend(self, replica: str, *, room: int, span: float) -> float | None:
        """``None`` once the request is recorded, else the seconds until one may be."""


class OperatorSpendLog:
    """:class:`~bridge.cortex.budget.SpendLog` on an operator's connection.

    The calls block the event loop for one small statement each: a command sends a few
    requests one after another, so there is nothing to overlap them with.
    """

    def __init__(self, queue: OperatorQueue) -> None:
        self.queue = queue
        #: the command among the processes sharing the log (host and pid say which, when read)
        self.replica = f"{socket.gethostname()}:{os.getpid()}:operator-{uuid.uuid4().hex[:8]}"

    @property
    def shared(self) -> bool:
        """Whether replicas spend from the log at the same time (then every request is admitted)."""
        return isinstance(self.queue, SharedOperatorSpend)

    async def admit(self, room: int, span: float) -> float:
        """Record one request now if the others' requests of the last ``span`` seconds leave room."""
        assert isinstance(self.queue, SharedOperatorSpend)
        wait = self.queue.admit_spend(self.replica, room=room, span=span)
        return 0.0 if wait is None else max(0.01, wait)

    async def load(self, since: float) -> list[float]:
        """What every process recorded since ``since``."""
        return self.queue.load_spends(since)

    async def record(self) -> None:
        """Note one request about to be sent now."""
        self.queue.record_spend(time.time())
