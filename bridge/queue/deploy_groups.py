"""Deploy groups: which queued deploy reports are one Cortex deploy (docs/deploy-identity.md).

A deploy's identity is (entity, environment, change): the change is its commit sha, or else the
sorted image references of ``customData.images`` (container -> image, as the Kubernetes source
sets it) or ``customData.image``. At append time, in the same transaction as the records (so it
survives restarts, and on PostgreSQL two replicas cannot both create), each report either
creates a group (it will be POSTed) or joins the group of the same change on its entity and
environment whose first report is within the window, by deploy time. A report of a change after
a different one was deployed (in deploy time) is a new group, never a merge.

The group's Cortex uuid is the one its creator's delivery recorded (``delivered.cortex_uuid``,
written with the delivery), so it is known exactly when the creator is delivered. The SQLite
statements are here; the PostgreSQL ones in ``postgres/deploy_groups.py``.

Custom events that are one Cortex event use the same groups (*event groups*): an event whose
``customData.opened_event`` names a record id (an incident's opening names itself, its
resolution names the opening) joins the group of that id on its entity, whatever the time
between them; the first of them to arrive creates the group (and is POSTed), the others update
that event by its uuid (bridge/sender/incidents.py). Their groups are kept apart from deploys'
by an environment no deploy has (:data:`EVENT_ENVIRONMENT`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bridge.config import DeploySettings
from bridge.queue.change_failures import OPENED_EVENT_KEY, FailureClaim, FailurePolicy, failure_of, link_sync
from bridge.queue.core import QueueCore
from bridge.records import DeployRecord, EventRecord, Record, record_from_json

#: Deploy types that are a change reaching an environment; SCALE and RESTART are never merged.
COALESCED_TYPES = frozenset({"DEPLOY", "ROLLBACK"})

CreatorState = Literal["queued", "delivered", "dead", "gone"]

#: The environment of event groups: a unit separator, which no deploy environment holds.
EVENT_ENVIRONMENT = "\x1fevents"


@dataclass(frozen=True)
class DeployPolicy:
    """What the queue needs of ``deploys`` settings: the window and each source's mode."""

    window_seconds: float
    modes: dict[str, str] = field(default_factory=dict)
    #: change failures (bridge/queue/change_failures.py); they need coalescing (deploy groups)
    failures: FailurePolicy = FailurePolicy()

    @classmethod
    def of(cls, settings: DeploySettings) -> DeployPolicy:
        """The policy ``settings`` describe; window 0 when coalescing is off (modes still apply)."""
        failures = FailurePolicy(settings.change_failure_window_seconds or 0.0, settings.change_failure_event_type,
                                 frozenset(settings.change_failure_signals)) if settings.coalesce else FailurePolicy()
        return cls(settings.window_seconds if settings.coalesce else 0.0, dict(settings.sources), failures)

    def mode(self, source: str) -> str:
        return self.modes.get(source, "create")


@dataclass(frozen=True)
class DeployClaim:
    """One appended deploy report's identity, time and its source's mode."""

    record_id: str
    entity: str
    environment: str
    change: str
    at: float
    mode: str
    #: an event group's claim: joins the group of its change whatever the time between them
    exact: bool = False

    @property
    def head_key(self) -> str:
        """The entity and environment whose groups a report may join."""
        return f"{self.entity}\x1f{self.environment}"


@dataclass(frozen=True)
class DeployGroup:
    """A group as the sender needs it: who creates it, how far that got, and every live report."""

    group_id: int
    creator_id: str
    creator: CreatorState
    uuid: str | None
    members: list[DeployRecord | EventRecord]
    #: an event group (an incident's events), not a deploy's
    events: bool = False
    #: when the creator, queued, is next due (it may be backing off or parked); None unless queued
    creator_due_at: float | None = None


def change_of(record: DeployRecord) -> str | None:
    """The change a deploy carries: its sha, else its image references; None if neither."""
    if record.sha:
        return "sha:" + record.sha.strip().lower()
    custom = record.custom_data or {}
    images = custom.get("images")
    refs = [str(v) for v in images.values()] if isinstance(images, dict) else []
    if not refs and isinstance(custom.get("image"), str):
        refs = [custom["image"]]
    return "images:" + ",".join(sorted(set(refs))) if refs else None


#: What an appended record asks of the groups: to join one, or to be linked as a change failure.
Claim = DeployClaim | FailureClaim


def claims_of(policy: DeployPolicy, records: Sequence[Record]) -> tuple[list[Record], list[Claim]]:
    """The records to store (a source with mode ``off`` stores no deploys) and their claims."""
    kept: list[Record] = []
    claims: list[Claim] = []
    for record in records:
        failure = failure_of(policy.failures, record)
        if failure is not None:
            claims.append(failure)  # linked after every group claim of the append is grouped
        if not isinstance(record, DeployRecord):
            kept.append(record)
            opened = (record.custom_data or {}).get(OPENED_EVENT_KEY) if isinstance(record, EventRecord) else None
            if isinstance(record, EventRecord) and isinstance(opened, str) and opened:
                claims.append(DeployClaim(record.id, record.entity, EVENT_ENVIRONMENT, "event:" + opened,
                                          record.timestamp.timestamp(), "create", exact=True))
            continue
        mode = policy.mode(record.provenance.source)
        if mode == "off" or (mode == "enrich-only" and policy.window_seconds <= 0):
            continue  # without coalescing there is nothing an enrich-only report could enrich
        kept.append(record)
        change = change_of(record) if record.type in COALESCED_TYPES else None
        if change is not None and policy.window_seconds > 0:
            claims.append(DeployClaim(record.id, record.entity, record.environment or "", change,
                                      record.timestamp.timestamp(), mode))
    return kept, claims


