"""Which Kafka offsets may be committed: the highest *contiguous* durable offset + 1 per partition.

Messages of one partition are fetched in order but become durable out of order (batches are
appended concurrently, a poison message takes the dead-letter path, a queue-full retry finishes
later than the batch after it). Committing the offset of whatever finished last would skip a
message that is still in flight, or one that failed: the bug Vector still has (vectordotdev/vector
#24215). The tracker commits past an offset only when it and every fetched offset before it are
durable. Offsets are tracked as fetched, not assumed to be consecutive, because compacted topics and
transaction markers leave gaps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from aiokafka import TopicPartition


class PartitionOffsets:
    """Fetched offsets of one partition and how far the durable prefix reaches.

    A new instance is made for every assignment of the partition (and after a seek), so work
    that finishes after the partition was revoked only touches an instance nobody reads anymore.
    """

    __slots__ = ("_done", "_pending", "committable", "committed")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        #: offset to commit next: highest contiguous durable offset + 1 (None: nothing durable yet)
        self.committable: int | None = None
        #: the last offset Kafka confirmed as committed by this instance
        self.committed: int | None = None

    def fetched(self, offsets: Iterable[int]) -> None:
        """Register offsets handed out by the consumer, in fetch order."""
        pending = self._pending
        for offset in offsets:
            if pending and offset <= pending[-1]:
                raise ValueError(f"offset {offset} fetched after {pending[-1]}: the tracker must be reset")
            pending.append(offset)

    def durable(self, offsets: Iterable[int]) -> None:
        """These offsets' outcomes (records or dead letter) are on disk."""
        pending = self._pending
        if not pending:
            return
        head = pending[0]
        done = self._done
        done.update(o for o in offsets if o >= head)
        while pending and pending[0] in done:
            offset = pending.popleft()
            done.discard(offset)
            self.committable = offset + 1

    @property
    def in_flight(self) -> int:
        """Fetched messages whose offset cannot be committed yet."""
        return len(self._pending)

    @property
    def uncommitted(self) -> bool:
        """There is a durable prefix that Kafka does not know about yet."""
        return self.committable is not None and self.committable != self.committed


class OffsetTracker:
    """Per-partition :class:`PartitionOffsets` of the current assignment."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionOffsets] = {}

    def partition(self, tp: TopicPartition) -> PartitionOffsets:
        """The tracker of ``tp`` (created on first use)."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionOffsets()
        return part

    def reset(self, tp: TopicPartition) -> PartitionOffsets:
        """Start over for ``tp`` (after a seek): in-flight work of the old instance is ignored."""
        part = self._parts[tp] = PartitionOffsets()
        return part

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions."""
        for tp in tps:
            self._parts.pop(tp, None)

    def to_commit(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now: partitions whose durable prefix moved since the last commit."""
        selected = self._parts.items() if tps is None else (
            (tp, self._parts[tp]) for tp in tps if tp in self._parts
        )
        return {tp: part.committable for tp, part in selected if part.uncommitted and part.committable is not None}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Kafka accepted ``offsets``; instances replaced meanwhile are left alone."""
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None and part.committable is not None and part.committable >= offset:
                part.committed = offset

    def committed(self, tp: TopicPartition) -> int | None:
        """Last offset committed for ``tp`` by this assignment (None when none yet)."""
        part = self._parts.get(tp)
        return None if part is None else part.committed

    def in_flight(self) -> int:
        """Messages fetched but not yet durable, over all partitions."""
        return sum(part.in_flight for part in self._parts.values())
