"""Sending change failures (bridge/queue/change_failures.py): the event and the deploy's mark.

Both are members of the deploy's group, added by the queue when a failure landed after the
deploy, and both wait, queued, until the deploy's uuid is known:

* the change-failure event is then POSTed with the deploy's uuid and sha (the merged group's)
  added to ``customData.deploy``; its type and time are the record's, so an ambiguous POST is read
  back as any event's. If the deploy never reached Cortex (its reports failed for good), it is
  POSTed without a uuid (``customData.deploy.bridgeId`` still names it) rather than never;
* the mark is never a deploy of its own: its ``customData.changeFailure`` reaches the deploy in the
  coalescing merge (bridge/sender/coalesce.py), a PUT by uuid like any later report's. If no
  report of the deploy is left to create it, the mark is settled unsent (superseded).
"""

from __future__ import annotations

from bridge.cortex.endpoints import WriteRequest, create_deploy_or_event
from bridge.queue.change_failures import CHANGE_FAILURE_SOURCE
from bridge.queue.deploy_groups import DeployGroup
from bridge.queue.enrichment import LINEAGE_SOURCE
from bridge.records import DeployRecord, EventRecord, Record

#: Sources of the records the queue adds to a deploy's group: not reports, never a deploy of their own.
ADDED_SOURCES = frozenset({CHANGE_FAILURE_SOURCE, LINEAGE_SOURCE})


def added_by_bridge(record: Record) -> bool:
    """Whether ``record`` was added to a group by the bridge (a change failure's event or mark, a
    lineage enrichment, bridge/queue/enrichment.py), not reported by a source."""
    return record.provenance.source in ADDED_SOURCES


def reports(group: DeployGroup) -> list[DeployRecord]:
    """The group's deploy reports, without the marks (and the change-failure events)."""
    return [m for m in group.members if isinstance(m, DeployRecord) and not added_by_bridge(m)]


def may_still_be_created(group: DeployGroup) -> bool:
    """Whether the group's deploy may yet get a uuid: its creator is queued, or another report is
    left to take its place (the creator's POST failed for good, or Cortex named no uuid)."""
    if group.uuid is not None:
        return False
    return group.creator == "queued" or any(m.id != group.creator_id for m in reports(group))


def change_failure_event(record: EventRecord, group: DeployGroup) -> WriteRequest:
    """The POST of the change-failure event, naming the deploy's uuid and sha."""
    write = create_deploy_or_event(record)
    body = dict(write.body)
    custom = dict(body["customData"])
    deploy = dict(custom.get("deploy") or {})
    deploy["uuid"] = group.uuid
    creator = [m for m in reports(group) if m.id == group.creator_id]
    everything = [m for m in group.members if isinstance(m, DeployRecord)]  # a lineage enrichment's sha too
    sha = next((m.sha for m in creator + reports(group) + everything if m.sha), None)
    if sha is not None:
        deploy["sha"] = sha
    custom["deploy"] = deploy
    body["customData"] = custom
    return WriteRequest(write.method, write.path, write.endpoint, body)
