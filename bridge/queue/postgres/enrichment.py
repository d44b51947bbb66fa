"""Lineage learned after a deploy was sent, on PostgreSQL: the statements of :mod:`bridge.queue.enrichment`.

The enriching transaction takes the advisory lock of the group's entity and environment (the one
appends take, bridge/queue/postgres/deploy_groups.py), so a CI report appended at the same moment
either sees the group's old change or its new one, never half of it.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import AsyncConnection

from bridge.queue.enrichment import ImageGroup
from bridge.queue.postgres.core import PgCore
from bridge.queue.postgres.deploy_groups import HEAD_LOCK
from bridge.queue.rows import queued_rows
from bridge.records import DeployRecord


class PgGroupEnrichment(PgCore):
    """The two operations of :class:`~bridge.queue.enrichment.EnrichableGroups` on PostgreSQL."""

    async def image_deploy_groups(self) -> list[ImageGroup]:
        """Image-only deploy groups created within the coalescing window (none without coalescing)."""
        policy = getattr(self, "deploy_policy", None)
        window = policy.window_seconds if policy is not None else 0.0
        if window <= 0:
            return []

        async def read(conn: AsyncConnection[Any]) -> list[ImageGroup]:
            cur = await conn.execute(
                "SELECT id, entity, environment, change, first_at, creator_id FROM deploy_groups"
                " WHERE created_at >= %s AND change LIKE 'images:%%' ORDER BY created_at, id", (time.time() - window,))
            return [ImageGroup(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), str(r[5]))
                    for r in await cur.fetchall()]

        return await self._tx(read)

    async def enrich_deploy_group(self, group: ImageGroup, record: DeployRecord) -> bool:
        """See :class:`~bridge.queue.enrichment.EnrichableGroups`."""
        assert record.sha
        sha = record.sha.strip().lower()
        rows = queued_rows([record], time.time())

        async def enrich(conn: AsyncConnection[Any]) -> bool:
            now = time.time()
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                               (HEAD_LOCK, f"{group.entity}\x1f{group.environment}"))
            cur = await conn.execute("UPDATE deploy_groups SET change = %s WHERE id = %s AND change = %s",
                                     ("sha:" + sha, group.group_id, group.change))
            if cur.rowcount != 1:
                return False
            await conn.execute("INSERT INTO admitted (id, admitted_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                               (record.id, now))
            async with conn.cursor() as many:
                await many.executemany(
                    "INSERT INTO records (id, kind, lane, source, body, size, received_at, enqueued_at, next_attempt_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
            await conn.execute("INSERT INTO deploy_members (record_id, group_id, body) VALUES (%s, %s, %s)"
                               " ON CONFLICT DO NOTHING", (record.id, group.group_id, rows[0][4]))
            return True

        done = await self._tx(enrich)
        if done:
            self._counted(1, rows[0][5])
            self._notify_ready()
        return done
