"""Resolve records whose delivery outcome is unknown by reading Cortex back.

Cortex stores a duplicate whenever a POST is resent, and has no idempotency key. So a deploy,
event or metric batch whose request timed out or lost its connection is never resent blindly:
first read back what Cortex has, mark what is there as delivered, and make only the rest ready
again. Deploys and events are matched exactly by the bridge id the sender puts in their
``customData``; metric points (which carry only timestamp and value) by their multiset of
(timestamp, value) in the batch's time range — a bulk write is stored whole or not at all.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import structlog

from bridge import metrics
from bridge.cortex.client import CortexClient
from bridge.queue import DurableQueue, QueuedRecord
from bridge.records import BRIDGE_ID_KEY, DeployRecord, EventRecord, MetricRecord, parse_timestamp

log = structlog.get_logger("bridge.reconcile")


def _naive_utc(ts: Any) -> str:
    """Cortex documents list time filters as date-times without a zone (UTC)."""
    return str(parse_timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])


async def reconcile_ambiguous(queue: DurableQueue, client: CortexClient) -> int:
    """Resolve every ambiguous record; returns how many were resolved this pass.

    A lane whose read-back fails stays ambiguous and is tried again on the next pass.
    """
    pending = await queue.ambiguous()
    lanes: dict[tuple[str, str, str], list[QueuedRecord]] = defaultdict(list)
    for q in pending:
        rec = q.record
        key = rec.key if isinstance(rec, MetricRecord) else ""
        lanes[(rec.kind, rec.entity, key)].append(q)
    resolved = 0
    for (kind, entity, key), items in lanes.items():
        try:
            if kind == "deploy":
                found = await _deploys_present(client, entity, items)
            elif kind == "event":
                found = await _events_present(client, entity, items)
            elif kind == "metric":
                found = await _points_present(client, entity, key, items)
            else:  # idempotent kinds are never ambiguous; resend
                found = {}
        except Exception as exc:  # a failed read leaves the lane ambiguous for the next pass
            log.warning("reconcile_read_failed", kind=kind, entity=entity, error=str(exc))
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
    return resolved


async def _deploys_present(
    client: CortexClient, entity: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None]:
    deploys = await client.list_all(
        f"/api/v1/catalog/{quote(entity, safe='')}/deploys", "deployments", endpoint="deploys.list"
    )
    by_bridge_id = {
        (d.get("customData") or {}).get(BRIDGE_ID_KEY): d.get("uuid") for d in deploys if isinstance(d, dict)
    }
    return {q.seq: by_bridge_id[q.record.id] for q in items if q.record.id in by_bridge_id}


async def _events_present(
    client: CortexClient, entity: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None]:
    found: dict[int, str | None] = {}
    for q in items:
        rec = q.record
        assert isinstance(rec, EventRecord | DeployRecord)
        params = {
            "type": rec.type,
            "startTime": _naive_utc(rec.timestamp - timedelta(seconds=1)),
            "endTime": _naive_utc(rec.timestamp + timedelta(seconds=1)),
        }
        events = await client.list_all(
            f"/api/v1/catalog/{quote(entity, safe='')}/custom-events", "events",
            endpoint="custom_events.list", params=params,
        )
        for event in events:
            if (event.get("customData") or {}).get(BRIDGE_ID_KEY) == rec.id:
                found[q.seq] = event.get("uuid")
                break
    return found


async def _points_present(
    client: CortexClient, entity: str, key: str, items: Sequence[QueuedRecord]
) -> dict[int, str | None]:
    records = [q.record for q in items if isinstance(q.record, MetricRecord)]
    start = min(r.timestamp for r in records) - timedelta(seconds=1)
    end = max(r.timestamp for r in records) + timedelta(seconds=1)
    data = await client.list_all(
        f"/api/v1/eng-intel/custom-metrics/{quote(key, safe='')}/entity/{quote(entity, safe='')}",
        "data", endpoint="custom_metrics.list",
        params={"startDate": _naive_utc(start), "endDate": _naive_utc(end)},
    )
    available: Counter[tuple[float, float]] = Counter(
        (round(parse_timestamp(p["timestamp"]).timestamp(), 3), float(p["value"])) for p in data
    )
    found: dict[int, str | None] = {}
    for q in items:
        rec = q.record
        assert isinstance(rec, MetricRecord)
        point = (round(rec.timestamp.timestamp(), 3), rec.value)
        if available[point] > 0:
            available[point] -= 1
            found[q.seq] = None
    return found
