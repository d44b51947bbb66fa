"""The durable queue every source writes to and the sender reads from.

Callers see operations, never SQL, and one exception family (:class:`QueueError`).
:class:`QueueBackend` (``backend.py``) is the protocol of those operations; :class:`DurableQueue`
implements it on SQLite.

Layout: ``core.py`` holds what every operation shares (the one database thread, its connection,
depth and gauges) and each concern is a mixin of it, holding both its async operations and the
SQL they run: ``appends.py`` (group commit), ``claims.py`` (claiming lanes, ambiguous records),
``outcomes.py`` (delivered, rescheduled, ambiguous), ``dead_letters.py`` (the only writer of
``dead``, replay and purge included), ``source_state.py``, ``history.py`` (pruning), ``spend.py``
(the request spend log); ``store.py`` composes them into :class:`DurableQueue` with opening and
closing. Mixins rather than operation modules taking a connection: every operation needs the
same few pieces of shared state (counts, listeners, writability) next to the connection, and a
mixin reaches them as ``self`` without a context object passed through every call; the
composed class is still one object with one thread, which is what the durability argument
rests on. A PostgreSQL backend implements :class:`QueueBackend` with its own class.

Operator commands from another process: ``operator.py`` (:class:`OperatorQueue`, the
operations defined once, and its SQLite implementation), ``open.py`` (choosing the backend),
``files.py`` (opening a queue file), ``inspect.py`` (read-only statements both engines run:
stats, dead letters, trace) and ``dead_letters.replay``/``purge``; the PostgreSQL side is
``postgres/operator.py``.
"""

from bridge.queue.appends import AppendResult
from bridge.queue.backend import QueueBackend
from bridge.queue.claims import BatchPolicy, QueuedRecord
from bridge.queue.dead_letters import Unreadable
from bridge.queue.errors import NotAQueue, QueueError, QueueFileMissing, QueueFull, QueueUnavailable
from bridge.queue.outcomes import point_key
from bridge.queue.poison import RawInput
from bridge.queue.store import DurableQueue

__all__ = [
    "AppendResult",
    "BatchPolicy",
    "DurableQueue",
    "NotAQueue",
    "QueueBackend",
    "QueueError",
    "QueueFileMissing",
    "QueueFull",
    "QueueUnavailable",
    "QueuedRecord",
    "RawInput",
    "Unreadable",
    "point_key",
]
