"""Turn a claimed batch of records into the one Cortex request that carries it.

What goes into one request is decided here (which records a bulk request carries, which are
made redundant by a newer value); the paths and bodies come from :mod:`bridge.cortex.endpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.cortex.endpoints import WriteRequest, add_metric_points, create_deploy_or_event, put_custom_data
from bridge.queue import QueuedRecord
from bridge.records import CustomDataRecord, DeployRecord, EventRecord, MetricRecord


@dataclass(frozen=True)
class BatchRequest:
    """The write for one claimed batch, and which of the batch's records it carries."""

    write: WriteRequest
    #: records this request carries, keyed by entity (custom data reports errors per entity)
    entities: dict[str, list[QueuedRecord]]
    #: records made redundant by a newer value in the same batch (custom data overwrites)
    superseded: list[QueuedRecord]

    @property
    def records(self) -> list[QueuedRecord]:
        """Every record of the batch: those carried, then those superseded."""
        return [q for items in self.entities.values() for q in items] + self.superseded


def build_request(batch: list[QueuedRecord]) -> BatchRequest:
    """The request for a batch claimed from one lane (all records share kind and target)."""
    first = batch[0].record
    if isinstance(first, DeployRecord | EventRecord):
        assert len(batch) == 1, "deploys and events have no bulk endpoint"
        return BatchRequest(create_deploy_or_event(first), {first.entity: batch}, [])
    if isinstance(first, MetricRecord):
        points = [q.record for q in batch if isinstance(q.record, MetricRecord)]
        return BatchRequest(add_metric_points(points), {first.entity: batch}, [])
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
    entities: dict[str, list[QueuedRecord]] = {}
    items: list[CustomDataRecord] = []
    for (entity, _key), q in latest.items():
        assert isinstance(q.record, CustomDataRecord)
        items.append(q.record)
        entities.setdefault(entity, []).append(q)
    return BatchRequest(put_custom_data(items), entities, superseded)
