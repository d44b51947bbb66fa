"""Where a partition resumes reading when the group has no usable offset for it.

Two cases, both reported by ``getmany`` as errors that name the partitions:

* no committed offset (a new group, or a new partition): start where ``start_from`` says;
* the committed offset is gone from the broker (retention, or a broker that lost its data): start
  at the earliest offset. Going to the end would skip whatever is there; the earliest offset
  skips nothing that exists.

Either way the partition's offset tracking starts over, because the offsets fetched before the
seek no longer lead up to the ones fetched after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.sources.kafka.offsets import OffsetTracker

log = structlog.get_logger("bridge.kafka")


async def seek_uncommitted(consumer: AIOKafkaConsumer, tps: set[TopicPartition], *, tracker: OffsetTracker,
                           start_from: Literal["earliest", "latest"], source: str) -> None:
    """Partitions without a committed offset start at ``start_from``."""
    tps &= consumer.assignment()
    if not tps:
        return
    log.info("kafka_no_committed_offset", source=source, start_from=start_from, partitions=partition_names(tps))
    for tp in tps:
        tracker.reset(tp)
    if start_from == "earliest":
        await consumer.seek_to_beginning(*tps)
    else:
        await consumer.seek_to_end(*tps)


async def seek_out_of_range(consumer: AIOKafkaConsumer, tps: set[TopicPartition], *, tracker: OffsetTracker,
                            source: str) -> None:
    """Partitions whose offset the broker no longer has start at their earliest offset."""
    tps &= consumer.assignment()
    if not tps:
        return
    log.warning("kafka_offset_out_of_range", source=source, partitions=partition_names(tps),
                action="seek_to_beginning")
    for tp in tps:
        tracker.reset(tp)
    await consumer.seek_to_beginning(*tps)


def partitions_of(exc: KafkaError) -> set[TopicPartition]:
    """The partitions an offset error names (its first argument: a dict or one partition)."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        return set(arg)
    if isinstance(arg, TopicPartition):
        return {arg}
    return set()


def partition_names(tps: Iterable[TopicPartition]) -> list[str]:
    """``topic/partition`` of each partition, sorted (for logs)."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
