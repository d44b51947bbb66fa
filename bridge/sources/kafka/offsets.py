"""Which Kafka offsets may be committed: the highest *contiguous* durable offset + 1 per partition.

Messages of one partition are fetched in order but become durable out of order (batches are
appended concurrently, a poison message takes the dead-letter path, a queue-full retry finishes
later than the batch after it). Committing the offset of whatever finished last would skip a
message that is still in flight, or one that failed: the bug Vector still has (vectordotdev/vector
#24215). The tracker commits past an offset only when it and every fetched offset before it are
durable. Offsets are tracked as fetched, not assumed to be consecutive, because compacted topics and
transaction markers leave gaps.

Offsets are committed only by the group membership they were fetched under
(:func:`pin_commits_to_membership`). A member the coordinator no longer knows (its session ended,
or the broker lost the group with its data) has *lost* its partitions: what it would commit then
describes a log the group may not have anymore, and a broker that lost its data takes such a
commit into its new, empty group (aiokafka sends it with generation -1, which a broker accepts
for a group without members), acknowledging messages nobody read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError

#: A member's identity in its group: (generation, member id) as the coordinator assigned them.
Membership = tuple[int, str]

#: The membership under which the commit being sent was decided (set by :func:`committing_as`).
_COMMIT_MEMBERSHIP: ContextVar[Membership | None] = ContextVar("kafka_commit_membership", default=None)


class MembershipLost(KafkaError):  # type: ignore[misc]  # aiokafka ships no type hints
    """A commit was refused because the membership it was decided under is gone."""


def membership(consumer: Any) -> Membership | None:
    """The consumer's current membership of its group; None while it has none (lost or not joined)."""
    coordinator = getattr(consumer, "_coordinator", None)  # None before start() and after stop()
    generation = getattr(coordinator, "generation", -1)
    if not isinstance(generation, int) or generation < 0:
        return None
    return generation, str(getattr(coordinator, "member_id", ""))


def check_membership_pinning() -> None:
    """Fail at startup if aiokafka no longer has what :func:`pin_commits_to_membership` wraps."""
    if not callable(getattr(GroupCoordinator, "_do_commit_offsets", None)):
        raise RuntimeError("aiokafka's GroupCoordinator has no _do_commit_offsets: offset commits cannot "
                           "be pinned to the group membership (bridge.sources.kafka.offsets)")


@contextmanager
def committing_as(member: Membership) -> Iterator[None]:
    """Commits started inside this block may only be sent while ``member`` is the membership."""
    token = _COMMIT_MEMBERSHIP.set(member)
    try:
        yield
    finally:
        _COMMIT_MEMBERSHIP.reset(token)


def pin_commits_to_membership(consumer: Any) -> None:
    """Check the membership at every OffsetCommit request ``consumer`` sends, retries included.

    aiokafka's ``commit()`` retries without limit and reads the generation anew for each request,
    so a commit that started under one membership (a broker that is then killed) is sent under
    whatever holds after the reconnect: generation -1 once the new broker did not know the member,
    or the next generation after a rejoin, with the old assignment's offsets either way. Each
    request is checked right before it is built (no suspension point in between) against the
    membership of :func:`committing_as`; a request without one, or under another, is not sent.
    """
    coordinator = consumer._coordinator
    send_once = coordinator._do_commit_offsets

    async def send_if_member(assignment: Any, offsets: Any) -> Any:
        expected = _COMMIT_MEMBERSHIP.get()
        if expected is None or membership(consumer) != expected:
            raise MembershipLost(f"group membership {expected} is gone (now {membership(consumer)}): "
                                 "offsets fetched under it are not committed")
        return await send_once(assignment, offsets)

    coordinator._do_commit_offsets = send_if_member


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
