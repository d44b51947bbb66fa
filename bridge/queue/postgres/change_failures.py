"""Change failures on PostgreSQL: the statements of :mod:`bridge.queue.change_failures`.

The ``change_failures`` primary key decides, inside the appending transaction, whether this
(deploy, failure) pair is new: of two replicas appending one failure, one inserts it (and so adds
the event and the mark); the failure's record id is admitted once anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from bridge.queue.change_failures import FailureClaim, FailurePolicy, GroupRow, linked_records
from bridge.queue.rows import queued_rows

_CANDIDATES = ("SELECT id, environment, first_at, creator_id FROM deploy_groups WHERE entity = %s"
               " AND change NOT LIKE 'event:%%' AND first_at BETWEEN %s AND %s AND id <> %s")


async def link_pg(conn: AsyncConnection[Any], policy: FailurePolicy, claims: Sequence[FailureClaim], now: float,
                  added_sizes: list[int] | None = None) -> None:
    """Link each failure of ``claims`` to the deploy before it (inside the append's transaction);
    the sizes of the records it adds are appended to ``added_sizes`` (the replica's depth count)."""
    for claim in claims:
        cur = await conn.execute("SELECT g.id, g.creator_id FROM deploy_members m JOIN deploy_groups g"
                                 " ON g.id = m.group_id WHERE m.record_id = %s", (claim.record_id,))
        own = await cur.fetchone()
        if claim.rollback and (own is None or own[1] != claim.record_id):
            continue  # another report of a rollback already counted (or not a grouped deploy)
        sql = _CANDIDATES
        params: list[Any] = [claim.entity, claim.at - policy.window_seconds, claim.at, int(own[0]) if own else -1]
        if claim.environment is not None:
            sql, params = sql + " AND environment = %s", [*params, claim.environment]
        cur = await conn.execute(sql + " ORDER BY first_at DESC, id DESC LIMIT 1", params)
        row = await cur.fetchone()
        if row is None:
            continue
        group: GroupRow = (int(row[0]), str(row[1]), float(row[2]), str(row[3]))
        cur = await conn.execute("INSERT INTO change_failures (group_id, failure_id, created_at) VALUES (%s, %s, %s)"
                                 " ON CONFLICT DO NOTHING", (group[0], claim.record_id, now))
        if cur.rowcount != 1:
            continue  # this (deploy, failure) was linked before
        rows = queued_rows(linked_records(policy, claim, group), now)
        await conn.execute("INSERT INTO admitted (id, admitted_at) SELECT i, %s FROM unnest(%s::text[]) AS v(i)"
                           " ON CONFLICT DO NOTHING", (now, [row[0] for row in rows]))
        async with conn.cursor() as many:
            await many.executemany(
                "INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at, next_attempt_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
            await many.executemany("INSERT INTO deploy_members (record_id, group_id, body) VALUES (%s, %s, %s)"
                                   " ON CONFLICT DO NOTHING", [(row[0], group[0], row[4]) for row in rows])
        if added_sizes is not None:
            added_sizes.extend(int(row[5]) for row in rows)
