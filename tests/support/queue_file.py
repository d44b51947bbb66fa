"""Looking into a running queue's file from a test, as another reader (or a failing disk) would."""

from __future__ import annotations

from typing import Any

from bridge.queue import DurableQueue, QueueBackend, inspect


def sqlite_queue(queue: QueueBackend) -> DurableQueue:
    """``queue`` as the SQLite queue these helpers read (a bridge's queue is typed as any backend)."""
    assert isinstance(queue, DurableQueue), f"an SQLite queue is needed here, not {type(queue).__name__}"
    return queue


def stored_rows(queue: QueueBackend, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from ``queue``'s file, read on a read-only connection of its own."""
    conn = inspect.open_file(sqlite_queue(queue).path)
    try:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


async def queue_pragma(backend: QueueBackend, pragma: str) -> list[tuple[Any, ...]]:
    """Run ``PRAGMA pragma`` on the queue's own connection, on its database thread (e.g. to make writes fail)."""
    queue = sqlite_queue(backend)
    conn = queue.conn
    return await queue._run(lambda: [tuple(row) for row in conn.execute(f"PRAGMA {pragma}").fetchall()])
