"""Appends on SQLite: one transaction (one fsync) for each group commit.

The append front (reserving room, batching producers, releasing them after the commit) is
:class:`~bridge.queue.group_commit.GroupCommit`; this is the transaction it commits.
"""

from __future__ import annotations

import json
import sqlite3
import time

from bridge.queue.core import QueueCore
from bridge.queue.deploy_groups import group_sync
from bridge.queue.group_commit import AppendResult, GroupCommit, Submission
from bridge.queue.schema import state_key, transaction
from bridge.queue.totals import insert_records

__all__ = ["AppendResult", "Appends", "Submission", "known_ids"]


class Appends(QueueCore, GroupCommit):
    """Appending records (and source state) durably, many producers per commit (group_commit.py)."""

    async def _commit(self, batch: list[Submission]) -> list[AppendResult]:
        return await self._run(self._write_sync, batch)

    def _write_sync(self, batch: list[Submission]) -> list[AppendResult]:
        # A handful of statements per group commit, not two per submission: measured ~110 -> ~75 us
        # per record with 64 concurrent appends (docs/benchmarks.md).
        conn = self.conn
        now = time.time()
        results: list[AppendResult | None] = [None] * len(batch)
        with transaction(conn):
            seen = _seen_deliveries(conn, [sub.delivery for sub in batch if sub.delivery is not None])
            deliveries = []
            admitted: list[tuple[int, Submission]] = []
            for i, sub in enumerate(batch):
                if sub.delivery is not None:
                    if sub.delivery in seen:
                        results[i] = AppendResult([], [r[0] for r in sub.rows], duplicate_delivery=True)
                        continue
                    seen.add(sub.delivery)
                    deliveries.append((*sub.delivery, now, json.dumps([r[0] for r in sub.rows])))
                admitted.append((i, sub))
            known = known_ids(conn, [r[0] for _, sub in admitted for r in sub.rows])
            fresh: list[tuple[str, str, str, str, str, int, float, float, float]] = []
            states: list[tuple[str, str, float]] = []
            for i, sub in admitted:
                new_ids, dup_ids = [], []
                for row in sub.rows:
                    if row[0] in known:
                        dup_ids.append(row[0])
                    else:
                        known.add(row[0])
                        new_ids.append(row[0])
                        fresh.append((*row, now, now))
                states.extend((state_key(key), state_key(value), now) for key, value in sub.state_updates.items())
                results[i] = AppendResult(new_ids, dup_ids)
                if sub.deploys and self.deploy_policy is not None:
                    bodies = {row[0]: row[4] for row in sub.rows}
                    skip = group_sync(conn, self.deploy_policy, [c for c in sub.deploys if c.record_id in new_ids],
                                      bodies, now)
                    if skip:
                        fresh = [row for row in fresh if row[0] not in skip]
                        new_ids[:] = [rid for rid in new_ids if rid not in skip]
                        results[i] = AppendResult(new_ids, dup_ids, skipped_ids=sorted(skip))
            if deliveries:
                conn.executemany(
                    "INSERT INTO deliveries (source, delivery_id, seen_at, record_ids) VALUES (?, ?, ?, ?)", deliveries
                )
            insert_records(conn, fresh)
            if states:
                conn.executemany(
                    "INSERT INTO source_state (key, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    states,
                )
        self._recount_sync()
        return [r for r in results if r is not None]


def _seen_deliveries(conn: sqlite3.Connection, deliveries: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (source, delivery id) pairs were stored before."""
    seen: set[tuple[str, str]] = set()
    for start in range(0, len(deliveries), 300):
        chunk = deliveries[start : start + 300]
        pairs = ",".join("(?, ?)" for _ in chunk)
        seen.update((r[0], r[1]) for r in conn.execute(
            # CROSS JOIN keeps the constant rows outside, so each pair is a primary-key search.
            f"SELECT d.source, d.delivery_id FROM (VALUES {pairs}) AS v CROSS JOIN deliveries AS d"
            " ON d.source = v.column1 AND d.delivery_id = v.column2",
            [part for pair in chunk for part in pair]))
    return seen


def known_ids(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Ids already queued, delivered (within history) or dead-lettered."""
    known: set[str] = set()
    for start in range(0, len(ids), 300):
        chunk = ids[start : start + 300]
        marks = ",".join("?" * len(chunk))
        known.update(r[0] for r in conn.execute(
            f"SELECT id FROM records WHERE id IN ({marks}) UNION ALL SELECT id FROM delivered WHERE id IN ({marks})"
            f" UNION ALL SELECT id FROM dead WHERE id IN ({marks})", chunk * 3))
    return known
