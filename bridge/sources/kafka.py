"""Kafka source: a consumer group whose messages become records, at least once, never skipped.

The contract is the webhook path's: what Kafka is told (the committed offset) never runs ahead of
what is on disk. Per batch from ``getmany``:

1. every message is decoded by its topic's format (:mod:`bridge.sources.kafka_formats`) into
   records, "nothing to map", or a poison verdict;
2. records are appended to the durable queue (several batches may be in flight, so SQLite's group
   commit amortizes the fsync); poison messages go to the dead-letter set with topic, partition,
   offset, key and reason (:mod:`bridge.queue.poison`);
3. :mod:`bridge.sources.kafka_offsets` commits, per partition, only the highest offset below which
   every fetched message is durable, on a timer, when partitions are revoked and at shutdown.

When the queue is full, all assigned partitions are paused and ``getmany`` keeps being called (it
returns nothing) so the member stays in the group; they resume once the queue has drained.
Offsets out of range are never skipped forward: the partition restarts at its earliest offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from aiokafka.helpers import create_ssl_context
from prometheus_client import Counter, Gauge
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge import metrics
from bridge.config import ConfigError, read_secret
from bridge.queue import DurableQueue, QueueFull, QueueUnavailable
from bridge.queue.poison import RawInput, dead_letter_raw
from bridge.records import Record, record_to_json, utc_now
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.kafka_formats import (
    DeadGroup,
    FormatName,
    FormatUnavailable,
    KafkaMessage,
    MessageDecoder,
    PoisonMessage,
    build_decoder,
    delivery_id,
    header_map,
)
from bridge.sources.kafka_offsets import OffsetTracker, PartitionOffsets

log = structlog.get_logger("bridge.kafka")

# -- metrics ------------------------------------------------------------------------------------

MESSAGES_CONSUMED = Counter(
    "cortex_bridge_kafka_messages_consumed", "Kafka messages handed to the bridge by the consumer.", ["source", "topic"]
)
RECORDS_PRODUCED = Counter(
    "cortex_bridge_kafka_records_produced", "Records built from Kafka messages.", ["source", "topic", "kind"]
)
MESSAGES_IGNORED = Counter(
    "cortex_bridge_kafka_messages_ignored", "Kafka messages understood but mapped to no record.", ["source", "topic"]
)
POISON_MESSAGES = Counter(
    "cortex_bridge_kafka_poison_messages",
    "Kafka messages that could not be parsed or mapped, stored in the dead-letter set.",
    ["source", "topic", "reason"],
)
COMMITS = Counter("cortex_bridge_kafka_commits", "Successful offset commits.", ["source"])
COMMIT_FAILURES = Counter(
    "cortex_bridge_kafka_commit_failures",
    "Offset commits that failed (rebalance, timeout, broker error); retried by the next commit.",
    ["source", "reason"],
)
LAG = Gauge(
    "cortex_bridge_kafka_lag",
    "Messages of a partition not yet committed: fetch high watermark minus committed offset.",
    ["source", "topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "cortex_bridge_kafka_committed_offset", "Last offset committed by this bridge.", ["source", "topic", "partition"]
)
PAUSED = Gauge("cortex_bridge_kafka_paused", "1 while partitions are paused because the queue is full.", ["source"])
PAUSES = Counter("cortex_bridge_kafka_pauses", "Times consumption was paused by backpressure.", ["source"])
ASSIGNED = Gauge("cortex_bridge_kafka_assigned_partitions", "Partitions assigned to this consumer.", ["source"])

#: After the queue was full, resume once it is at most this full (hysteresis against flapping).
RESUME_FRACTION = 0.9
#: How often a blocked append re-checks the queue.
ROOM_POLL_SECONDS = 0.1

# -- settings -----------------------------------------------------------------------------------


class KafkaTopic(BaseModel):
    """One subscribed topic and its payload format."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Topic name.")
    format: FormatName | None = Field(None, description="Payload format; the source's `format` when unset.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the format's mapping.")


