"""Choosing the queue backend from the settings: SQLite (one replica) or PostgreSQL (any number).

:func:`open_queue` opens the queue a bridge runs on, :func:`open_operator` the one an
operator's command (``queue stats``, ``dlq``, ``trace``) works on. The PostgreSQL backend is
imported only when configured, so a SQLite deployment never loads the driver.
"""

from __future__ import annotations

from bridge.config import DeploySettings, QueueSettings
from bridge.queue.backend import QueueBackend
from bridge.queue.deploy_groups import DeployPolicy
from bridge.queue.errors import QueueUnavailable
from bridge.queue.operator import OperatorQueue, SqliteOperator
from bridge.queue.store import DurableQueue


def _dsn(settings: QueueSettings) -> str:
    """The configured DSN; a failure to read it names the kind of failure, never the DSN."""
    try:
        return settings.postgres.resolved_dsn()
    except (OSError, ValueError) as exc:
        if type(exc) is ValueError:  # resolved_dsn's own: an empty file or no DSN, never its text
            raise QueueUnavailable(f"cannot read the queue database DSN: {exc}") from None
        # Not str(exc): a decoding error quotes what the file holds.
        raise QueueUnavailable(f"cannot read the queue database DSN: {type(exc).__name__}"
                               f"{': ' + exc.strerror if isinstance(exc, OSError) and exc.strerror else ''}") from None


async def open_queue(settings: QueueSettings, *, settle_seconds: float = 0.0,
                     deploys: DeploySettings | None = None) -> QueueBackend:
    """Open the queue ``settings`` describe; raises a :class:`~bridge.queue.errors.QueueError`.

    ``settle_seconds``: how long an ambiguous request may still be alive at Cortex (records
    found in flight are read back only after it). ``deploys``: coalescing and per-source deploy
    modes, applied at append (bridge/queue/deploy_groups.py).
    """
    queue = await _open_queue(settings, settle_seconds)
    queue.deploy_policy = None if deploys is None else DeployPolicy.of(deploys)
    return queue


async def _open_queue(settings: QueueSettings, settle_seconds: float) -> QueueBackend:
    if settings.backend == "postgres":
        from bridge.queue.postgres import PostgresQueue

        pg = settings.postgres
        return await PostgresQueue.open(
            _dsn(settings), pool_size=pg.pool_size, statement_timeout_seconds=pg.statement_timeout_seconds,
            max_records=settings.max_records, max_bytes=settings.max_bytes,
            history_seconds=settings.delivered_history_seconds, settle_seconds=settle_seconds)
    return await DurableQueue.open(
        settings.path, max_records=settings.max_records, max_bytes=settings.max_bytes,
        history_seconds=settings.delivered_history_seconds, settle_seconds=settle_seconds)


def open_operator(settings: QueueSettings, *, write: bool = False) -> OperatorQueue:
    """An operator's connection to the queue ``settings`` describe (read-only unless ``write``).

    Raises a :class:`~bridge.queue.errors.QueueError`: the file or database is missing, not a
    bridge queue, or cannot be read.
    """
    if settings.backend == "postgres":
        from bridge.queue.postgres.operator import PgOperator

        return PgOperator.open(_dsn(settings), write=write,
                               statement_timeout_seconds=settings.postgres.statement_timeout_seconds)
    return SqliteOperator(settings.path, write=write)
