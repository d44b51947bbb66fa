"""Appends (the group-commit transaction) and source state on PostgreSQL.

Dedupe is the unique keys' work, inside the appending transaction: a delivery is new if its
``INSERT INTO deliveries ... ON CONFLICT DO NOTHING`` returned it, a record id if its insert
into ``admitted`` did. When two replicas append the same delivery at once, the second insert
waits on the first transaction's key and then finds it taken: the delivery is stored once.
Keys are inserted in sorted order (deliveries, then record ids, then state keys), so two
transactions never wait on each other in a circle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from bridge.queue.deploy_groups import DeployPolicy
from bridge.queue.errors import QueueUnavailable
from bridge.queue.group_commit import AppendResult, GroupCommit, Submission
from bridge.queue.postgres.core import PgCore
from bridge.queue.postgres.deploy_groups import group_pg
from bridge.queue.postgres.schema import stored_text
from bridge.queue.rows import Row

#: After a failed commit, appends are refused at once for this long before one is tried again.
REFUSE_AFTER_FAILURE_SECONDS = 1.0
#: Above every character a key can hold: ``[prefix, prefix + END)`` is the range of keys under it.
_KEY_RANGE_END = "\U0010ffff"


class PgWrites(PgCore, GroupCommit):
    """Appending records and source state; reading and forgetting source state."""

    _failed_at = -float("inf")

    async def _commit(self, batch: list[Submission]) -> list[AppendResult]:
        if not self.writable and time.monotonic() - self._failed_at < REFUSE_AFTER_FAILURE_SECONDS:
            # Known down: answer 503 now instead of each webhook waiting for a connection the
            # pool cannot make; a commit is tried again a second later (or the probe succeeds).
            raise QueueUnavailable("the last write failed; waiting for the database to take writes again")
        try:
            results, added, size = await self._tx(lambda conn: _append(conn, batch, self.deploy_policy))
        except QueueUnavailable:
            self._failed_at = time.monotonic()
            raise
        self._counted(added, size)
        return results

    async def get_state(self, key: str) -> str | None:
        """A source's persisted state value."""
        async def read(conn: AsyncConnection[Any]) -> str | None:
            cur = await conn.execute("SELECT value FROM source_state WHERE key = %s", (stored_text(key),))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._tx(read)

    async def get_states(self, prefix: str) -> dict[str, str]:
        """All persisted state values whose key starts with ``prefix``."""
        low = stored_text(prefix)

        async def read(conn: AsyncConnection[Any]) -> dict[str, str]:
            cur = await conn.execute("SELECT key, value FROM source_state WHERE key >= %s AND key < %s",
                                     (low, low + _KEY_RANGE_END))
            return {k: v for k, v in await cur.fetchall()}

        return await self._tx(read)

    async def get_states_of(self, keys: Sequence[str]) -> dict[str, str]:
        """The persisted values of ``keys`` (those that have one), by the keys as given."""
        stored = {stored_text(key): key for key in keys}

        async def read(conn: AsyncConnection[Any]) -> dict[str, str]:
            cur = await conn.execute("SELECT key, value FROM source_state WHERE key = ANY(%s)", (list(stored),))
            return {stored[k]: v for k, v in await cur.fetchall()}

        return await self._tx(read)

    async def put_state(self, updates: dict[str, str]) -> None:
        """Persist source state without records (same durability as an append)."""
        await self.append([], state_updates=updates)

    async def forget_state(self, keys: Sequence[str]) -> int:
        """Delete the state under ``keys`` (one transaction); returns how many keys there were."""
        stored = sorted({stored_text(key) for key in keys})

        async def forget(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute("DELETE FROM source_state WHERE key = ANY(%s)", (stored,))
            return cur.rowcount

        return await self._tx(forget)

    async def purge_empty_states(self, prefix: str) -> int:
        """Delete the keys under ``prefix`` whose value is empty (tombstones); returns how many."""
        low = stored_text(prefix)

        async def purge(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute(
                "DELETE FROM source_state WHERE key >= %s AND key < %s AND value = ''", (low, low + _KEY_RANGE_END))
            return cur.rowcount

        return await self._tx(purge)


async def _append(conn: AsyncConnection[Any], batch: list[Submission],
                  policy: DeployPolicy | None) -> tuple[list[AppendResult], int, int]:
    """The group commit's statements; returns the results, and the records and bytes added."""
    now = time.time()
    firsts: dict[tuple[str, str], Submission] = {}
    for sub in batch:
        if sub.delivery is not None:
            firsts.setdefault(_delivery_key(sub.delivery), sub)
    wanted = sorted(firsts)
    new_deliveries: set[tuple[str, str]] = set()
    if wanted:
        cur = await conn.execute(
            "INSERT INTO deliveries (source, delivery_id, seen_at, record_ids)"
            " SELECT s, d, %s, r FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(s, d, r)"
            " ON CONFLICT DO NOTHING RETURNING source, delivery_id",
            (now, [w[0] for w in wanted], [w[1] for w in wanted],
             [json.dumps([r[0] for r in firsts[w].rows]) for w in wanted]))
        new_deliveries = {(r[0], r[1]) for r in await cur.fetchall()}
    admitted: list[Submission] = []
    for sub in batch:
        if sub.delivery is not None:
            key = _delivery_key(sub.delivery)
            # The same delivery twice in one batch: the first submission stores it.
            if key not in new_deliveries or firsts[key] is not sub:
                continue
        admitted.append(sub)
    ids = sorted({row[0] for sub in admitted for row in sub.rows})
    fresh_ids: set[str] = set()
    if ids:
        cur = await conn.execute(
            "INSERT INTO admitted (id, admitted_at) SELECT i, %s FROM unnest(%s::text[]) AS v(i)"
            " ON CONFLICT DO NOTHING RETURNING id", (now, ids))
        fresh_ids = {r[0] for r in await cur.fetchall()}
    results: dict[int, AppendResult] = {}
    fresh: list[Row] = []
    linked: list[int] = []  # sizes of the records change failures add (postgres/change_failures.py)
    states: dict[str, str] = {}
    for sub in admitted:
        new_ids, dup_ids = [], []
        for row in sub.rows:
            if row[0] in fresh_ids:
                fresh_ids.discard(row[0])  # a second copy in this batch is a duplicate
                new_ids.append(row[0])
                fresh.append(row)
            else:
                dup_ids.append(row[0])
        states.update({stored_text(k): stored_text(v) for k, v in sub.state_updates.items()})
        results[id(sub)] = AppendResult(new_ids, dup_ids)
        if sub.deploys and policy is not None:
            skip = await group_pg(conn, policy, [c for c in sub.deploys if c.record_id in new_ids],
                                  {row[0]: row[4] for row in sub.rows}, now, linked)
            if skip:
                fresh = [row for row in fresh if row[0] not in skip]
                results[id(sub)] = AppendResult([i for i in new_ids if i not in skip], dup_ids, skipped_ids=sorted(skip))
    if fresh:
        await conn.execute(
            "INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at, next_attempt_at)"
            " SELECT *, %s, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::int[], %s::float8[])",
            (now, now, *([row[i] for row in fresh] for i in range(7))))
    if states:
        keys = sorted(states)
        await conn.execute(
            "INSERT INTO source_state (key, value, updated_at) SELECT k, v, %s FROM unnest(%s::text[], %s::text[])"
            " AS s(k, v) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (now, keys, [states[k] for k in keys]))
    out = [results.get(id(sub)) or AppendResult([], [r[0] for r in sub.rows], duplicate_delivery=True)
           for sub in batch]
    return out, len(fresh) + len(linked), sum(row[5] for row in fresh) + sum(linked)


def _delivery_key(delivery: tuple[str, str]) -> tuple[str, str]:
    return stored_text(delivery[0]), stored_text(delivery[1])
