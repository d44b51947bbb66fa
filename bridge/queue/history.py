"""Delivery history: what was delivered and which deliveries were seen, kept ``history_seconds``.

Dedup (an id delivered within the history is not stored again), ``trace`` and reconciliation
read it; :meth:`History.prune_history` forgets what is older.
"""

from __future__ import annotations

import time

from bridge.queue.core import QueueCore
from bridge.queue.schema import transaction


class History(QueueCore):
    """Expiring delivered ids, delivered metric points and seen delivery ids."""

    async def prune_history(self, chunk: int = 5000) -> int:
        """Forget delivered ids, delivery ids and deploy groups older than the configured history.

        In transactions of at most ``chunk`` rows per table: between them the database thread
        takes appends, so a large expiry (an hour of a busy metric stream) never holds up input.
        """
        cutoff = time.time() - self.history_seconds
        total = 0
        while True:
            removed = await self._run(self._prune_sync, cutoff, chunk)
            total += removed
            if removed == 0:
                return total

    def _prune_sync(self, cutoff: float, chunk: int) -> int:
        with transaction(self.conn):
            n = self.conn.execute(
                "DELETE FROM delivered WHERE id IN"
                " (SELECT id FROM delivered WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            n += self.conn.execute(
                "DELETE FROM delivered_points WHERE id IN"
                " (SELECT id FROM delivered_points WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            n += self.conn.execute(
                "DELETE FROM deliveries WHERE (source, delivery_id) IN"
                " (SELECT source, delivery_id FROM deliveries WHERE seen_at < ? ORDER BY seen_at LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            # Deploy groups (deploy_groups.py) long past their window: members first, then groups.
            old_groups = "SELECT id FROM deploy_groups WHERE created_at < ? ORDER BY id LIMIT ?"
            self.conn.execute(f"DELETE FROM deploy_members WHERE group_id IN ({old_groups})", (cutoff, chunk))
            self.conn.execute(f"DELETE FROM change_failures WHERE group_id IN ({old_groups})", (cutoff, chunk))
            n += self.conn.execute(f"DELETE FROM deploy_groups WHERE id IN ({old_groups})", (cutoff, chunk)).rowcount
        return int(n)

