"""Dependencies a source stopped reporting are removed from Cortex (opt-in, per source).

A tracing pipeline reports the edges it sees; one it no longer reports (a service stopped calling
another) would stay in Cortex for ever. For a source named in
``dependencies.reconcile_after_seconds``, the bridge keeps a ledger in the queue's durable state:
each edge it delivered from that source, and when the source last reported it (the newest
record's receipt time). An edge not reported for longer than the setting is removed with *Delete
dependencies in bulk*, then forgotten. Only edges the bridge itself delivered from such a source
are ever deleted: the ledger holds nothing else.

A removal that fails (429, 5xx, no answer) is tried again at the next pass: DELETE is idempotent,
and a ledger entry stays until Cortex confirmed its removal. A bulk Cortex refuses (400: defined
in cortex.yaml; 404: an entity is gone) is narrowed down by halves; an edge Cortex will not delete
is forgotten with a warning, so it is not asked about again. A report that arrives while its edge
is being removed is written to the ledger after the pass (a lock): Cortex lacks that edge until
the source reports it again, which a source that still sees it does at its next report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from bridge.config import DependencySettings
from bridge.cortex.client import Ambiguous, CortexClient, NotSent
from bridge.cortex.endpoints import Edge, delete_dependencies
from bridge.queue import QueueBackend, QueuedRecord
from bridge.records import DependencyRecord

log = structlog.get_logger("bridge.sender")

#: Key prefix in the queue's state: ``sender/edges/<source>/<hash of the edge>`` -> ``{"edge", "seen"}``.
STATE_PREFIX = "sender/edges/"
DELETES_PER_REQUEST = 1000


class EdgeLedger:
    """The delivered edges of reconciled sources, and their removal once stale (module docstring)."""

    def __init__(self, queue: QueueBackend, client: CortexClient, settings: DependencySettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.client = client
        self.after = dict(settings.reconcile_after_seconds)
        self.interval = settings.reconcile_interval_seconds
        self.clock = clock
        self._lock = asyncio.Lock()

    @classmethod
    def when_configured(cls, queue: QueueBackend, client: CortexClient,
                        settings: DependencySettings | None) -> EdgeLedger | None:
        """A ledger when some source is reconciled, else ``None`` (nothing to keep)."""
        return cls(queue, client, settings) if settings is not None and settings.reconcile_after_seconds else None

    async def reported(self, delivered: Sequence[QueuedRecord]) -> None:
        """Cortex stored these records: note when their sources last reported each edge."""
        newest: dict[str, tuple[Edge, float]] = {}  # ledger key (it names the source) -> edge, when
        for queued in delivered:
            record = queued.record
            if not isinstance(record, DependencyRecord) or record.provenance.source not in self.after:
                continue
            key = _key(record.provenance.source, record.edge)
            seen = record.provenance.received_at.timestamp()
            if key not in newest or newest[key][1] < seen:
                newest[key] = (record.edge, seen)
        if not newest:
            return
        async with self._lock:
            known = await self.queue.get_states_of(list(newest))  # these edges, not all of a source's
            updates = {}
            for key, (edge, seen) in newest.items():
                entry = _entry(known.get(key))
                if entry is None or entry[1] < seen:  # an older record may be delivered after a newer one
                    updates[key] = json.dumps({"edge": list(edge), "seen": seen})
            if updates:
                await self.queue.put_state(updates)

    async def remove_stale(self) -> int:
        """One pass: remove every edge its source has not reported for too long; how many went."""
        removed = 0
        async with self._lock:
            now = self.clock()
            for source, after in self.after.items():
                stale: list[tuple[str, Edge]] = []
                unreadable: list[str] = []
                for key, value in (await self.queue.get_states(_prefix(source))).items():
                    entry = _entry(value)
                    if entry is None:
                        unreadable.append(key)
                    elif entry[1] < now - after:
                        stale.append((key, entry[0]))
                if unreadable:
                    await self.queue.forget_state(unreadable)
                for start in range(0, len(stale), DELETES_PER_REQUEST):
                    removed += await self._remove(source, stale[start:start + DELETES_PER_REQUEST])
        return removed

    async def run(self, stopping: Callable[[], bool], may_send: Callable[[], Any]) -> None:
        """Passes every ``reconcile_interval_seconds`` while ``may_send()`` (this replica sends)."""
        while not stopping():
            await asyncio.sleep(self.interval)
            try:
                if await may_send():
                    await self.remove_stale()
            except Exception as exc:  # one bad pass never ends the loop
                log.error("dependency_reconcile_failed", error=repr(exc))

    async def _remove(self, source: str, chunk: list[tuple[str, Edge]]) -> int:
        try:
            response = await self.client.write(delete_dependencies([edge for _, edge in chunk]))
        except (NotSent, Ambiguous) as exc:
            log.warning("dependency_removal_deferred", source=source, edges=len(chunk), error=str(exc))
            return 0
        if response.ok:
            await self.queue.forget_state([key for key, _ in chunk])
            log.info("dependencies_removed", source=source, edges=len(chunk))
            return len(chunk)
        if response.status in (400, 404):
            if len(chunk) > 1:
                half = len(chunk) // 2
                return await self._remove(source, chunk[:half]) + await self._remove(source, chunk[half:])
            caller, callee, method, path = chunk[0][1]
            log.warning("dependency_not_removable", source=source, caller=caller, callee=callee, method=method,
                        path=path, status=response.status, reason=response.message()[:300])
            await self.queue.forget_state([chunk[0][0]])
            return 0
        log.warning("dependency_removal_deferred", source=source, edges=len(chunk), status=response.status)
        return 0


def _prefix(source: str) -> str:
    return f"{STATE_PREFIX}{source}/"


def _key(source: str, edge: Edge) -> str:
    return _prefix(source) + hashlib.sha1(json.dumps(edge).encode()).hexdigest()


def _entry(value: str | None) -> tuple[Edge, float] | None:
    """A ledger value read back; ``None`` when absent or not what this module writes."""
    if value is None:
        return None
    try:
        data = json.loads(value)
        caller, callee, method, path = data["edge"]
        return (str(caller), str(callee), method, path), float(data["seen"])
    except (ValueError, TypeError, KeyError):
        return None
