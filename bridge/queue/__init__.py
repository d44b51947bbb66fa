"""The durable queue every source writes to and the sender reads from."""

from bridge.queue.store import (
    AppendResult,
    BatchPolicy,
    DurableQueue,
    QueuedRecord,
    QueueError,
    QueueFull,
    QueueUnavailable,
    Unreadable,
    point_key,
)

__all__ = [
    "AppendResult",
    "BatchPolicy",
    "DurableQueue",
    "QueueError",
    "QueueFull",
    "QueueUnavailable",
    "QueuedRecord",
    "Unreadable",
    "point_key",
]
