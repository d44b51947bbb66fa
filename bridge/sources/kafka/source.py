"""Kafka source: a consumer group whose messages become records, at least once, never skipped.

The contract is the webhook path's: what Kafka is told (the committed offset) never runs ahead of
what is on disk. Per batch from ``getmany``:

1. every message is decoded by its topic's format (:mod:`bridge.sources.kafka.formats`) into
   records, "nothing to map", or a poison verdict;
2. records are appended to the durable queue (several batches may be in flight, so SQLite's group
   commit amortizes the fsync); poison messages go to the dead-letter set with topic, partition,
   offset, key and reason (:mod:`bridge.queue.poison`); steps 1 and 2 are
   :mod:`bridge.sources.kafka.batches`;
3. :mod:`bridge.sources.kafka.offsets` commits, per partition, only the highest offset below which
   every fetched message is durable, on a timer, when partitions are revoked and at shutdown, and
   only while the group membership the partitions were assigned under still holds: partitions of a
   member the coordinator no longer knows are lost, and nothing is committed for them.

When the queue is full, all assigned partitions are paused and ``getmany`` keeps being called (it
returns nothing) so the member stays in the group; they resume once the queue has drained.
Offsets out of range are never skipped forward: the partition restarts at its earliest offset
(:mod:`bridge.sources.kafka.positions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)

from bridge import metrics
from bridge.config import ConfigError
from bridge.records import utc_now
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.kafka.batches import BatchWriter, FetchedPartition
from bridge.sources.kafka.offsets import (
    Membership,
    MembershipLost,
    OffsetTracker,
    check_membership_pinning,
    committing_as,
    membership,
    pin_commits_to_membership,
)
from bridge.sources.kafka.positions import partition_names, partitions_of, seek_out_of_range, seek_uncommitted
from bridge.sources.kafka.settings import KafkaSourceSettings
from bridge.tasks import cancel_and_wait

log = structlog.get_logger("bridge.kafka")


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
        check_membership_pinning()
        self.name = settings.name
        self.settings = settings
        self.queue = ctx.queue
        self._writer = BatchWriter(settings, ctx)
        self._tracker = OffsetTracker()
        #: the group membership the current assignment was given under (None: no assignment)
        self._member: Membership | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._paused = False
        self._stopping = False
        self._highwater: dict[TopicPartition, int] = {}
        self._failure: BaseException | None = None
        #: set whenever partitions were assigned (tests wait on it)
        self.assigned = asyncio.Event()
        #: how many times this member was given partitions (each is a group rebalance)
        self.assignments = 0

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
            await cancel_and_wait(self._task)
            self._task = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._close(consumer, deadline, why="shutdown")
        metrics.KAFKA_PAUSED.labels(self.name).set(0)
        metrics.KAFKA_ASSIGNED.labels(self.name).set(0)
        log.info("kafka_stopped", source=self.name)

    async def _close(self, consumer: AIOKafkaConsumer, deadline: float, *, why: str) -> None:
        """Let in-flight batches become durable, commit them, leave the group."""
        if self._committer is not None:
            await cancel_and_wait(self._committer)
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
            self._member = None
            pin_commits_to_membership(consumer)
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
                self._member = None
                await asyncio.sleep(delay)

    # -- fetching ---------------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        settings = self.settings
        while not self._stopping:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise RuntimeError("a batch could not be made durable") from failure
            self._apply_backpressure(consumer, self._writer.blocked > 0)
            if len(self._inflight) >= settings.max_batches_in_flight and not self._writer.blocked:
                await asyncio.wait(set(self._inflight), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                # While paused this returns nothing but still counts as a poll: the member stays.
                batch = await consumer.getmany(timeout_ms=settings.poll_timeout_ms,
                                               max_records=settings.max_poll_records)
            except NoOffsetForPartitionError as exc:
                await seek_uncommitted(consumer, partitions_of(exc), tracker=self._tracker,
                                       start_from=settings.start_from, source=self.name)
                continue
            except OffsetOutOfRangeError as exc:
                await seek_out_of_range(consumer, partitions_of(exc), tracker=self._tracker, source=self.name)
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

    def _apply_backpressure(self, consumer: AIOKafkaConsumer, blocked: bool) -> None:
        if blocked:
            # Re-applied every round: partitions assigned during the pause start paused too.
            unpaused = consumer.assignment() - consumer.paused()
            if unpaused:
                consumer.pause(*unpaused)
            if not self._paused:
                self._paused = True
                metrics.KAFKA_PAUSED.labels(self.name).set(1)
                metrics.KAFKA_PAUSES.labels(self.name).inc()
                log.warning("kafka_paused", source=self.name, reason="queue full",
                            queue_depth=self.queue.depth)
        elif self._paused:
            self._paused = False
            paused = consumer.paused()
            if paused:
                consumer.resume(*paused)
            metrics.KAFKA_PAUSED.labels(self.name).set(0)
            log.info("kafka_resumed", source=self.name, queue_depth=self.queue.depth)

    def _dispatch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Register the batch's offsets, then map and store it in a task of its own."""
        parts: list[FetchedPartition] = []
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
            metrics.KAFKA_MESSAGES_CONSUMED.labels(self.name, tp.topic).inc(len(messages))
        task = asyncio.create_task(self._writer.write(parts, utc_now()))
        self._inflight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # Its offsets would stay pending and hold the commit point forever: restart the
            # member instead, so the batch is fetched again from the last committed offset.
            self._failure = task.exception()

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
            member = self._member
            if member is None or membership(consumer) != member:
                # The coordinator forgot this member (session over, or a broker that lost the group):
                # the partitions are lost, and these offsets may describe a log the group no longer has.
                return self._commit_failed("membership_lost", why, MembershipLost(f"assigned under {member}"))
            started = time.monotonic()
            try:
                # aiokafka retries a commit without limit while the coordinator is unreachable; every
                # attempt is sent only while `member` holds (kafka_offsets.pin_commits_to_membership).
                with committing_as(member):
                    await asyncio.wait_for(consumer.commit(offsets),
                                           timeout or self.settings.commit_timeout_seconds)
            except CommitFailedError as exc:
                # Expected after a rebalance: the new owner starts from the last committed offset.
                return self._commit_failed("rebalance", why, exc)
            except MembershipLost as exc:
                return self._commit_failed("membership_lost", why, exc)
            except TimeoutError as exc:
                return self._commit_failed("timeout", why, exc)
            except KafkaError as exc:
                return self._commit_failed(type(exc).__name__, why, exc)
            self._tracker.mark_committed(offsets)
            metrics.KAFKA_COMMITS.labels(self.name).inc()
            for tp, offset in offsets.items():
                metrics.KAFKA_COMMITTED_OFFSET.labels(self.name, tp.topic, str(tp.partition)).set(offset)
            log.debug("kafka_committed", source=self.name, why=why, partitions=len(offsets),
                      seconds=round(time.monotonic() - started, 4))
            return True

    def _commit_failed(self, reason: str, why: str, exc: BaseException) -> bool:
        metrics.KAFKA_COMMIT_FAILURES.labels(self.name, reason).inc()
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
            metrics.KAFKA_LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, hw - base))

    # -- rebalance --------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # aiokafka calls this also when the coordinator did not know the member anymore (its
        # generation is reset by then): the partitions are lost, not handed over, and committing
        # the old durable prefix could land in a group that has other messages at those offsets.
        lost = self._member is None or membership(self._consumer) != self._member
        if revoked and not lost:
            if self._inflight:
                # Let batches of these partitions become durable so their offsets can be committed;
                # bounded, because the whole group waits for this member.
                await asyncio.wait(set(self._inflight), timeout=self.settings.session_timeout_ms / 2000)
            await self._commit(revoked, why="revoke")
        self._member = None
        self._tracker.forget(revoked)
        for tp in revoked:
            self._highwater.pop(tp, None)
            for gauge in (metrics.KAFKA_LAG, metrics.KAFKA_COMMITTED_OFFSET):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.name, tp.topic, str(tp.partition))
        if revoked and lost:
            log.warning("kafka_partitions_lost", source=self.name, partitions=partition_names(revoked),
                        note="the group no longer knew this member: nothing committed for them")
        elif revoked:
            log.info("kafka_partitions_revoked", source=self.name, partitions=partition_names(revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._member = membership(self._consumer)
        metrics.KAFKA_ASSIGNED.labels(self.name).set(len(assigned))
        log.info("kafka_partitions_assigned", source=self.name, partitions=partition_names(assigned))
        if assigned:
            self.assignments += 1
            self.assigned.set()


def create(config: dict[str, Any], ctx: SourceContext) -> KafkaSource:
    """Source factory registered as ``type: kafka``."""
    settings = parse_settings(KafkaSourceSettings, config)
    return KafkaSource(settings, ctx)
