"""Change failures: an incident, a failed rollout or a rollback after a deploy (docs/deploy-identity.md).

At append, in the same transaction as the records (so it survives restarts, and happens once
whichever replica appends), a *failure signal* — an incident's opening event, an event of one of
``deploys.change_failure_signals`` (failed rollouts), or the first report of a ``ROLLBACK``
deploy — that lands on an entity at most ``deploys.change_failure_window_seconds`` after a
deploy group's first report (on the failure's environment; any environment when the failure
names none) is linked to the latest such deploy, once per (deploy, failure): the
``change_failures`` row is the proof. The link adds two records, both of source
:data:`CHANGE_FAILURE_SOURCE` and both members of the deploy's group, so that the sender sends
them once the deploy's uuid is known (bridge/sender/change_failure.py):

* a custom event (``change_failure_event_type``) at the failure's time, naming the deploy and
  the failure; the sender adds the deploy's uuid and sha;
* a *mark*: a deploy report carrying only ``customData.changeFailure``, which the coalescing
  merge puts on the deploy (a PUT by uuid), never a deploy of its own.

The SQLite statements are here; the PostgreSQL ones in ``postgres/change_failures.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from bridge.queue.rows import queued_rows
from bridge.queue.totals import insert_records
from bridge.records import DeployRecord, EventRecord, Provenance, Record, format_timestamp, record_id

#: ``customData`` key of an event naming the record id of the event it is (or updates).
OPENED_EVENT_KEY = "opened_event"
#: Source of the records a change failure adds (the event and the deploy's mark).
CHANGE_FAILURE_SOURCE = "change-failure"
#: ``customData`` key of the mark on the deploy.
MARK_KEY = "changeFailure"


@dataclass(frozen=True)
class FailureClaim:
    """An appended record that may be a change failure of the deploy before it."""

    record_id: str
    entity: str
    #: None: the failure names no environment (the entity's latest deploy in any environment)
    environment: str | None
    at: float
    kind: Literal["event", "deploy"]
    type: str
    title: str
    #: a ROLLBACK: only its group's first report is a failure, and never of its own group
    rollback: bool = False


@dataclass(frozen=True)
class FailurePolicy:
    """What ``deploys.change_failure_*`` settings say; window 0: no change failures."""

    window_seconds: float = 0.0
    event_type: str = "change-failure"
    signals: frozenset[str] = frozenset()


def failure_of(policy: FailurePolicy, record: Record) -> FailureClaim | None:
    """The failure claim ``record`` makes, if it is a failure signal."""
    if policy.window_seconds <= 0:
        return None
    if isinstance(record, DeployRecord):
        if record.type != "ROLLBACK":
            return None
        return FailureClaim(record.id, record.entity, record.environment or "", record.timestamp.timestamp(),
                            "deploy", record.type, record.title, rollback=True)
    if not isinstance(record, EventRecord) or record.provenance.source == CHANGE_FAILURE_SOURCE:
        return None
    custom = record.custom_data or {}
    if custom.get(OPENED_EVENT_KEY) != record.id and record.type not in policy.signals:
        return None  # neither an incident's opening nor a failed rollout
    environment = custom.get("environment")
    return FailureClaim(record.id, record.entity, environment if isinstance(environment, str) and environment else None,
                        record.timestamp.timestamp(), "event", record.type, record.title)


#: A deploy group a failure may be of: (id, environment, first_at, creator_id).
GroupRow = tuple[int, str, float, str]


def linked_records(policy: FailurePolicy, claim: FailureClaim, group: GroupRow) -> tuple[EventRecord, DeployRecord]:
    """The change-failure event and the deploy's mark for ``claim`` on ``group``."""
    group_id, environment, first_at, creator = group
    failure = {"id": claim.record_id, "kind": claim.kind, "type": claim.type, "title": claim.title}
    after = round(claim.at - first_at, 3)
    at = datetime.fromtimestamp(claim.at, tz=UTC)
    provenance = Provenance(source=CHANGE_FAILURE_SOURCE)
    event = EventRecord(
        id=record_id(CHANGE_FAILURE_SOURCE, "event", creator, claim.record_id), entity=claim.entity,
        provenance=provenance, type=policy.event_type, title=f"Change failure: {claim.title}", timestamp=at,
        description=f"{claim.type} {after:g} s after a deploy to {environment or 'its environment'}",
        custom_data={"deploy": {"bridgeId": creator, "environment": environment}, "failure": failure,
                     "secondsAfterDeploy": after})
    mark = DeployRecord(
        id=record_id(CHANGE_FAILURE_SOURCE, "mark", creator, claim.record_id), entity=claim.entity,
        provenance=provenance, title="change failure", environment=environment or None,
        # The group's first time: a mark never moves the deploy's time, whichever report's it takes.
        timestamp=datetime.fromtimestamp(first_at, tz=UTC),
        custom_data={MARK_KEY: {"event": event.id, "failure": failure, "at": format_timestamp(at),
                                "secondsAfterDeploy": after}})
    return event, mark


# -- SQLite --------------------------------------------------------------------------------------

_CANDIDATES = ("SELECT id, environment, first_at, creator_id FROM deploy_groups WHERE entity = ?"
               " AND change NOT LIKE 'event:%' AND first_at BETWEEN ? AND ? AND id != ?")


def link_sync(conn: sqlite3.Connection, policy: FailurePolicy, claims: Iterable[FailureClaim], now: float) -> None:
    """Link each failure of ``claims`` to the deploy before it (inside the append's transaction)."""
    for claim in claims:
        own = conn.execute("SELECT g.id, g.creator_id FROM deploy_members m JOIN deploy_groups g ON g.id = m.group_id"
                           " WHERE m.record_id = ?", (claim.record_id,)).fetchone()
        if claim.rollback and (own is None or own[1] != claim.record_id):
            continue  # another report of a rollback already counted (or not a grouped deploy)
        sql, params = _CANDIDATES, [claim.entity, claim.at - policy.window_seconds, claim.at, own[0] if own else -1]
        if claim.environment is not None:
            sql, params = sql + " AND environment = ?", [*params, claim.environment]
        row = conn.execute(sql + " ORDER BY first_at DESC, id DESC LIMIT 1", params).fetchone()
        if row is None:
            continue
        group: GroupRow = (int(row[0]), str(row[1]), float(row[2]), str(row[3]))
        if conn.execute("INSERT OR IGNORE INTO change_failures (group_id, failure_id, created_at) VALUES (?, ?, ?)",
                        (group[0], claim.record_id, now)).rowcount != 1:
            continue  # this (deploy, failure) was linked before
        rows = queued_rows(linked_records(policy, claim, group), now)
        insert_records(conn, rows, skip_present=True)
        conn.executemany("INSERT OR IGNORE INTO deploy_members (record_id, group_id, body) VALUES (?, ?, ?)",
                         [(row[0], group[0], row[4]) for row in rows])
