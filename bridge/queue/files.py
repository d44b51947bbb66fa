"""Operator access to a queue file from another process (``queue stats``, ``dlq``, ``trace``).

Every command refuses a file that is not a bridge queue. Safe while the daemon runs: SQLite
serializes writers, reads see committed data only, and no command touches records that are being
sent (``dlq replay`` only moves dead letters back). What goes wrong reaches the command as a
:class:`~bridge.queue.errors.QueueError` whose message says what happened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bridge.queue.errors import QueueFileMissing, QueueUnavailable
from bridge.queue.schema import check_is_queue, connect, connect_readonly

T = TypeVar("T")


def open_file(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """Open a queue file for an operator command.

    Read-only (SQLite ``mode=ro``) unless ``write``: inspecting never creates tables, changes the
    journal mode or writes anything, and a file that is not a bridge queue is refused untouched
    (a write command checks it read-only first, then opens it for writing). Raises
    :class:`QueueFileMissing`, :class:`~bridge.queue.errors.NotAQueue`, or
    :class:`QueueUnavailable` for a file SQLite cannot read.
    """
    if not path.is_file():
        raise QueueFileMissing(f"no queue database at {path}")
    try:
        conn = connect_readonly(str(path))
        try:
            check_is_queue(conn, str(path))
        except BaseException:
            conn.close()
            raise
        if not write:
            return conn
        conn.close()
        return connect(str(path))
    except sqlite3.Error as exc:
        raise QueueUnavailable(f"cannot read queue database: {exc}") from exc


def with_file(path: Path, command: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
    """Run an operator ``command`` (e.g. :func:`bridge.queue.inspect.stats`) on the queue file at ``path``.

    The file is opened as by :func:`open_file` and closed afterwards; a database error during the
    command is raised as :class:`QueueUnavailable`.
    """
    conn = open_file(path, write=write)
    try:
        return command(conn)
    except sqlite3.Error as exc:
        raise QueueUnavailable(f"queue database error: {exc}") from exc
    finally:
        conn.close()
