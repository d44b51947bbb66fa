"""Only the newest OpenAPI document of an entity reaches Cortex, whatever order claims come in.

A claim takes a lane's due records, and a document that failed once is due again only after its
backoff: a newer document of the same entity can be claimed, and delivered, first. Sending the
older one then would leave Cortex with a stale spec, and sending it before the newer one spends a
request on a document about to be replaced. So the seq of the newest document delivered per
entity is kept in the queue's durable key/value state, and a document older than that, or than
one still queued for the entity, is settled as superseded without a request. One entity's documents are sent one at a time (a lock
per entity), so two workers cannot race each other to Cortex either.
"""

from __future__ import annotations

import asyncio

from bridge.queue import QueueBackend, QueuedRecord
from bridge.records import lane_of

#: Documents of one entity claimed together: only the newest of them is sent. A claim of
#: several MB is read into memory, so a long backlog of one entity is taken in a few claims.
DOCS_PER_CLAIM = 50
DOCS_CLAIM_BYTES = 16 * 1024 * 1024
#: Key prefix in the queue's state: ``sender/docs/<entity>`` -> seq of the newest delivered document.
STATE_PREFIX = "sender/docs/"


class DocsOrder:
    """Per-entity ordering of ``docs`` records (see the module docstring)."""

    def __init__(self, queue: QueueBackend) -> None:
        self.queue = queue
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, entity: str) -> asyncio.Lock:
        """Held while one of ``entity``'s documents is checked and sent."""
        return self._locks.setdefault(entity, asyncio.Lock())

    async def superseded(self, batch: list[QueuedRecord]) -> bool:
        """Whether a newer document of the batch's entity was delivered already, or waits in the
        queue (backing off after a failure, while this older one came due first)."""
        seq = max(q.seq for q in batch)
        delivered = await self._delivered_seq(batch[0].record.entity)
        if delivered is not None and delivered > seq:
            return True
        queued = await self.queue.newest_in_lane(lane_of(batch[0].record))
        return queued is not None and queued > seq

    async def delivered(self, batch: list[QueuedRecord]) -> None:
        """Cortex stored these records: if they are documents, remember the newest one's seq."""
        if batch[0].record.kind != "docs":
            return
        entity, seq = batch[0].record.entity, max(q.seq for q in batch)
        newest = await self._delivered_seq(entity)
        if newest is None or seq > newest:
            await self.queue.put_state({STATE_PREFIX + entity: str(seq)})

    async def _delivered_seq(self, entity: str) -> int | None:
        value = await self.queue.get_state(STATE_PREFIX + entity)
        return None if value is None else int(value)
