"""Resolve records whose delivery outcome is unknown by reading Cortex back.

Cortex stores a duplicate whenever a POST is resent, and has no idempotency key. So a deploy,
event or metric batch whose request timed out or lost its connection is never resent blindly:
first read back what Cortex has, mark what is there as delivered, and make only the rest ready
again. Deploys and events are matched exactly by the bridge id the sender puts in their
``customData``; metric points (which carry only timestamp and value) as a multiset: of the
points equal to an ambiguous one that Cortex holds, those the bridge delivered before are
subtracted, and only what is left can account for the ambiguous ones.

The timing rule: a read-back proves nothing while the original request may still be alive at
Cortex (the client gave up at its timeout; the server may commit later). So an ambiguous record
is read back only after its *settle time* (``cortex.reconcile_settle_seconds``, which must exceed
the longest a request can live server-side), and a metric lane is not claimed while it holds an
ambiguous point, so nothing of the lane is in flight while it is counted. A record found
missing after settling is resent; should that resend be ambiguous too, it settles and is read
back again before any further resend.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import timedelta

import structlog

from bridge import metrics
from bridge.cortex.client import CortexClient
from bridge.cortex.endpoints import bridge_id_of, list_custom_events, list_deploys, list_metric_points
from bridge.queue import QueueBackend, QueuedRecord, point_key
from bridge.records import DeployRecord, EventRecord, MetricRecord, lane_of

log = structlog.get_logger("bridge.reconcile")


async def reconcile_ambiguous(queue: QueueBackend, client: CortexClient) -> tuple[int, int]:
    """Resolve every settled ambiguous record; returns (resolved, left for a later pass).

    A lane whose read-back fails, or changed while it was read, stays ambiguous and is tried
    again on the next pass.
    """
    pending = await queue.ambiguous(settled_by=time.time())
    lanes: dict[tuple[str, str, str], list[QueuedRecord]] = defaultdict(list)
    for q in pending:
        rec = q.record
        key = rec.key if isinstance(rec, MetricRecord) else ""
        lanes[(rec.kind, rec.entity, key)].append(q)
    resolved = left = 0
    for (kind, entity, key), items in lanes.items():
        try:
            if kind == "deploy":
                found = await _deploys_present(client, entity, items)
            elif kind == "event":
                found = await _events_present(client, entity, items)
            elif kind == "metric":
                points = await _points_present(queue, client, entity, key, items)
                if points is None:
                    left += len(items)
                    continue
                found = points
            else:  # idempotent kinds are never ambiguous; resend
                found = {}
        except Exception as exc:  # a failed read leaves the lane ambiguous for the next pass
            log.warning("reconcile_read_failed", kind=kind, entity=entity, error=str(exc))
            left += len(items)
            continue
        present = [(q.seq, found[q.seq]) for q in items if q.seq in found]
        missing = [q.seq for q in items if q.seq not in found]
        if present:
            await queue.mark_delivered(present, how="reconciled")
            metrics.AMBIGUOUS_RECONCILED.labels(kind, "found").inc(len(present))
            for q in items:
                if q.seq in found:
                    metrics.RECORDS_DELIVERED.labels(q.record.provenance.source, kind).inc()
        if missing:
            await queue.reschedule(missing, next_attempt_at=time.time(), error="not stored; resending",
                                   count_attempt=False)
            metrics.AMBIGUOUS_RECONCILED.labels(kind, "resent").inc(len(missing))
        log.info("reconciled", kind=kind, entity=entity, found=len(present), resend=len(missing))
        resolved += len(items)
    return resolved, left


async def _deploys_present(
    client: CortexClient, entity: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None]:
    deploys = await client.list_all(list_deploys(entity))
    by_bridge_id = {bridge_id_of(d): d.get("uuid") for d in deploys if isinstance(d, dict)}
    return {q.seq: by_bridge_id[q.record.id] for q in items if q.record.id in by_bridge_id}


async def _events_present(
    client: CortexClient, entity: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None]:
    found: dict[int, str | None] = {}
    for q in items:
        rec = q.record
        assert isinstance(rec, EventRecord | DeployRecord)
        events = await client.list_all(list_custom_events(
            entity, rec.type, rec.timestamp - timedelta(seconds=1), rec.timestamp + timedelta(seconds=1)))
        for event in events:
            if bridge_id_of(event) == rec.id:
                found[q.seq] = event.get("uuid")
                break
    return found


async def _points_present(
    queue: QueueBackend, client: CortexClient, entity: str, key: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None] | None:
    """Which ambiguous points Cortex holds; ``None`` when the lane moved while it was read."""
    records = [q.record for q in items if isinstance(q.record, MetricRecord)]
    started = time.time()
    start = min(r.timestamp for r in records) - timedelta(seconds=1)
    end = max(r.timestamp for r in records) + timedelta(seconds=1)
    data = await client.list_all(list_metric_points(key, entity, start, end))
    delivered, moved = await queue.delivered_points(lane_of(records[0]), since=started)
    if moved:
        log.info("reconcile_lane_moved", entity=entity, key=key)
        return None
    available = Counter(point_key(p["timestamp"], p["value"]) for p in data)
    available.subtract(delivered)  # equal points the bridge delivered before are not these
    found: dict[int, str | None] = {}
    for q in items:
        rec = q.record
        assert isinstance(rec, MetricRecord)
        point = point_key(rec.timestamp, rec.value)
        if available[point] > 0:
            available[point] -= 1
            found[q.seq] = None
    return found
