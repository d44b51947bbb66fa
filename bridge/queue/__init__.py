"""The durable queue every source writes to and the sender reads from."""

from bridge.queue.store import (
    AppendResult,
    BatchPolicy,
    DurableQueue,
    QueuedRecord,
    QueueError,
    QueueFull,
    QueueUnavailable,
)

__all__ = [
    "AppendResult",
    "BatchPolicy",
    "DurableQueue",
    "QueueError",
    "QueueFull",
    "QueueUnavailable",
    "QueuedRecord",
]
