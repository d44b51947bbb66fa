"""What every queue backend keeps the same way: its limits, its depth, and who to tell when.

Both backends count undelivered records and bytes as they change them (the SQLite file has one
writer; a PostgreSQL replica recounts at every gauge refresh), and both tell listeners when
records became ready and when this process took the sending over from another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge import metrics
from bridge.queue.errors import QueueUnavailable


class QueueSignals:
    """Limits, depth and listeners; the base of each backend's core."""

    def __init__(self, *, max_records: int, max_bytes: int, history_seconds: float, settle_seconds: float) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.history_seconds = history_seconds
        self.settle_seconds = settle_seconds
        self.writable = True
        self._count = 0
        self._bytes = 0
        self._ready_listeners: list[Callable[[], None]] = []
        self._takeover_listeners: list[Callable[[], None]] = []

    def on_sender_takeover(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when this process became the deployment's one sender after another
        (before its first claim). A SQLite file has one process, so it never fires there."""
        self._takeover_listeners.append(callback)

    def _notify_takeover(self) -> None:
        for callback in self._takeover_listeners:
            callback()

    async def may_send(self) -> bool:
        """Whether this process may claim and send now. A SQLite file has one process: always."""
        return True

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever records became ready (new or put back)."""
        self._ready_listeners.append(callback)

    def _notify_ready(self) -> None:
        for callback in self._ready_listeners:
            callback()

    @property
    def depth(self) -> int:
        """Undelivered records (a PostgreSQL replica's view: exact after each gauge refresh)."""
        return self._count

    @property
    def is_full(self) -> bool:
        """Whether the queue holds its maximum of records or bytes."""
        return self._count >= self.max_records or self._bytes >= self.max_bytes

    async def probe_writable(self) -> bool:
        """Try a tiny durable write; readiness comes back as soon as the store takes writes again."""
        try:
            await self._write_probe()
        except QueueUnavailable:
            self.writable = False
        else:
            self.writable = True
        metrics.QUEUE_WRITABLE.set(1 if self.writable else 0)
        return self.writable

    def _write_probe(self) -> Awaitable[None]:
        """The backend's tiny durable write (raises :class:`QueueUnavailable`)."""
        raise NotImplementedError
