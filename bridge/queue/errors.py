"""What the queue raises to its callers: one family, :class:`QueueError`.

No ``sqlite3.Error`` leaves the package: a database failure reaches a caller as
:class:`QueueUnavailable`, so a source or the sender handles "the queue cannot store this now"
the same way whichever backend keeps the queue. (A record that would not read back is refused
with :class:`bridge.records.UnstorableRecord`: that is the record's fault, not the queue's.)
"""

from __future__ import annotations


class QueueError(Exception):
    """Base class of queue refusals."""


class QueueFull(QueueError):
    """The queue holds its configured maximum of records or bytes; retry later."""


class QueueUnavailable(QueueError):
    """The queue cannot write to disk (full, read-only, I/O error); nothing was stored."""


class QueueFileMissing(QueueError):
    """No queue database at the given path."""


class NotAQueue(QueueError):
    """The file is not a cortex-bridge queue database (the message says why)."""
