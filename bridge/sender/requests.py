"""Turn a claimed batch of records into the one Cortex request that carries it.

This is the only place that knows which endpoint and body each record kind maps to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bridge.queue import QueuedRecord
from bridge.records import (
    CustomDataRecord,
    DeployRecord,
    EventRecord,
    MetricRecord,
    cortex_body,
    custom_data_item,
    metric_point,
)

#: Cortex's documented body limit is 2 MB; keep headroom for JSON framing of the bulk map.
CUSTOM_DATA_MAX_BYTES = 1_900_000
METRIC_POINTS_PER_REQUEST = 100


@dataclass(frozen=True)
class CortexRequest:
    method: str
    path: str
    endpoint: str
    body: dict[str, Any]
    #: records this request carries, keyed by entity (custom data reports errors per entity)
    entities: dict[str, list[QueuedRecord]]
    #: records made redundant by a newer value in the same batch (custom data overwrites)
    superseded: list[QueuedRecord]


def _seg(value: str) -> str:
    return quote(value, safe="")


def build_request(batch: list[QueuedRecord]) -> CortexRequest:
    """The request for a batch claimed from one lane (all records share kind and target)."""
    first = batch[0].record
    if isinstance(first, DeployRecord | EventRecord):
        assert len(batch) == 1, "deploys and events have no bulk endpoint"
        suffix, endpoint = ("deploys", "deploys.create") if first.kind == "deploy" else (
            "custom-events", "custom_events.create")
        return CortexRequest(
            "POST", f"/api/v1/catalog/{_seg(first.entity)}/{suffix}", endpoint, cortex_body(first),
            {first.entity: batch}, [],
        )
    if isinstance(first, MetricRecord):
        points = [metric_point(q.record) for q in batch if isinstance(q.record, MetricRecord)]
        return CortexRequest(
            "POST",
            f"/api/v1/eng-intel/custom-metrics/{_seg(first.key)}/entity/{_seg(first.entity)}/bulk",
            "custom_metrics.bulk",
            {"series": points},
            {first.entity: batch},
            [],
        )
    assert isinstance(first, CustomDataRecord)
    latest: dict[tuple[str, str], QueuedRecord] = {}
    superseded: list[QueuedRecord] = []
    for q in batch:  # batch is in queue order: a later value for the same key wins, as in Cortex
        rec = q.record
        assert isinstance(rec, CustomDataRecord)
        previous = latest.get((rec.entity, rec.key))
        if previous is not None:
            superseded.append(previous)
        latest[(rec.entity, rec.key)] = q
    values: dict[str, list[dict[str, Any]]] = {}
    entities: dict[str, list[QueuedRecord]] = {}
    for (entity, _key), q in latest.items():
        assert isinstance(q.record, CustomDataRecord)
        values.setdefault(entity, []).append(custom_data_item(q.record))
        entities.setdefault(entity, []).append(q)
    return CortexRequest(
        "PUT", "/api/v1/catalog/custom-data", "custom_data.bulk", {"values": values}, entities, superseded
    )


def body_size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, separators=(",", ":")).encode())
