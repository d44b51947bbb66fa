"""The durable queue: SQLite in WAL mode with group commit, composed of its operations.

:class:`DurableQueue` is :class:`~bridge.queue.core.QueueCore` (the database thread, connection
and counts) with one mixin per concern; this module adds what needs all of them: opening (with
crash recovery) and closing.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bridge.queue.claims import Claims
from bridge.queue.dead_letters import DeadLetters
from bridge.queue.deploy_groups import DeployGroups
from bridge.queue.enrichment import GroupEnrichment
from bridge.queue.errors import QueueUnavailable
from bridge.queue.history import History
from bridge.queue.outcomes import Outcomes
from bridge.queue.schema import State, connect, transaction
from bridge.queue.source_state import SourceState
from bridge.queue.spend import SpendRows


class DurableQueue(SourceState, Claims, Outcomes, DeadLetters, History, SpendRows, DeployGroups, GroupEnrichment):
    """SQLite-backed queue of records, dead letters and delivery history."""

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_records: int = 1_000_000,
        max_bytes: int = 1 << 30,
        history_seconds: float = 7 * 86400,
        settle_seconds: float = 0.0,
    ) -> DurableQueue:
        """Open (creating if needed) and recover: work that was in flight at a crash is resolved.

        ``settle_seconds``: how long an ambiguous request may still be alive at Cortex; records
        found SENDING (a request may have been in flight at the crash) are read back only then.
        Raises :class:`QueueUnavailable` when the file cannot be opened or recovered.
        """
        queue = cls(path, max_records=max_records, max_bytes=max_bytes, history_seconds=history_seconds,
                    settle_seconds=settle_seconds)
        queue._init_group_commit()
        await queue._run(queue._open_sync)
        queue._start_writer()
        queue._publish_gauges()
        return queue

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = connect(str(self.path))
        except sqlite3.DatabaseError as exc:
            raise QueueUnavailable(f"cannot open queue database {self.path}: {exc}") from exc
        conn = self._conn
        with transaction(conn):
            # A record claimed for a non-idempotent request may have reached Cortex: read back first.
            conn.execute("UPDATE records SET state = ?, next_attempt_at = ? WHERE state = ?",
                         (State.AMBIGUOUS, time.time() + self.settle_seconds, State.SENDING))
            conn.execute("UPDATE records SET state = ? WHERE state = ?", (State.READY, State.CLAIMED))
        self._recount_sync()

    async def close(self) -> None:
        """Flush pending appends, then close the database."""
        await self._stop_writer()
        if self._conn is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a failed checkpoint loses nothing: the WAL is replayed on the next open
        self._conn.close()
        self._conn = None
