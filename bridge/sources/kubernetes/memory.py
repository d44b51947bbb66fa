"""What a kubernetes source has reported, kept in memory and in the bridge's database alike.

It lives in the SQLite database next to the queue, under ``k8s/<source>/``: per workload the last
completed generation and template, per event uid the last handled count, the open aggregation
windows (those two are :class:`~bridge.sources.kubernetes.events.EventAggregator`'s), and which
collections have a baseline. Records and that memory are written in one transaction
(``QueueBackend.append(..., state_updates=...)``), so they never disagree: after a crash either
both the record and "it was reported" are on disk, or neither is.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from bridge import metrics
from bridge.queue import QueueBackend, QueueFull, QueueUnavailable
from bridge.records import Record, UnstorableRecord
from bridge.sources.admit import count_appended
from bridge.sources.kubernetes.events import EventAggregator
from bridge.sources.kubernetes.rollouts import WorkloadState

log = structlog.get_logger("bridge.kubernetes")


class SourceMemory:
    """The reported state of one source; changes are staged, then flushed with their records."""

    def __init__(self, queue: QueueBackend, events: EventAggregator, *, source: str, prefix: str) -> None:
        self.queue = queue
        self.source = source
        self.prefix = prefix
        self._events = events
        #: state key of a workload (:meth:`workload_key`) -> what was reported of it
        self.workloads: dict[str, WorkloadState] = {}
        #: keys of the streams whose collection has a baseline
        self.synced_streams: set[str] = set()
        #: names this database in Lease watermarks (see k8s_leader); set by :meth:`load`
        self.instance = ""
        self._pending_records: list[Record] = []
        self._pending_updates: dict[str, str] = {}
        self._tombstones = False

    def workload_key(self, kind: str, namespace: str, name: str) -> str:
        """State key of a workload."""
        return f"{self.prefix}wl/{kind}/{namespace}/{name}"

    def workload_scope(self, kind: str, namespace: str | None) -> str:
        """Prefix of the state keys of ``kind`` workloads (in ``namespace``, or anywhere)."""
        return f"{self.prefix}wl/{kind}/" + (f"{namespace}/" if namespace else "")

    def synced_key(self, stream: str) -> str:
        """State key saying that a stream's collection has a baseline."""
        return f"{self.prefix}synced/{stream}"

    @property
    def staged_updates(self) -> int:
        """State changes waiting for the next flush."""
        return len(self._pending_updates)

    async def load(self) -> None:
        """Read what was reported from the database (memory == disk at every term's start)."""
        states = await self.queue.get_states(self.prefix)
        self.workloads.clear()
        self.synced_streams.clear()
        self._events.counts.clear()
        self._events.windows.clear()
        self._pending_records, self._pending_updates = [], {}
        for key, value in states.items():
            if value:
                self._apply(key, value)
        self.instance = states.get(self.prefix + "instance") or ""
        if not self.instance:
            self.instance = uuid.uuid4().hex
            await self.queue.put_state({self.prefix + "instance": self.instance})

    def _apply(self, key: str, value: str) -> None:
        if key.startswith(self.prefix + "wl/"):
            if value:
                self.workloads[key] = WorkloadState.from_json(value)
            else:
                self.workloads.pop(key, None)
        elif key.startswith(self.prefix + "synced/"):
            stream = key[len(self.prefix + "synced/"):]
            if value:
                self.synced_streams.add(stream)
            else:
                self.synced_streams.discard(stream)
        elif self._events.owns(key):
            self._events.apply(key, value)

    def stage(self, records: list[Record], updates: dict[str, str]) -> None:
        """Queue records and memory changes for the next flush; memory reflects them at once."""
        self._pending_records.extend(records)
        self._pending_updates.update(updates)
        for key, value in updates.items():
            self._apply(key, value)

    async def flush(self) -> None:
        """Write staged records and memory in one transaction; wait (never drop) while refused."""
        if not self._pending_records and not self._pending_updates:
            return
        records, updates = self._pending_records, self._pending_updates
        self._pending_records, self._pending_updates = [], {}
        for record in records:
            metrics.RECORDS_RECEIVED.labels(self.source, record.kind).inc()
        delay = 0.1
        while True:
            try:
                result = await self.queue.append(records, state_updates=updates)
                break
            except (QueueFull, QueueUnavailable) as exc:
                # The watch is not read meanwhile: the apiserver holds the changes, or ends the
                # stream and the next watch resumes from the last handled resourceVersion.
                log.warning("k8s_queue_refused", source=self.source, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except UnstorableRecord as exc:
                # Built from an object the model accepted; should it still not read back, the
                # other records and the memory must not be held up by it.
                log.error("k8s_record_unstorable", source=self.source, record_id=exc.record_id, problem=exc.problem)
                records = [r for r in records if r.id != exc.record_id]
        count_appended(self.source, records, result)
        self._tombstones = self._tombstones or "" in updates.values()

    async def purge_tombstones(self) -> None:
        """Delete forgotten keys (written as empty values inside record transactions)."""
        if not self._tombstones:
            return
        self._tombstones = False
        await self.queue.purge_empty_states(self.prefix)
