"""Sending coalesced deploys: one Cortex deploy per group of reports (bridge/queue/deploy_groups.py).

The group's creator is POSTed as any deploy (an ambiguous POST is read back by its bridge id, the
creator's record id). A later report is sent once the creator's uuid is known, as a PUT by uuid
of the whole merged deploy (a PUT replaces every field); until then it waits, queued. If the
creator was dead-lettered, the next report takes its place and POSTs. Merging is a pure function
of the group's reports, so a repeated PUT (an ambiguous one is simply repeated) sends the same
body or a more complete one; one group's requests are sent one at a time, so a PUT built from
fewer reports never lands after one built from more.

Event groups (an incident's opening and resolution) go the same way, with their own merge and no
merge in the POST (bridge/sender/incidents.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog

from bridge.config import DeploySettings
from bridge.cortex.endpoints import (
    WriteRequest,
    create_deploy_or_event,
    deploy_or_event_body,
    update_deploy,
    update_event,
)
from bridge.queue import QueueBackend, QueuedRecord
from bridge.queue.deploy_groups import DeployGroup
from bridge.records import BRIDGE_ID_KEY, DeployRecord, EventRecord, Record, format_timestamp
from bridge.sender.change_failure import added_by_bridge, change_failure_event, may_still_be_created
from bridge.sender.incidents import merged_event, opens_group

log = structlog.get_logger("bridge.sender")

#: How long a report waits, queued, before looking again whether its deploy's uuid is known
#: (after its creator's next attempt, when the creator is backing off or parked) ...
WAIT_FOR_UUID_SECONDS = 0.25
#: ... and at most this long (an operator's ``queue retry`` may send the creator sooner).
WAIT_FOR_UUID_MAX_SECONDS = 30.0
#: Reports (and URLs) a merged deploy lists at most, the first ones; the rest are counted under
#: ``customData.omitted``. A change reported thousands of times (a sender retrying with new ids)
#: must not grow the deploy towards Cortex's request size limit.
MAX_LISTED = 50
#: Groups share this many locks (group id modulo): bounded memory, rare needless waits.
LOCK_STRIPES = 64

TimestampMode = Literal["first-report", "rollout-complete"]


@dataclass(frozen=True)
class Planned:
    """What to do with one claimed deploy: send ``write`` (None: wait for the creator's POST)."""

    write: WriteRequest | None
    #: a PUT, which may be repeated when its answer is lost
    idempotent: bool = False
    #: nothing to send, ever: settle the record unsent (a mark whose deploy will never exist)
    drop: bool = False
    #: when a report that waits (``write`` None) looks again (see :func:`resume_at`)
    resume_at: float | None = None


def resume_at(group: DeployGroup, now: float) -> float:
    """When a report waiting for its group's uuid looks again: shortly, or just after the creator's
    next attempt if that is later, so that reports of a creator backing off through a Cortex outage
    (or parked on a 404) are not claimed four times a second each; never beyond
    :data:`WAIT_FOR_UUID_MAX_SECONDS`."""
    soon = now + WAIT_FOR_UUID_SECONDS
    if group.creator_due_at is None:
        return soon
    return min(max(soon, group.creator_due_at + WAIT_FOR_UUID_SECONDS), now + WAIT_FOR_UUID_MAX_SECONDS)


def merged_body(creator: DeployRecord, members: Sequence[DeployRecord | EventRecord],
                timestamp: TimestampMode) -> dict[str, Any]:
    """The whole deploy the group's reports describe: the creator's fields, completed by the others.

    ``customData`` keeps every report's keys (the earlier report's value wins), lists each
    report as ``sources`` ({source, id}) and every distinct URL as ``urls`` (the first
    :data:`MAX_LISTED` of each, the rest counted in ``omitted``); the bridge id is the
    creator's, so that a read-back of its POST still finds it.
    """
    everything = [creator] + [m for m in members if m.id != creator.id and isinstance(m, DeployRecord)]
    # A change failure's mark brings only customData.changeFailure, a lineage enrichment only the
    # sha: neither is a report, nor a source.
    ordered = [m for m in everything if not added_by_bridge(m)]
    body = deploy_or_event_body(creator)
    times = [m.timestamp for m in ordered]
    body["timestamp"] = format_timestamp(min(times) if timestamp == "first-report" else max(times))
    for name, among in (("sha", ordered + everything), ("url", ordered)):
        value = next((getattr(m, name) for m in among if getattr(m, name)), None)
        if value is not None:
            body[name] = value
    deployer = next((m.deployer for m in ordered if m.deployer is not None), None)
    if deployer is not None:
        body["deployer"] = deployer.model_dump(exclude_none=True)
    custom: dict[str, Any] = {}
    for member in everything:
        for key, value in (member.custom_data or {}).items():
            custom.setdefault(key, value)
    sources = [{"source": m.provenance.source, "id": m.id} for m in ordered]
    custom["sources"] = sources[:MAX_LISTED]
    urls = list(dict.fromkeys(m.url for m in ordered if m.url))
    if urls:
        custom["urls"] = urls[:MAX_LISTED]
    if len(sources) > MAX_LISTED or len(urls) > MAX_LISTED:
        custom["omitted"] = {"sources": max(0, len(sources) - MAX_LISTED), "urls": max(0, len(urls) - MAX_LISTED)}
    custom[BRIDGE_ID_KEY] = creator.id
    body["customData"] = custom
    return body


class Coalescer:
    """Plans the request of each claimed deploy or grouped event from its group; one group's
    requests at a time."""

    def __init__(self, queue: QueueBackend, deploys: DeploySettings | None) -> None:
        self.queue = queue
        self.timestamp: TimestampMode = deploys.timestamp if deploys is not None else "first-report"
        #: without coalescing no deploy is grouped: no group to look up for each one
        self.deploys = deploys is not None and deploys.coalesce
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]

    def handles(self, record: Record) -> bool:
        """Whether ``record`` may belong to a group (else it is sent as any record of its kind)."""
        if added_by_bridge(record):
            return True  # whatever the settings now: a mark must never be POSTed as a deploy
        return (self.deploys and isinstance(record, DeployRecord)) or (
            isinstance(record, EventRecord) and opens_group(record))

    @contextlib.asynccontextmanager
    async def turn(self, q: QueuedRecord) -> AsyncIterator[Planned]:
        """The plan for ``q``, held (with the group's lock) until its outcome is recorded."""
        record = q.record
        assert isinstance(record, DeployRecord | EventRecord)
        group = await self.queue.deploy_group(record.id)
        if group is None:
            yield Planned(create_deploy_or_event(record))
            return
        async with self._locks[group.group_id % LOCK_STRIPES]:
            # Looked at again under the lock: the request before ours may just have settled.
            group = await self.queue.deploy_group(record.id) or group
            planned = await self._plan(record, group)
            if planned.write is None and not planned.drop:
                planned = replace(planned, resume_at=resume_at(group, time.time()))
            yield planned

    async def wait(self, q: QueuedRecord, planned: Planned) -> None:
        """Put ``q`` back, due shortly, without using an attempt: its deploy's uuid is not known yet
        (or, ``planned.drop``, settle it unsent: there will never be a deploy to mark or enrich)."""
        if planned.drop:
            log.info("deploy_group_record_dropped", record=q.record.id, reason="the deploy was never created")
            await self.queue.mark_delivered([(q.seq, None)], how="superseded")
            return
        await self.queue.reschedule([q.seq], next_attempt_at=planned.resume_at or time.time() + WAIT_FOR_UUID_SECONDS,
                                    error="waiting for the deploy's first report to be delivered", count_attempt=False)

    async def _plan(self, record: DeployRecord | EventRecord, group: DeployGroup) -> Planned:
        creator = next((m for m in group.members if m.id == group.creator_id), None)
        if group.creator_id == record.id:
            return Planned(self._create(record, group))
        if group.events:
            if group.uuid is not None and isinstance(creator, EventRecord):
                body = merged_event(creator.id, group.members)
                return Planned(update_event(record.entity, group.uuid, body), idempotent=True)
        elif isinstance(record, EventRecord):  # a change failure's event (change_failure.py)
            return Planned(None) if may_still_be_created(group) else Planned(change_failure_event(record, group))
        elif group.uuid is not None and isinstance(creator, DeployRecord):
            body = merged_body(creator, group.members, self.timestamp)
            return Planned(update_deploy(record.entity, group.uuid, body), idempotent=True)
        elif added_by_bridge(record):  # a mark or enrichment never creates: it waits for a report that does
            return Planned(None, drop=not may_still_be_created(group))
        # The creating POST failed for good (or Cortex named no uuid): this report creates.
        failed = group.creator in ("dead", "gone") or (group.creator == "delivered" and group.uuid is None)
        if failed and await self.queue.take_over_deploy_group(group.group_id, record.id, group.creator_id):
            log.info("deploy_group_taken_over", group=group.group_id, record=record.id, previous=group.creator_id)
            return Planned(self._create(record, group))
        return Planned(None)

    def _create(self, record: DeployRecord | EventRecord, group: DeployGroup) -> WriteRequest:
        members = [m for m in group.members if m.id != record.id]
        write = create_deploy_or_event(record)
        if not members or isinstance(record, EventRecord):  # an event's POST is never merged (incidents.py)
            return write
        return WriteRequest(write.method, write.path, write.endpoint, merged_body(record, members, self.timestamp))
