"""Fetched Kafka batches made durable: steps 1 and 2 of :mod:`bridge.sources.kafka.source`.

Every message of a batch is decoded by its topic's format (:mod:`bridge.sources.kafka.formats`)
into records, "nothing to map", or a poison verdict. Records are appended to the durable queue
(waiting for room while it is full), records the mapping could not complete and poison messages
go to the dead-letter set. A message's offset is marked durable in its
:class:`~bridge.sources.kafka.offsets.PartitionOffsets` only once all of its outcome is on disk;
committing those offsets is the source's business.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiokafka import TopicPartition

from bridge import metrics
from bridge.queue import QueueBackend, QueueFull, QueueUnavailable, RawInput
from bridge.records import Record, UnstorableRecord, record_to_json
from bridge.sources.admit import count_appended
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.kafka.formats import (
    Decoded,
    FormatUnavailable,
    KafkaMessage,
    MessageDecoder,
    PoisonMessage,
    build_batch_decoder,
    build_decoder,
    delivery_id,
    text_headers,
)
from bridge.sources.kafka.offsets import PartitionOffsets
from bridge.sources.kafka.settings import KafkaSourceSettings
from bridge.sources.pipeline import DeadLetters

log = structlog.get_logger("bridge.kafka")

#: After the queue was full, resume once it is at most this full (hysteresis against flapping).
RESUME_FRACTION = 0.9
#: How often a blocked append re-checks the queue.
ROOM_POLL_SECONDS = 0.1

#: The messages of one partition in a fetched batch, with the tracker of that partition's offsets.
FetchedPartition = tuple[TopicPartition, PartitionOffsets, list[Any]]


@dataclass(slots=True)
class _Item:
    """One message on its way to disk."""

    part: PartitionOffsets
    topic: str
    partition: int
    offset: int
    records: list[Record]
    dead: list[DeadLetters]
    poison: RawInput | None = None


class BatchWriter:
    """Decodes fetched batches of one source and makes their outcomes durable."""

    def __init__(self, settings: KafkaSourceSettings, ctx: SourceContext) -> None:
        self.name = settings.name
        self.settings = settings
        self.queue = ctx.queue
        self._ctx = ctx
        # Built now so that a missing format or bad options fail at startup, not at a message.
        self._decoders = {topic.name: self._build_decoder(topic.name) for topic in settings.topics}
        self._pattern_decoder = self._build_decoder("") if settings.topic_pattern else None
        self._batch_decoders = {topic.name: build_batch_decoder(settings.format_of(topic.name)[0], source=self.name)
                                for topic in settings.topics}
        self._pattern_batch_decoder = (build_batch_decoder(settings.format_of("")[0], source=self.name)
                                       if settings.topic_pattern else None)
        #: appends waiting for queue room (or for the database); the source pauses fetching meanwhile
        self.blocked = 0

    def _build_decoder(self, topic: str) -> MessageDecoder:
        fmt, options = self.settings.format_of(topic)
        try:
            return build_decoder(fmt, source=self.name, options=options, ctx=self._ctx)
        except FormatUnavailable as exc:
            raise SourceConfigError(f"source {self.name!r}, topic {topic or '(pattern)'!r}: {exc}") from None

    def _decoder_for(self, topic: str) -> MessageDecoder:
        decoder = self._decoders.get(topic) or self._pattern_decoder
        assert decoder is not None, f"message from unsubscribed topic {topic}"
        return decoder

    # -- decoding ---------------------------------------------------------------------------

    async def write(self, parts: list[FetchedPartition], received: datetime) -> None:
        """Decode one fetched batch and make every message's outcome durable."""
        work: list[_Item] = []
        for tp, part, messages in parts:
            ignored: list[int] = []
            produced: dict[str, int] = {}
            for message, item in zip(messages, await self._decode_all(tp.topic, messages, part, received), strict=True):
                if item is None:
                    ignored.append(message.offset)
                    continue
                work.append(item)
                for record in item.records:
                    produced[record.kind] = produced.get(record.kind, 0) + 1
            for kind, n in produced.items():
                metrics.counter_of(metrics.KAFKA_RECORDS_PRODUCED, self.name, tp.topic, kind).inc(n)
                metrics.counter_of(metrics.RECORDS_RECEIVED, self.name, kind).inc(n)
            if ignored:
                metrics.counter_of(metrics.KAFKA_MESSAGES_IGNORED, self.name, tp.topic).inc(len(ignored))
                part.durable(ignored)
        if work:
            await self._persist(work)

    async def _decode_all(self, topic: str, messages: list[Any], part: PartitionOffsets,
                          received: datetime) -> list[_Item | None]:
        """Each message's item (None: it maps to nothing), in one call where the format can."""
        decode_batch = self._batch_decoders.get(topic, self._pattern_batch_decoder)
        if decode_batch is not None:
            try:
                outcomes = decode_batch(messages, received)
            except Exception:  # a mapping bug: decode one by one, so only its message is kept aside
                log.exception("kafka_batch_decoder_error", source=self.name, messages=len(messages))
            else:
                return [self._item(message, part, outcome) for message, outcome in zip(messages, outcomes, strict=True)]
        decoder = self._decoder_for(topic)
        return [None if decoder.ignores(message) else await self._decode(decoder, message, part, received)
                for message in messages]

    async def _decode(self, decoder: MessageDecoder, message: Any, part: PartitionOffsets,
                      received: datetime) -> _Item | None:
        try:
            decoded: Decoded | PoisonMessage = await decoder(message, received)
        except PoisonMessage as exc:
            decoded = exc
        except Exception as exc:  # a mapping bug must not stall the partition: keep the message
            log.exception("kafka_decoder_error", source=self.name, message=delivery_id(message))
            decoded = PoisonMessage("decoder_error", f"{type(exc).__name__}: {exc}")
        return self._item(message, part, decoded)

    def _item(self, message: Any, part: PartitionOffsets, decoded: Decoded | PoisonMessage) -> _Item | None:
        """A message's way to disk, or None when it maps to nothing."""
        if isinstance(decoded, PoisonMessage):
            return _Item(part, message.topic, message.partition, message.offset, [], [],
                         self._raw(message, decoded.reason, decoded.detail))
        if not decoded.records and not decoded.dead:
            return None
        return _Item(part, message.topic, message.partition, message.offset, decoded.records, decoded.dead)

    def _raw(self, message: KafkaMessage, reason: str, detail: str) -> RawInput:
        key = message.key
        meta: dict[str, Any] = {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": None if key is None else key.decode("utf-8", errors="backslashreplace"),
            "timestamp_ms": message.timestamp,
            "headers": text_headers(message),
        }
        return RawInput(self.name, delivery_id(message), reason, detail, message.value, meta)

    # -- making batches durable -------------------------------------------------------------

    async def _persist(self, items: list[_Item]) -> None:
        """Make every item durable; an item's offset is done once all of its parts are."""
        poison = [item for item in items if item.poison is not None]
        with_records = [item for item in items if item.records]
        if with_records:
            poison.extend(await self._append(with_records))
        for item in with_records:
            if not item.dead and item.poison is None:
                item.part.durable((item.offset,))
        for item in items:
            if item.dead and item.poison is None:
                for group in item.dead:
                    await self._dead_letter_records(group)
                item.part.durable((item.offset,))
        if poison:
            await self._dead_letter(poison)

    async def _append(self, items: list[_Item]) -> list[_Item]:
        """Append the items' records, waiting for room when full; return the items that can never
        be queued (too large, or a record that would not read back), now poison."""
        queue = self.queue
        too_large: list[_Item] = []
        pending = items
        while pending:
            chunk = _fitting(pending, queue.max_records - queue.depth)
            records = [r for item in chunk for r in item.records]
            try:
                result = await queue.append(records)
            except QueueFull:
                if len(chunk) == 1 and queue.depth == 0 and _exceeds(queue, chunk[0].records):
                    item = chunk[0]
                    item.poison = self._raw_from_records(
                        item, "too_large_for_queue",
                        f"{len(item.records)} records do not fit in the queue even when it is empty")
                    too_large.append(item)
                    pending = pending[1:]
                    continue
                await self._wait_for_room(len(chunk[0].records))
                continue
            except QueueUnavailable as exc:
                log.error("kafka_queue_unavailable", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
                continue
            except UnstorableRecord as exc:
                # Its message becomes a poison entry; the rest of the chunk is appended again.
                bad = next(item for item in chunk if any(r.id == exc.record_id for r in item.records))
                bad.poison = self._raw_from_records(bad, "unstorable_record", str(exc))
                too_large.append(bad)
                pending = [item for item in pending if item is not bad]
                continue
            count_appended(self.name, records, result)
            pending = pending[len(chunk):]
        return too_large

    def _raw_from_records(self, item: _Item, reason: str, detail: str) -> RawInput:
        """A poison entry for a message whose records cannot be queued."""
        return RawInput(self.name, f"{item.topic}/{item.partition}/{item.offset}", reason, detail,
                        None, {"topic": item.topic, "partition": item.partition, "offset": item.offset,
                               "records": len(item.records)})

    async def _dead_letter_records(self, group: DeadLetters) -> None:
        """Records the mapping could not complete (no entity ...): kept as dead letters."""
        while True:
            try:
                await self.queue.dead_letter_input(group.records, reason=group.reason, detail=group.detail)
            except QueueFull:
                await self._wait_for_room(len(group.records))
                continue
            except QueueUnavailable as exc:
                log.error("kafka_dead_letter_failed", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
                continue
            except UnstorableRecord as exc:
                log.error("kafka_dead_letter_unstorable", source=self.name, record_id=exc.record_id,
                          problem=exc.problem)
                group = DeadLetters([r for r in group.records if r.id != exc.record_id], group.reason, group.detail)
                continue
            log.warning("kafka_dead_lettered", source=self.name, reason=group.reason, detail=group.detail,
                        records=len(group.records))
            return

    async def _dead_letter(self, items: list[_Item]) -> None:
        inputs = [item.poison for item in items if item.poison is not None]
        while True:
            try:
                await self.queue.dead_letter_raw(inputs)
                break
            except QueueUnavailable as exc:
                log.error("kafka_dead_letter_failed", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
        for item in items:
            assert item.poison is not None
            metrics.KAFKA_POISON_MESSAGES.labels(self.name, item.topic, item.poison.reason).inc()
            log.warning("kafka_poison_message", source=self.name, message=item.poison.input_id,
                        reason=item.poison.reason, detail=item.poison.detail[:300])
            item.part.durable((item.offset,))

    async def _wait_for_room(self, need: int) -> None:
        queue = self.queue
        target = max(0, min(int(queue.max_records * RESUME_FRACTION), queue.max_records - need))
        self.blocked += 1
        try:
            # Sleep first, always: the refusal may come from appends of other batches that are
            # reserved but not committed yet, which `depth` does not show. Retrying without
            # yielding would spin and starve the very appends that free the room.
            await asyncio.sleep(ROOM_POLL_SECONDS)
            while queue.depth > target or queue.is_full:
                await asyncio.sleep(ROOM_POLL_SECONDS)
        finally:
            self.blocked -= 1

    async def _blocked_sleep(self, seconds: float) -> None:
        self.blocked += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.blocked -= 1


def _fitting(items: list[_Item], room: int) -> list[_Item]:
    """The longest prefix of ``items`` whose records fit in ``room`` (at least one item)."""
    total = 0
    for index, item in enumerate(items):
        total += len(item.records)
        if total > room:
            return items[: max(1, index)]
    return items


def _exceeds(queue: QueueBackend, records: list[Record]) -> bool:
    """These records can never be appended, even to an empty queue."""
    if len(records) > queue.max_records:
        return True
    return sum(len(record_to_json(r)) for r in records) > queue.max_bytes
