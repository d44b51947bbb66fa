"""Offset commits pinned to the group membership they were decided under, against a real broker."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.sources.kafka.offsets import MembershipLost, committing_as, membership, pin_commits_to_membership
from tests.support.cortex import wait_until
from tests.support.kafka import (
    FAST_GROUP,
    Tansu,
    committed_offsets,
    create_topic,
    restart_with_topic,
    unique,
)


async def test_a_commit_decided_under_a_lost_membership_is_not_sent_under_the_next_one(broker: Tansu) -> None:
    """aiokafka retries a commit until it goes through, with whatever generation holds by then.

    A commit decided before the broker lost the group must not go out once the member has joined
    the new broker's group: it would carry the old log's offsets into a partition that holds other
    messages at them.
    """
    topic, group = unique("pin"), unique("g")
    await create_topic(broker.bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                                enable_auto_commit=False, **FAST_GROUP)
    await consumer.start()
    try:
        pin_commits_to_membership(consumer)

        async def member_other_than(old: object) -> bool:
            await consumer.getmany(timeout_ms=50)  # keeps the member polling, as the source does
            return membership(consumer) not in (None, old) and bool(consumer.assignment())

        await wait_until(lambda: member_other_than(None), timeout=20)
        first = membership(consumer)
        assert first is not None
        with pytest.raises(MembershipLost):  # a commit no membership was bound to
            await consumer.commit({tp: 1})

        restart_with_topic(broker, topic, 1)  # the new broker knows neither the member nor the group
        await wait_until(lambda: member_other_than(first), timeout=20)
        second = membership(consumer)
        assert second is not None and second != first
        with committing_as(first), pytest.raises(MembershipLost):
            await consumer.commit({tp: 3})
        assert await committed_offsets(broker.bootstrap, group, [tp]) == {0: None}

        with committing_as(second):  # the current membership commits as usual
            await consumer.commit({tp: 0})
        assert await committed_offsets(broker.bootstrap, group, [tp]) == {0: 0}
    finally:
        await consumer.stop()