#: The group a report joins (see :func:`group_sync`): of its change, within the window, nearest in
#: deploy time, with no group of another change between them (then it is a redeploy). Indexed on
#: both sides (deploy_groups_change, deploy_groups_near): a busy entity's other groups are not read.
_JOINED = ("SELECT g.id FROM deploy_groups g WHERE g.entity = ? AND g.environment = ? AND g.change = ?"
           " AND g.first_at BETWEEN ? AND ? AND NOT EXISTS (SELECT 1 FROM deploy_groups o"
           " WHERE o.entity = g.entity AND o.environment = g.environment"
           " AND o.first_at BETWEEN min(g.first_at, ?) AND max(g.first_at, ?) AND o.change != g.change)"
           " ORDER BY abs(g.first_at - ?), g.id LIMIT 1")


def creator_state(in_records: bool, delivered: tuple[str | None] | None, in_dead: bool) -> CreatorState:
    """How far a group's creating report got."""
    if delivered is not None:
        return "delivered"
    return "queued" if in_records else "dead" if in_dead else "gone"


# -- SQLite --------------------------------------------------------------------------------------


def group_sync(conn: sqlite3.Connection, policy: DeployPolicy, claims: Iterable[Claim],
               bodies: dict[str, str], now: float) -> set[str]:
    """Group ``claims`` (inside the append's transaction), then link the change failures among
    them; returns the ids not to store."""
    skipped: set[str] = set()
    failures: list[FailureClaim] = []
    for claim in claims:
        if isinstance(claim, FailureClaim):
            failures.append(claim)
            continue
        window = policy.window_seconds
        if claim.exact:  # an event group: the group of its change, whatever the time between them
            row = conn.execute("SELECT id FROM deploy_groups WHERE entity = ? AND environment = ? AND change = ?"
                               " ORDER BY id LIMIT 1", (claim.entity, claim.environment, claim.change)).fetchone()
        else:
            row = conn.execute(_JOINED, (claim.entity, claim.environment, claim.change, claim.at - window,
                                         claim.at + window, claim.at, claim.at, claim.at)).fetchone()
        group = row[0] if row is not None else None
        if group is None:
            if claim.mode == "enrich-only":
                skipped.add(claim.record_id)
                continue
            group = conn.execute(
                "INSERT INTO deploy_groups (entity, environment, change, first_at, creator_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (claim.entity, claim.environment, claim.change, claim.at, claim.record_id, now)).fetchone()[0]
        conn.execute("INSERT OR IGNORE INTO deploy_members (record_id, group_id, body) VALUES (?, ?, ?)",
                     (claim.record_id, group, bodies[claim.record_id]))
    link_sync(conn, policy.failures, [f for f in failures if f.record_id not in skipped], now)
    return skipped


class DeployGroups(QueueCore):
    """The sender's side of deploy groups on SQLite."""

    async def deploy_group(self, record_id: str) -> DeployGroup | None:
        """The group ``record_id`` belongs to, or None (not coalesced)."""
        return await self._run(self._group_sync, record_id)

    def _group_sync(self, record_id: str) -> DeployGroup | None:
        conn = self.conn
        row = conn.execute("SELECT g.id, g.creator_id, g.environment FROM deploy_members m JOIN deploy_groups g"
                           " ON g.id = m.group_id WHERE m.record_id = ?", (record_id,)).fetchone()
        if row is None:
            return None
        group_id, creator, environment = row
        delivered = conn.execute("SELECT cortex_uuid FROM delivered WHERE id = ?", (creator,)).fetchone()
        due = conn.execute("SELECT next_attempt_at FROM records WHERE id = ?", (creator,)).fetchone()
        state = creator_state(due is not None, delivered,
                              conn.execute("SELECT 1 FROM dead WHERE id = ?", (creator,)).fetchone() is not None)
        bodies = conn.execute("SELECT body FROM deploy_members WHERE group_id = ? AND record_id NOT IN"
                              " (SELECT id FROM dead) ORDER BY n", (group_id,)).fetchall()
        return DeployGroup(group_id, creator, state, delivered[0] if delivered else None, members_of(b for (b,) in bodies),
                           environment == EVENT_ENVIRONMENT, float(due[0]) if due is not None else None)

    async def take_over_deploy_group(self, group_id: int, record_id: str, previous: str) -> bool:
        """Make ``record_id`` the group's creator in place of ``previous`` (whose POST failed for good)."""
        def update() -> bool:
            cur = self.conn.execute("UPDATE deploy_groups SET creator_id = ? WHERE id = ? AND creator_id = ?",
                                    (record_id, group_id, previous))
            return cur.rowcount == 1

        return await self._run(update)


def members_of(bodies: Iterable[str]) -> list[DeployRecord | EventRecord]:
    """The group's reports from their stored bodies, in append order."""
    return [r for r in (record_from_json(b) for b in bodies) if isinstance(r, DeployRecord | EventRecord)]