class KafkaSourceSettings(BaseModel):
    """Settings of one ``type: kafka`` source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["kafka"] = "kafka"
    bootstrap_servers: list[str] = Field(min_length=1, description="host:port of brokers (or a comma list).")
    client_id: str = Field("cortex-bridge", description="Client id the brokers see.")
    group_id: str = Field("cortex-bridge", min_length=1, description="Consumer group.")
    topics: list[KafkaTopic] = Field(default_factory=list, description="Topics (names or {name, format, options}).")
    topic_pattern: str | None = Field(None, description="Regex of topics to subscribe to instead of `topics`.")
    format: FormatName = Field("native", description="Format of topics that name none, and of pattern topics.")
    options: dict[str, Any] = Field(default_factory=dict, description="Format options for pattern topics.")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition with no committed offset starts."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password (wins).")
    ssl_ca_file: Path | None = Field(None, description="CA bundle to verify brokers (system CAs when unset).")
    ssl_cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_key_file: Path | None = Field(None, description="Key of the client certificate.")
    ssl_check_hostname: bool = True
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed skips messages of aborted transactions."
    )
    session_timeout_ms: int = Field(10_000, ge=500, description="Group session timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=50, description="Group heartbeat interval.")
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    max_poll_records: int = Field(500, ge=1, le=100_000, description="Messages per fetch batch at most.")
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    metadata_max_age_ms: int = Field(
        300_000, ge=100, description="Refresh topic metadata this often (new topics, pattern matches)."
    )
    max_batches_in_flight: int = Field(4, ge=1, le=64, description="Batches being made durable at once.")
    commit_interval_seconds: float = Field(5.0, gt=0, description="Commit durable offsets this often.")
    commit_timeout_seconds: float = Field(10.0, gt=0, description="Give up one commit attempt after this.")
    poll_timeout_ms: int = Field(500, ge=10, le=10_000, description="Longest wait of one fetch.")
    connect_backoff_max_seconds: float = Field(30.0, gt=0, description="Cap of reconnect backoff at start.")
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="Stop: wait this long for in-flight batches, the last commit and leaving."
    )

    @field_validator("topic_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("topics", mode="before")
    @classmethod
    def _topic_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSourceSettings:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set exactly one of `topics` and `topic_pattern`")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.security_protocol.startswith("SASL_") and (
            not self.sasl_username or (self.sasl_password is None and self.sasl_password_file is None)
        ):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password (or _file)")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        return self

    def format_of(self, topic: str) -> tuple[FormatName, dict[str, Any]]:
        """The format and options configured for ``topic``."""
        for item in self.topics:
            if item.name == topic:
                return item.format or self.format, item.options or self.options
        return self.format, self.options

    def consumer_kwargs(self) -> dict[str, Any]:
        """Connection and group settings for :class:`aiokafka.AIOKafkaConsumer`."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            # Out of range always restarts at the earliest offset (never skip what exists). With
            # start_from=latest, new partitions need another reset than that: "none" makes the
            # consumer raise, and the source seeks itself.
            "auto_offset_reset": "earliest" if self.start_from == "earliest" else "none",
            "isolation_level": self.isolation_level,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.max_poll_records,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "metadata_max_age_ms": self.metadata_max_age_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = read_secret(self.sasl_password, self.sasl_password_file)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context verifying brokers against ``ssl_ca_file`` (or the system CAs)."""
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None,
                certfile=str(self.ssl_cert_file) if self.ssl_cert_file else None,
                keyfile=str(self.ssl_key_file) if self.ssl_key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"source {self.name!r}: cannot load TLS files: {exc}") from exc
        context.check_hostname = self.ssl_check_hostname
        return context


# -- the source ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    """One message on its way to disk."""

    part: PartitionOffsets
    topic: str
    partition: int
    offset: int
    records: list[Record]
    dead: list[DeadGroup]
    poison: RawInput | None = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.source._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.source._on_assigned(set(assigned))


class KafkaSource:
    """A ``type: kafka`` source: one consumer group member feeding the durable queue."""

    type = "kafka"

    def __init__(self, settings: KafkaSourceSettings, ctx: SourceContext) -> None:
        self.name = settings.name
        self.settings = settings
        self.queue = ctx.queue
        self._ctx = ctx
        # Built now so that a missing format or bad options fail at startup, not at a message.
        self._decoders = {topic.name: self._build_decoder(topic.name) for topic in settings.topics}
        self._pattern_decoder = self._build_decoder("") if settings.topic_pattern else None
        self._tracker = OffsetTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._blocked = 0
        self._paused = False
        self._stopping = False
        self._highwater: dict[TopicPartition, int] = {}
        self._failure: BaseException | None = None
        #: set whenever partitions were assigned (tests wait on it)
        self.assigned = asyncio.Event()
        #: how many times this member was given partitions (each is a group rebalance)
        self.assignments = 0

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

    def routes(self) -> list[web.RouteDef]:
        """Kafka serves no HTTP routes."""
        return []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and consume in the background (the bridge starts even while Kafka is down)."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"kafka-{self.name}")

    async def stop(self) -> None:
        """Stop fetching, finish in-flight appends, commit, leave the group.

        Bounded by ``shutdown_timeout_seconds``: what is not durable by then is not committed and
        comes again (to this group) after the restart.
        """
        self._stopping = True
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        if self._task is not None:
            # Cancelling a fetch is safe: what it would have returned is not committed.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._close(consumer, deadline, why="shutdown")
        PAUSED.labels(self.name).set(0)
        ASSIGNED.labels(self.name).set(0)
        log.info("kafka_stopped", source=self.name)

    async def _close(self, consumer: AIOKafkaConsumer, deadline: float, *, why: str) -> None:
        """Let in-flight batches become durable, commit them, leave the group."""
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._inflight:
            # Appends waiting for queue room keep waiting: the sender still drains meanwhile.
            pending = set(self._inflight)
            _, late = await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
            for task in late:
                task.cancel()
            if late:
                log.warning("kafka_inflight_abandoned", source=self.name, batches=len(late),
                            note="not committed: redelivered after the restart")
        await self._commit(why=why, consumer=consumer,
                           timeout=min(self.settings.commit_timeout_seconds, max(0.1, deadline - time.monotonic())))
        try:
            await asyncio.wait_for(consumer.stop(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, KafkaError) as exc:
            log.warning("kafka_leave_failed", source=self.name, error=repr(exc))

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                consumer = AIOKafkaConsumer(**self.settings.consumer_kwargs())
            except ConfigError as exc:
                log.error("kafka_config_error", source=self.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.connect_backoff_max_seconds)
                continue
            self._consumer = consumer  # so that stop() closes it even while it connects
            try:
                await consumer.start()
            except KafkaError as exc:
                log.warning("kafka_connect_failed", source=self.name, error=repr(exc), retry_in=delay)
                self._consumer = None
                with contextlib.suppress(Exception):
                    await consumer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.connect_backoff_max_seconds)
                continue
            delay = 0.5
            if self.settings.topic_pattern:
                consumer.subscribe(pattern=self.settings.topic_pattern, listener=_Listener(self))
            else:
                consumer.subscribe(topics=[t.name for t in self.settings.topics], listener=_Listener(self))
            log.info("kafka_started", source=self.name, group_id=self.settings.group_id,
                     topics=[t.name for t in self.settings.topics] or self.settings.topic_pattern)
            self._committer = asyncio.create_task(self._commit_loop(consumer), name=f"kafka-{self.name}-commit")
            try:
                await self._consume(consumer)
            except Exception:
                # Never stall silently: commit what is durable, then start over with a new member.
                log.exception("kafka_consumer_failed", source=self.name, retry_in=delay)
                self._consumer = None
                await self._close(consumer, time.monotonic() + self.settings.shutdown_timeout_seconds,
                                  why="restart")
                self._failure = None
                self._tracker = OffsetTracker()
                await asyncio.sleep(delay)

    # -- fetching ---------------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        settings = self.settings
        while not self._stopping:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise RuntimeError("a batch could not be made durable") from failure
            self._apply_backpressure(consumer, self._blocked > 0)
            if len(self._inflight) >= settings.max_batches_in_flight and not self._blocked:
                await asyncio.wait(set(self._inflight), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                # While paused this returns nothing but still counts as a poll: the member stays.
                batch = await consumer.getmany(timeout_ms=settings.poll_timeout_ms,
                                               max_records=settings.max_poll_records)
            except NoOffsetForPartitionError as exc:
                await self._seek_new(consumer, _partitions_of(exc))
                continue
            except OffsetOutOfRangeError as exc:
                await self._seek_out_of_range(consumer, _partitions_of(exc))
                continue
            except KafkaError as exc:
                log.warning("kafka_fetch_failed", source=self.name, error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if batch:
                for tp in batch:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self._highwater[tp] = hw
                self._dispatch(batch)

    async def _seek_new(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> None:
        tps &= consumer.assignment()
        if not tps:
            return
        log.info("kafka_no_committed_offset", source=self.name, start_from=self.settings.start_from,
                 partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in tps))
        for tp in tps:
            self._tracker.reset(tp)
        if self.settings.start_from == "earliest":
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)

    async def _seek_out_of_range(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> None:
        tps &= consumer.assignment()
        if not tps:
            return
        # The broker no longer has the offset (retention, or a broker that lost its data). Going
        # to the end would skip whatever is there; the earliest offset skips nothing that exists.
        log.warning("kafka_offset_out_of_range", source=self.name,
                    partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in tps), action="seek_to_beginning")
        for tp in tps:
            self._tracker.reset(tp)
        await consumer.seek_to_beginning(*tps)

    def _apply_backpressure(self, consumer: AIOKafkaConsumer, blocked: bool) -> None:
        if blocked:
            # Re-applied every round: partitions assigned during the pause start paused too.
            unpaused = consumer.assignment() - consumer.paused()
            if unpaused:
                consumer.pause(*unpaused)
            if not self._paused:
                self._paused = True
                PAUSED.labels(self.name).set(1)
                PAUSES.labels(self.name).inc()
                log.warning("kafka_paused", source=self.name, reason="queue full",
                            queue_depth=self.queue.depth)
        elif self._paused:
            self._paused = False
            paused = consumer.paused()
            if paused:
                consumer.resume(*paused)
            PAUSED.labels(self.name).set(0)
            log.info("kafka_resumed", source=self.name, queue_depth=self.queue.depth)

    def _dispatch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Register the batch's offsets, then map and store it in a task of its own."""
        parts: list[tuple[TopicPartition, PartitionOffsets, list[Any]]] = []
        for tp, messages in batch.items():
            part = self._tracker.partition(tp)
            offsets = [m.offset for m in messages]
            try:
                part.fetched(offsets)
            except ValueError:
                # Offsets went backwards without our seek (e.g. the consumer reset itself).
                part = self._tracker.reset(tp)
                part.fetched(offsets)
            parts.append((tp, part, messages))
            MESSAGES_CONSUMED.labels(self.name, tp.topic).inc(len(messages))
        task = asyncio.create_task(self._process(parts, utc_now()))
        self._inflight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # Its offsets would stay pending and hold the commit point forever: restart the
            # member instead, so the batch is fetched again from the last committed offset.
            self._failure = task.exception()

    async def _process(self, parts: list[tuple[TopicPartition, PartitionOffsets, list[Any]]],
                       received: datetime) -> None:
        work: list[_Item] = []
        for tp, part, messages in parts:
            decoder = self._decoder_for(tp.topic)
            ignored: list[int] = []
            produced: dict[str, int] = {}
            for message in messages:
                item = await self._decode(decoder, message, part, received)
                if item is None:
                    ignored.append(message.offset)
                    continue
                work.append(item)
                for record in item.records:
                    produced[record.kind] = produced.get(record.kind, 0) + 1
            for kind, n in produced.items():
                RECORDS_PRODUCED.labels(self.name, tp.topic, kind).inc(n)
                metrics.RECORDS_RECEIVED.labels(self.name, kind).inc(n)
            if ignored:
                MESSAGES_IGNORED.labels(self.name, tp.topic).inc(len(ignored))
                part.durable(ignored)
        if work:
            await self._persist(work)

    async def _decode(self, decoder: MessageDecoder, message: Any, part: PartitionOffsets,
                      received: datetime) -> _Item | None:
        try:
            decoded = await decoder(message, received)
        except PoisonMessage as exc:
            return _Item(part, message.topic, message.partition, message.offset, [], [],
                         self._raw(message, exc.reason, exc.detail))
        except Exception as exc:  # a mapping bug must not stall the partition: keep the message
            log.exception("kafka_decoder_error", source=self.name, message=delivery_id(message))
            return _Item(part, message.topic, message.partition, message.offset, [], [],
                         self._raw(message, "decoder_error", f"{type(exc).__name__}: {exc}"))
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
            "headers": header_map(message),
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
        """Append the items' records, waiting for room when full; return items too large to fit."""
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
                    item.poison = self._raw_from_records(item)
                    too_large.append(item)
                    pending = pending[1:]
                    continue
                await self._wait_for_room(len(chunk[0].records))
                continue
            except QueueUnavailable as exc:
                log.error("kafka_queue_unavailable", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
                continue
            _count_result(self.name, records, result.new_ids, result.duplicate_ids)
            pending = pending[len(chunk):]
        return too_large

    def _raw_from_records(self, item: _Item) -> RawInput:
        detail = f"{len(item.records)} records do not fit in the queue even when it is empty"
        return RawInput(self.name, f"{item.topic}/{item.partition}/{item.offset}", "too_large_for_queue", detail,
                        None, {"topic": item.topic, "partition": item.partition, "offset": item.offset,
                               "records": len(item.records)})

    async def _dead_letter_records(self, group: DeadGroup) -> None:
        """Records the mapping could not complete (no entity ...): kept as dead letters."""
        while True:
            try:
                await self.queue.dead_letter_input(group.records, reason=group.reason, detail=group.detail)
            except QueueFull:
                await self._wait_for_room(len(group.records))
                continue
            except (QueueUnavailable, sqlite3.Error) as exc:
                log.error("kafka_dead_letter_failed", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
                continue
            log.warning("kafka_dead_lettered", source=self.name, reason=group.reason, detail=group.detail,
                        records=len(group.records))
            return

    async def _dead_letter(self, items: list[_Item]) -> None:
        inputs = [item.poison for item in items if item.poison is not None]
        while True:
            try:
                await dead_letter_raw(self.queue, inputs)
                break
            except sqlite3.Error as exc:
                log.error("kafka_dead_letter_failed", source=self.name, error=str(exc))
                await self._blocked_sleep(1.0)
        for item in items:
            assert item.poison is not None
            POISON_MESSAGES.labels(self.name, item.topic, item.poison.reason).inc()
            log.warning("kafka_poison_message", source=self.name, message=item.poison.input_id,
                        reason=item.poison.reason, detail=item.poison.detail[:300])
            item.part.durable((item.offset,))

    async def _wait_for_room(self, need: int) -> None:
        queue = self.queue
        target = max(0, min(int(queue.max_records * RESUME_FRACTION), queue.max_records - need))
        self._blocked += 1
        try:
            # Sleep first, always: the refusal may come from appends of other batches that are
            # reserved but not committed yet, which `depth` does not show. Retrying without
            # yielding would spin and starve the very appends that free the room.
            await asyncio.sleep(ROOM_POLL_SECONDS)
            while queue.depth > target or queue.is_full:
                await asyncio.sleep(ROOM_POLL_SECONDS)
        finally:
            self._blocked -= 1

    async def _blocked_sleep(self, seconds: float) -> None:
        self._blocked += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self._blocked -= 1

    # -- committing -------------------------------------------------------------------------

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_seconds)
            await self._commit(why="timer", consumer=consumer)
            await self._update_lag(consumer)

    async def _commit(self, tps: set[TopicPartition] | None = None, *, why: str,
                      consumer: AIOKafkaConsumer | None = None, timeout: float | None = None) -> bool:
        """Commit the durable prefix of ``tps`` (all partitions when None); False when it failed."""
        consumer = consumer or self._consumer
        if consumer is None:
            return False
        async with self._commit_lock:
            offsets = self._tracker.to_commit(tps)
            if not offsets:
                return True
            started = time.monotonic()
            try:
                # aiokafka retries a commit without limit while the coordinator is unreachable.
                await asyncio.wait_for(consumer.commit(offsets), timeout or self.settings.commit_timeout_seconds)
            except CommitFailedError as exc:
                # Expected after a rebalance: the new owner starts from the last committed offset.
                return self._commit_failed("rebalance", why, exc)
            except TimeoutError as exc:
                return self._commit_failed("timeout", why, exc)
            except KafkaError as exc:
                return self._commit_failed(type(exc).__name__, why, exc)
            self._tracker.mark_committed(offsets)
            COMMITS.labels(self.name).inc()
            for tp, offset in offsets.items():
                COMMITTED_OFFSET.labels(self.name, tp.topic, str(tp.partition)).set(offset)
            log.debug("kafka_committed", source=self.name, why=why, partitions=len(offsets),
                      seconds=round(time.monotonic() - started, 4))
            return True

    def _commit_failed(self, reason: str, why: str, exc: BaseException) -> bool:
        COMMIT_FAILURES.labels(self.name, reason).inc()
        log.warning("kafka_commit_failed", source=self.name, why=why, reason=reason, error=repr(exc))
        return False

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            hw = consumer.highwater(tp) or self._highwater.get(tp)
            if hw is None:
                continue
            committed = self._tracker.committed(tp)
            if committed is not None:
                base = committed
            else:  # nothing committed by this assignment yet: measure from the fetch position
                try:
                    base = int(await asyncio.wait_for(consumer.position(tp), 1.0))
                except (TimeoutError, KafkaError):
                    continue
            LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, hw - base))

    # -- rebalance --------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._inflight:
            # Let batches of these partitions become durable so their offsets can be committed;
            # bounded, because the whole group waits for this member.
            await asyncio.wait(set(self._inflight), timeout=self.settings.session_timeout_ms / 2000)
        if revoked:
            await self._commit(revoked, why="revoke")
        self._tracker.forget(revoked)
        for tp in revoked:
            self._highwater.pop(tp, None)
            for gauge in (LAG, COMMITTED_OFFSET):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.name, tp.topic, str(tp.partition))
        if revoked:
            log.info("kafka_partitions_revoked", source=self.name,
                     partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        ASSIGNED.labels(self.name).set(len(assigned))
        log.info("kafka_partitions_assigned", source=self.name,
                 partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        if assigned:
            self.assignments += 1
            self.assigned.set()


def _partitions_of(exc: KafkaError) -> set[TopicPartition]:
    """The partitions an offset error names (its first argument: a dict or one partition)."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        return set(arg)
    if isinstance(arg, TopicPartition):
        return {arg}
    return set()


def _fitting(items: list[_Item], room: int) -> list[_Item]:
    """The longest prefix of ``items`` whose records fit in ``room`` (at least one item)."""
    total = 0
    for index, item in enumerate(items):
        total += len(item.records)
        if total > room:
            return items[: max(1, index)]
    return items


def _exceeds(queue: DurableQueue, records: list[Record]) -> bool:
    """These records can never be appended, even to an empty queue."""
    if len(records) > queue.max_records:
        return True
    return sum(len(record_to_json(r)) for r in records) > queue.max_bytes


def _count_result(source: str, records: list[Record], new_ids: list[str], dup_ids: list[str]) -> None:
    kinds = {r.id: r.kind for r in records}
    for ids, counter in ((new_ids, metrics.RECORDS_ENQUEUED), (dup_ids, metrics.RECORDS_DUPLICATE)):
        counts: dict[str, int] = {}
        for rid in ids:
            counts[kinds[rid]] = counts.get(kinds[rid], 0) + 1
        for kind, n in counts.items():
            counter.labels(source, kind).inc(n)


def create_kafka_source(config: dict[str, Any], ctx: SourceContext) -> KafkaSource:
    """Source factory registered as ``type: kafka``."""
    try:
        settings = KafkaSourceSettings.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(source)'}: {err['msg']}" for err in exc.errors()
        )
        raise SourceConfigError(f"source {config.get('name')!r}: {problems}") from None
    return KafkaSource(settings, ctx)
