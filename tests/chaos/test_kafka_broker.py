"""Scenario 3: the Kafka broker is killed (-9) and restarted while the bridge consumes.

The broker is tansu with in-memory storage (tests/sources/kafka/conftest.py; no persistent engine runs
here without a 450 MB S3 server), so a kill loses the broker's messages and the group's offsets.
What the bridge acknowledged to Kafka is what it committed: every message below the committed
offset (read from the broker just before the kill) must be in Cortex, and so must every message
produced after the restart. Messages consumed but not yet committed may or may not arrive, but
nothing may arrive twice, and nothing that was never produced may arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from aiokafka import AIOKafkaProducer, TopicPartition

from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.sources.kafka.source import KafkaSource
from tests.support.cortex import ENTITIES, BridgeFactory, sim_config, sim_state, wait_until
from tests.support.kafka import (  # noqa: F401
    Tansu,
    broker,
    committed_offsets,
    create_topic,
    kafka_source,
    restart_with_topic,
    tansu,
    unique,
)
from tests.support.ledger import BASE_TS, scaled

PARTITIONS = 2


def message(n: int) -> bytes:
    return json.dumps({"kind": "deploy", "entity": ENTITIES[n % len(ENTITIES)], "title": f"k-{n}",
                       "timestamp": BASE_TS + n, "sha": f"{n:040x}"}).encode()


class Producer:
    """Produces numbered messages in small batches; remembers where each acknowledged one landed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.n = 0
        self.landed: dict[int, tuple[int, int]] = {}  # n -> (partition, offset)

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            while not stop.is_set():
                sent = []
                for _ in range(10):
                    self.n += 1
                    sent.append((self.n, await producer.send(self.topic, message(self.n), partition=self.n % PARTITIONS)))
                for n, future in sent:
                    meta = await future
                    self.landed[n] = (meta.partition, meta.offset)
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()


def delivered_titles(state: dict[str, object]) -> Counter[str]:
    deploys = state["deploys"]
    assert isinstance(deploys, dict)
    return Counter(d["title"] for items in deploys.values() for d in items)


async def test_broker_kill9_mid_consumption_loses_nothing_committed_and_duplicates_nothing(
    broker: Tansu, make_bridge: BridgeFactory  # noqa: F811
) -> None:
    topic, group = unique("chaos"), unique("g")
    await create_topic(broker.bootstrap, topic, PARTITIONS)
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=SimFaults(latency_ms=5))) as sim:
        bridge = await make_bridge(
            sim, sources=[kafka_source(broker.bootstrap, topic, group, max_poll_records=20)],
            cortex={"rate_limit_per_minute": 100_000, "burst": 1000})
        source = bridge.sources[0]
        assert isinstance(source, KafkaSource)
        produced: set[int] = set()
        must_arrive: set[int] = set()
        for _ in range(scaled(1, 4)):
            before = Producer(broker.bootstrap, topic)
            before.n = max(produced, default=0)
            stop = asyncio.Event()
            task = asyncio.create_task(before.run(stop))
            await asyncio.sleep(1.5)  # consuming, appending and committing at full speed
            stop.set()
            await task
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            committed = await committed_offsets(broker.bootstrap, group, tps)
            source.assigned.clear()
            # kill -9: the in-memory broker forgets messages, topic and offsets. The topic is back,
            # with its partitions, before the bridge reaches the new broker.
            restart_with_topic(broker, topic, PARTITIONS)
            for p in range(PARTITIONS):
                end = 1 + max((off for part, off in before.landed.values() if part == p), default=-1)
                assert (committed[p] or 0) <= end, \
                    f"partition {p} committed at {committed[p]}, past its end {end}: messages acknowledged unread"
            produced |= set(before.landed)
            must_arrive |= {n for n, (p, off) in before.landed.items() if off < (committed[p] or 0)}
            assert len(must_arrive) > 0, "nothing was committed before the kill"
            await wait_until(source.assigned.is_set, timeout=30)

        after = Producer(broker.bootstrap, topic)
        after.n = max(produced)
        stop = asyncio.Event()
        task = asyncio.create_task(after.run(stop))
        await asyncio.sleep(1.0)
        stop.set()
        await task
        produced |= set(after.landed)
        must_arrive |= set(after.landed)

        async def all_arrived() -> bool:
            titles = delivered_titles(await sim_state(sim))
            return all(f"k-{n}" in titles for n in must_arrive) and bridge.queue.depth == 0

        await wait_until(all_arrived, timeout=60)
        titles = delivered_titles(await sim_state(sim))
    twice = [t for t, count in titles.items() if count > 1]
    assert not twice, f"stored twice: {twice[:5]}"
    unknown = set(titles) - {f"k-{n}" for n in produced}
    assert not unknown, f"delivered but never produced: {sorted(unknown)[:5]}"
