"""Lineage learned after a deploy was sent: the image-only deploy gets its sha (docs/deploy-identity.md).

A deploy group whose change is its images (no sha was known when its first report was appended)
may learn its commit later, when CI reports which commit built the image. The source side
(bridge/sources/lineage.py, which alone parses image references) asks for the image-only groups
created within the coalescing window (:meth:`GroupEnrichment.image_deploy_groups`) and, for a
group whose image it now knows, enriches it (:meth:`GroupEnrichment.enrich_deploy_group`): in
one transaction the group's change becomes the sha, so a later CI report of that sha joins it,
and an *enrichment* report carrying only the sha joins the group, so the sender PUTs the deploy
with its sha (bridge/sender/coalesce.py; never a deploy of its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from bridge.queue.core import QueueCore
from bridge.queue.rows import queued_rows
from bridge.queue.schema import transaction
from bridge.queue.totals import insert_records
from bridge.records import DeployRecord, Provenance, record_id

#: Source of the enrichment reports.
LINEAGE_SOURCE = "lineage"


@dataclass(frozen=True)
class ImageGroup:
    """A deploy group known by its images only."""

    group_id: int
    entity: str
    environment: str
    #: ``images:<sorted references>`` (bridge/queue/deploy_groups.py :func:`change_of`)
    change: str
    first_at: float
    creator_id: str

    @property
    def images(self) -> list[str]:
        """The image references of the group's change."""
        return [ref for ref in self.change.removeprefix("images:").split(",") if ref]


@runtime_checkable
class EnrichableGroups(Protocol):
    """A queue whose image-only deploy groups may learn their sha (both backends)."""

    async def image_deploy_groups(self) -> list[ImageGroup]:
        """Image-only deploy groups created within the coalescing window (none without coalescing)."""
        ...

    async def enrich_deploy_group(self, group: ImageGroup, record: DeployRecord) -> bool:
        """Make ``record``'s sha the change of ``group`` and ``record`` one of its reports, unless
        the group's change is no longer its images; returns whether it did."""
        ...


def enrichment_report(group: ImageGroup, sha: str) -> DeployRecord:
    """The report that brings ``sha`` to ``group``'s deploy (a deterministic id: once per group and sha)."""
    return DeployRecord(id=record_id(LINEAGE_SOURCE, "sha", group.creator_id, sha), entity=group.entity,
                        provenance=Provenance(source=LINEAGE_SOURCE), title="commit lineage",
                        timestamp=datetime.fromtimestamp(group.first_at, tz=UTC), sha=sha,
                        environment=group.environment or None)


class GroupEnrichment(QueueCore):
    """The two operations on SQLite."""

    async def image_deploy_groups(self) -> list[ImageGroup]:
        """Image-only deploy groups created within the coalescing window (none without coalescing)."""
        policy = getattr(self, "deploy_policy", None)
        window = policy.window_seconds if policy is not None else 0.0
        if window <= 0:
            return []
        rows = await self._run(lambda: self.conn.execute(
            "SELECT id, entity, environment, change, first_at, creator_id FROM deploy_groups"
            " WHERE created_at >= ? AND change LIKE 'images:%' ORDER BY created_at, id", (time.time() - window,)).fetchall())
        return [ImageGroup(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), str(r[5])) for r in rows]

    async def enrich_deploy_group(self, group: ImageGroup, record: DeployRecord) -> bool:
        """See :class:`EnrichableGroups`."""
        assert record.sha
        sha = record.sha.strip().lower()

        def enrich() -> bool:
            now = time.time()
            rows = queued_rows([record], now)
            with transaction(self.conn):
                updated = self.conn.execute("UPDATE deploy_groups SET change = ? WHERE id = ? AND change = ?",
                                            ("sha:" + sha, group.group_id, group.change))
                if updated.rowcount != 1:
                    return False
                insert_records(self.conn, rows, skip_present=True)
                self.conn.execute("INSERT OR IGNORE INTO deploy_members (record_id, group_id, body) VALUES (?, ?, ?)",
                                  (record.id, group.group_id, rows[0][4]))
            self._recount_sync()
            return True

        done = await self._run(enrich)
        if done:
            self._notify_ready()
        return done

