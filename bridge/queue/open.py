"""Choosing the queue backend from the settings: SQLite (one replica) or PostgreSQL (any number).

The PostgreSQL backend is imported only when configured, so a SQLite deployment never loads
the driver.
"""

from __future__ import annotations

from bridge.config import QueueSettings
from bridge.queue.backend import QueueBackend
from bridge.queue.store import DurableQueue


async def open_queue(settings: QueueSettings, *, settle_seconds: float = 0.0) -> QueueBackend:
    """Open the queue ``settings`` describe; raises a :class:`~bridge.queue.errors.QueueError`.

    ``settle_seconds``: how long an ambiguous request may still be alive at Cortex (records
    found in flight are read back only after it).
    """
    if settings.backend == "postgres":
        from bridge.queue.errors import QueueUnavailable
        from bridge.queue.postgres import PostgresQueue

        pg = settings.postgres
        try:
            dsn = pg.resolved_dsn()
        except (OSError, ValueError) as exc:
            raise QueueUnavailable(f"cannot read the queue database DSN: {type(exc).__name__}"
                                   f"{': ' + exc.strerror if isinstance(exc, OSError) and exc.strerror else ''}") from None
        return await PostgresQueue.open(
            dsn, pool_size=pg.pool_size, statement_timeout_seconds=pg.statement_timeout_seconds,
            max_records=settings.max_records, max_bytes=settings.max_bytes,
            history_seconds=settings.delivered_history_seconds, settle_seconds=settle_seconds)
    return await DurableQueue.open(
        settings.path, max_records=settings.max_records, max_bytes=settings.max_bytes,
        history_seconds=settings.delivered_history_seconds, settle_seconds=settle_seconds)
