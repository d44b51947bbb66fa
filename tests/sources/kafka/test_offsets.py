"""The contiguous-offset tracker: never commit past a message that is not durable."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from bridge.sources.kafka.offsets import OffsetTracker, PartitionOffsets

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def test_commit_point_is_the_end_of_the_durable_prefix() -> None:
    part = PartitionOffsets()
    part.fetched([10, 11, 12, 13])
    assert part.committable is None
    part.durable([12, 13])  # later messages done first: nothing may be committed yet
    assert part.committable is None and part.in_flight == 4
    part.durable([10])
    assert part.committable == 11
    part.durable([11])  # fills the gap: the prefix now reaches past 12 and 13
    assert part.committable == 14 and part.in_flight == 0


def test_gaps_in_fetched_offsets_are_not_waited_for() -> None:
    # Compacted topics and transaction markers skip offsets; only fetched ones count.
    part = PartitionOffsets()
    part.fetched([5, 8, 9])
    part.durable([5])
    assert part.committable == 6
    part.durable([9, 8])
    assert part.committable == 10


def test_stale_and_unknown_offsets_do_not_move_the_commit_point() -> None:
    part = PartitionOffsets()
    part.durable([3])  # nothing fetched
    assert part.committable is None
    part.fetched([4, 5])
    part.durable([2, 3])  # older than anything pending
    assert part.committable is None
    part.durable([4])
    assert part.committable == 5


def test_offsets_going_backwards_are_refused() -> None:
    part = PartitionOffsets()
    part.fetched([7, 8])
    with pytest.raises(ValueError, match="reset"):
        part.fetched([3])


def test_to_commit_lists_only_moved_partitions_and_forgets_revoked_ones() -> None:
    tracker = OffsetTracker()
    tracker.partition(TP0).fetched([0, 1, 2])
    tracker.partition(TP1).fetched([0])
    tracker.partition(TP0).durable([0, 1])
    assert tracker.to_commit() == {TP0: 2}
    tracker.mark_committed({TP0: 2})
    assert tracker.committed(TP0) == 2
    assert tracker.to_commit() == {}
    tracker.partition(TP1).durable([0])
    assert tracker.to_commit() == {TP1: 1}
    assert tracker.to_commit({TP0}) == {}
    assert tracker.in_flight() == 1
    tracker.forget([TP1])
    assert tracker.to_commit() == {}
    assert tracker.committed(TP1) is None


def test_work_finishing_after_a_reset_touches_only_the_old_instance() -> None:
    tracker = OffsetTracker()
    old = tracker.partition(TP0)
    old.fetched([100, 101])
    new = tracker.reset(TP0)
    new.fetched([0])
    old.durable([100, 101])  # a batch of the previous assignment completes late
    assert tracker.to_commit() == {}
    new.durable([0])
    assert tracker.to_commit() == {TP0: 1}
