"""Turn a claimed batch of records into the one Cortex request that carries it.

What goes into one request is decided here (which records a bulk request carries, which are
made redundant by a newer value); the paths and bodies come from :mod:`bridge.cortex.endpoints`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from bridge.cortex.endpoints import (
    WriteRequest,
    add_metric_points,
    create_deploy_or_event,
    put_custom_data,
    put_dependencies,
    put_openapi_docs,
)
from bridge.queue import QueuedRecord
from bridge.records import (
    CustomDataRecord,
    DependencyRecord,
    DeployRecord,
    DocsRecord,
    EventRecord,
    MetricRecord,
    Record,
)


@dataclass(frozen=True)
class BatchRequest:
    """The write for one claimed batch, and which of the batch's records it carries."""

    write: WriteRequest
    #: records this request carries, keyed by entity (custom data reports errors per entity)
    entities: dict[str, list[QueuedRecord]]
    #: records made redundant by a newer value in the same batch (custom data, dependencies
    #: and docs overwrite)
    superseded: list[QueuedRecord]
    #: the records are of several targets, and Cortex answers 404 for the whole request when
    #: one target is missing: such a 404 is isolated record by record, not applied to all
    several_targets: bool = False

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
    if isinstance(first, DocsRecord):
        # The newest (last appended) document wins; the older ones are never sent.
        newest = max(batch, key=lambda q: q.seq)
        assert isinstance(newest.record, DocsRecord)
        return BatchRequest(put_openapi_docs(newest.record), {first.entity: [newest]},
                            [q for q in batch if q is not newest])
    if isinstance(first, DependencyRecord):
        edges = _latest(batch, lambda rec: rec.edge if isinstance(rec, DependencyRecord) else None)
        dependencies = [q.record for q in edges.carried if isinstance(q.record, DependencyRecord)]
        return BatchRequest(put_dependencies(dependencies), edges.by_entity(), edges.superseded,
                            several_targets=len(edges.carried) > 1)
    keys = _latest(batch, lambda rec: (rec.entity, rec.key) if isinstance(rec, CustomDataRecord) else None)
    items = [q.record for q in keys.carried if isinstance(q.record, CustomDataRecord)]
    return BatchRequest(put_custom_data(items), keys.by_entity(), keys.superseded)


@dataclass(frozen=True)
class _Latest:
    carried: list[QueuedRecord]
    superseded: list[QueuedRecord]

    def by_entity(self) -> dict[str, list[QueuedRecord]]:
        entities: dict[str, list[QueuedRecord]] = {}
        for q in self.carried:
            entities.setdefault(q.record.entity, []).append(q)
        return entities


def _latest(batch: list[QueuedRecord], key: Callable[[Record], Hashable]) -> _Latest:
    """The last record per ``key`` (batch is in queue order: a later value wins, as in Cortex)."""
    latest: dict[Hashable, QueuedRecord] = {}
    superseded: list[QueuedRecord] = []
    for q in batch:
        k = key(q.record)
        previous = latest.get(k)
        if previous is not None:
            superseded.append(previous)
        latest[k] = q
    return _Latest(list(latest.values()), superseded)
