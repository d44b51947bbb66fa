"""Deploy groups on PostgreSQL: the statements of :mod:`bridge.queue.deploy_groups`.

Replicas append at once: before reading an entity's head group, the appending transaction takes
a transaction-scoped advisory lock on (entity, environment), in sorted order, so of two
replicas appending reports of one new deploy exactly one creates the group and the other joins it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from bridge.queue.change_failures import FailureClaim
from bridge.queue.deploy_groups import (
    EVENT_ENVIRONMENT,
    Claim,
    DeployGroup,
    DeployPolicy,
    creator_state,
    members_of,
)
from bridge.queue.postgres.change_failures import link_pg
from bridge.queue.postgres.core import PgCore

#: The group a report joins: as bridge/queue/deploy_groups.py's ``_JOINED``, in PostgreSQL's words.
_JOINED = ("SELECT g.id FROM deploy_groups g WHERE g.entity = %s AND g.environment = %s AND g.change = %s"
           " AND g.first_at BETWEEN %s AND %s AND NOT EXISTS (SELECT 1 FROM deploy_groups o"
           " WHERE o.entity = g.entity AND o.environment = g.environment"
           " AND o.first_at BETWEEN LEAST(g.first_at, %s) AND GREATEST(g.first_at, %s) AND o.change <> g.change)"
           " ORDER BY abs(g.first_at - %s), g.id LIMIT 1")

#: The advisory-lock namespace of deploy heads (the first key of the two-key form).
HEAD_LOCK = 0x44504C59  # "DPLY"


async def group_pg(conn: AsyncConnection[Any], policy: DeployPolicy, claims: Sequence[Claim],
                   bodies: dict[str, str], now: float, added_sizes: list[int] | None = None) -> set[str]:
    """Group ``claims`` inside the append's transaction, then link the change failures among
    them (the sizes of the records that adds go to ``added_sizes``); returns the ids not to store."""
    for key in sorted({c.head_key for c in claims if not isinstance(c, FailureClaim)}):
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (HEAD_LOCK, key))
    skipped: set[str] = set()
    failures: list[FailureClaim] = []
    for claim in claims:
        if isinstance(claim, FailureClaim):
            failures.append(claim)
            continue
        window = policy.window_seconds
        if claim.exact:  # an event group: the group of its change, whatever the time between them
            cur = await conn.execute("SELECT id FROM deploy_groups WHERE entity = %s AND environment = %s"
                                     " AND change = %s ORDER BY id LIMIT 1",
                                     (claim.entity, claim.environment, claim.change))
        else:
            cur = await conn.execute(_JOINED, (claim.entity, claim.environment, claim.change, claim.at - window,
                                               claim.at + window, claim.at, claim.at, claim.at))
        found = await cur.fetchone()
        group = int(found[0]) if found is not None else None
        if group is None:
            if claim.mode == "enrich-only":
                skipped.add(claim.record_id)
                continue
            cur = await conn.execute(
                "INSERT INTO deploy_groups (entity, environment, change, first_at, creator_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (claim.entity, claim.environment, claim.change, claim.at, claim.record_id, now))
            row = await cur.fetchone()
            assert row is not None
            group = int(row[0])
        await conn.execute("INSERT INTO deploy_members (record_id, group_id, body) VALUES (%s, %s, %s)"
                           " ON CONFLICT DO NOTHING", (claim.record_id, group, bodies[claim.record_id]))
    await link_pg(conn, policy.failures, [f for f in failures if f.record_id not in skipped], now, added_sizes)
    return skipped


class PgDeployGroups(PgCore):
    """The sender's side of deploy groups on PostgreSQL."""

    async def deploy_group(self, record_id: str) -> DeployGroup | None:
        """The group ``record_id`` belongs to, or None (not coalesced)."""
        async def read(conn: AsyncConnection[Any]) -> DeployGroup | None:
            cur = await conn.execute("SELECT g.id, g.creator_id, g.environment FROM deploy_members m JOIN deploy_groups g"
                                     " ON g.id = m.group_id WHERE m.record_id = %s", (record_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            group_id, creator, events = int(row[0]), str(row[1]), row[2] == EVENT_ENVIRONMENT
            cur = await conn.execute(
                "SELECT (SELECT cortex_uuid FROM delivered WHERE id = %s), EXISTS (SELECT 1 FROM delivered WHERE id = %s),"
                " (SELECT next_attempt_at FROM records WHERE id = %s), EXISTS (SELECT 1 FROM dead WHERE id = %s)",
                (creator, creator, creator, creator))
            found = await cur.fetchone()
            assert found is not None
            uuid, delivered, due, dead = found
            cur = await conn.execute("SELECT body FROM deploy_members WHERE group_id = %s AND record_id NOT IN"
                                     " (SELECT id FROM dead) ORDER BY n", (group_id,))
            bodies = [str(b) for (b,) in await cur.fetchall()]
            state = creator_state(due is not None, (uuid,) if delivered else None, bool(dead))
            return DeployGroup(group_id, creator, state, uuid, members_of(bodies), events,
                               float(due) if due is not None else None)

        return await self._tx(read)

    async def take_over_deploy_group(self, group_id: int, record_id: str, previous: str) -> bool:
        """Make ``record_id`` the group's creator in place of ``previous`` (whose POST failed for good)."""
        async def update(conn: AsyncConnection[Any]) -> bool:
            cur = await conn.execute("UPDATE deploy_groups SET creator_id = %s WHERE id = %s AND creator_id = %s",
                                     (record_id, group_id, previous))
            return cur.rowcount == 1

        return await self._tx(update)
