"""The Kafka source against a real broker (tansu) and the Cortex simulator, end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge import metrics
from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.queue import DurableQueue, inspect
from bridge.sources.kafka.source import KafkaSource
from tests.support.cortex import BridgeFactory, sim_state, wait_until
from tests.support.kafka import (
    Tansu,
    committed_offsets,
    create_topic,
    kafka_source,
    produce,
    restart_with_topic,
    start_bridge,
    unique,
)
from tests.support.processes import free_port
from tests.support.queue_file import stored_rows

ENTITIES = ["checkout-service", "payments-api", "inventory"]


def deploy(n: int, tag: str = "run") -> bytes:
    """A native deploy message; its title is unique, so duplicates are visible in the simulator."""
    return json.dumps({
        "kind": "deploy",
        "entity": ENTITIES[n % len(ENTITIES)],
        "title": f"{tag}-{n}",
        "timestamp": 1_760_000_000 + n,
        # Per title: a message of another tag is another change, not a report of the same deploy.
        "sha": hashlib.sha1(f"{tag}-{n}".encode()).hexdigest(),
    }).encode()


def titles(state: dict[str, Any]) -> list[str]:
    return [d["title"] for deploys in state["deploys"].values() for d in deploys]


def kafka_of(bridge: Any) -> KafkaSource:
    source = bridge.sources[0]
    assert isinstance(source, KafkaSource)
    return source


async def test_messages_across_partitions_become_exactly_one_record_each(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    topic, group = unique("deploys"), unique("g")
    await create_topic(broker.bootstrap, topic, 4)
    n = 240
    await produce(broker.bootstrap, topic, [(i % 4, f"k{i}".encode(), deploy(i), []) for i in range(n)])
    bridge = await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group)])

    async def all_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= n

    await wait_until(all_delivered, timeout=30)
    await asyncio.sleep(0.3)  # a duplicate would arrive right after the last original
    got = titles(await sim_state(sim))
    assert sorted(got) == sorted(f"run-{i}" for i in range(n))
    tps = [TopicPartition(topic, p) for p in range(4)]

    async def committed_to_end() -> bool:
        return await committed_offsets(broker.bootstrap, group, tps) == {p: n // 4 for p in range(4)}

    await wait_until(committed_to_end, timeout=10)
    assert metrics.sample("cortex_bridge_kafka_messages_consumed_total", {"source": "events", "topic": topic}) == n
    lag = [metrics.sample("cortex_bridge_kafka_lag", {"source": "events", "topic": topic, "partition": str(p)})
           for p in range(4)]
    assert lag == [0, 0, 0, 0]
    await bridge.stop(deadline=5)


async def test_poison_message_is_dead_lettered_and_commit_waits_for_it(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic, group = unique("poison"), unique("g")
    await create_topic(broker.bootstrap, topic, 1)
    release = asyncio.Event()
    original = DurableQueue.dead_letter_raw

    async def held_dead_letter(queue: Any, inputs: Any) -> list[str]:
        await release.wait()
        return await original(queue, inputs)

    monkeypatch.setattr(DurableQueue, "dead_letter_raw", held_dead_letter)
    messages: list[Any] = [(0, f"k{i}".encode(), deploy(i), []) for i in range(10)]
    messages[4] = (0, b"bad-key", b"{not json", [("origin", b"test")])
    await produce(broker.bootstrap, topic, messages)
    queue_path = tmp_path / "poison.db"
    bridge = await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group, max_poll_records=3)],
                                queue_path=queue_path)
    expected = sorted(f"run-{i}" for i in range(10) if i != 4)

    async def later_delivered() -> bool:
        return sorted(titles(await sim_state(sim))) == expected

    # Messages after the poison one are delivered while its dead letter is still being written...
    await wait_until(later_delivered, timeout=20)
    await asyncio.sleep(0.5)  # several commit intervals
    tp = TopicPartition(topic, 0)
    # ...but the committed offset stops right before it.
    assert (await committed_offsets(broker.bootstrap, group, [tp]))[0] == 4
    release.set()

    async def committed_past() -> bool:
        return (await committed_offsets(broker.bootstrap, group, [tp]))[0] == 10

    await wait_until(committed_past, timeout=10)
    entries = stored_rows(bridge.queue, "SELECT id, kind, source, reason, body FROM dead")
    assert len(entries) == 1
    entry_id, kind, source, reason, body = entries[0]
    assert (kind, source, reason) == ("raw_input", "events", "invalid_json")
    doc = json.loads(body)
    assert (doc["topic"], doc["partition"], doc["offset"], doc["key"]) == (topic, 0, 4, "bad-key")
    assert doc["payload"] == "{not json" and doc["headers"] == {"origin": "test"}
    await bridge.stop(deadline=5)
    # The operator's view (`cortex-bridge dlq list/show`) shows it.
    conn = inspect.open_file(queue_path)
    try:
        listed = inspect.dlq_list(conn)
        shown = inspect.dlq_show(conn, entry_id)
    finally:
        conn.close()
    assert [(e["id"], e["reason"]) for e in listed] == [(entry_id, "invalid_json")]
    assert shown is not None and shown["record"]["offset"] == 4
    assert sorted(titles(await sim_state(sim))) == expected


async def test_bridge_restart_mid_stream_loses_and_duplicates_nothing(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory, tmp_path: Path
) -> None:
    topic, group = unique("restart"), unique("g")
    await create_topic(broker.bootstrap, topic, 2)
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i), []) for i in range(300)])
    sim.config.faults = SimFaults(latency_ms=100)  # slow enough to stop in the middle (~80 deploys/s)
    source = kafka_source(broker.bootstrap, topic, group, max_poll_records=20)
    queue_path = tmp_path / "restart.db"
    first = await start_bridge(make_bridge, sim, [source], queue_path=queue_path)

    async def some_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= 60

    await wait_until(some_delivered, timeout=20)
    await first.stop(deadline=5)
    delivered_before = len(titles(await sim_state(sim)))
    assert delivered_before < 300, "the restart must happen mid-stream"
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i), []) for i in range(300, 400)])
    sim.config.faults = SimFaults()
    await start_bridge(make_bridge, sim, [source], queue_path=queue_path)

    async def all_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= 400

    await wait_until(all_delivered, timeout=30)
    await asyncio.sleep(0.3)
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(400))


async def test_broker_kill_and_restart_resumes_consumption(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    topic, group = unique("brokerkill"), unique("g")
    await create_topic(broker.bootstrap, topic, 2)
    bridge = await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group)])
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i, "before"), []) for i in range(20)])

    async def delivered(count: int) -> bool:
        return len(titles(await sim_state(sim))) >= count

    await wait_until(lambda: delivered(20), timeout=20)
    source = kafka_of(bridge)
    source.assigned.clear()
    # tansu keeps data in memory: after kill -9 the topic, its messages and the group are gone.
    restart_with_topic(broker, topic, 2)
    await wait_until(source.assigned.is_set, timeout=20)
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i, "after"), []) for i in range(20)])
    await wait_until(lambda: delivered(40), timeout=30)
    await asyncio.sleep(0.3)
    expected = [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)]
    assert sorted(titles(await sim_state(sim))) == sorted(expected)


async def test_offsets_of_a_membership_the_broker_lost_are_not_committed_into_the_new_broker(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    """The broker loses its data and the group (kill -9 of in-memory tansu) while the member holds a
    durable but uncommitted prefix. The member is unknown to the new broker: its partitions are lost,
    not revoked, and the old prefix must not be committed there. The new partitions hold other
    messages at those offsets; such a commit would acknowledge them unread, and the member would
    start after them.
    """
    topic, group = unique("lost"), unique("g")
    await create_topic(broker.bootstrap, topic, 2)
    # No timer commit: the whole durable prefix is still uncommitted when the broker dies.
    bridge = await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group,
                                                                commit_interval_seconds=3600)])
    source = kafka_of(bridge)
    await wait_until(source.assigned.is_set, timeout=20)
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i, "before"), []) for i in range(40)])

    async def delivered(count: int) -> bool:
        return len(titles(await sim_state(sim))) >= count

    await wait_until(lambda: delivered(40), timeout=20)
    source.assigned.clear()
    restart_with_topic(broker, topic, 2)
    await wait_until(source.assigned.is_set, timeout=20)  # rejoined: the lost partitions were given up
    tps = [TopicPartition(topic, p) for p in range(2)]
    assert await committed_offsets(broker.bootstrap, group, tps) == {0: None, 1: None}, \
        "offsets of the old broker's messages were committed into the new broker"
    # Fewer messages than before the kill: every one sits below the old commit point.
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i, "after"), []) for i in range(10)])
    await wait_until(lambda: delivered(50), timeout=30)
    await asyncio.sleep(0.3)
    expected = [f"before-{i}" for i in range(40)] + [f"after-{i}" for i in range(10)]
    assert sorted(titles(await sim_state(sim))) == sorted(expected)


async def test_two_bridges_in_one_group_split_partitions_and_deliver_once(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory, tmp_path: Path
) -> None:
    topic, group = unique("split"), unique("g")
    await create_topic(broker.bootstrap, topic, 4)
    bridges = [
        await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group, name=f"split-{x}")],
                           queue_path=tmp_path / f"{x}.db")
        for x in ("a", "b")
    ]
    sources = [kafka_of(b) for b in bridges]

    def split() -> bool:
        return [metrics.sample("cortex_bridge_kafka_assigned_partitions", {"source": s.name}) for s in sources] \
            == [2, 2]

    await wait_until(split, timeout=20)
    n = 200
    await produce(broker.bootstrap, topic, [(i % 4, None, deploy(i), []) for i in range(n)])

    async def all_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= n

    await wait_until(all_delivered, timeout=30)
    await asyncio.sleep(0.3)
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(n))
    consumed = [metrics.sample("cortex_bridge_kafka_messages_consumed_total", {"source": s.name, "topic": topic})
                for s in sources]
    assert consumed == [n / 2, n / 2]  # each member read exactly its two partitions


async def test_full_queue_pauses_partitions_keeps_membership_and_loses_nothing(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    topic, group = unique("full"), unique("g")
    await create_topic(broker.bootstrap, topic, 2)
    # max_poll_interval 1 s: a consumer that stopped polling while paused would leave the group.
    # Small batches: several are in flight at once and compete for the last free slots.
    source = kafka_source(broker.bootstrap, topic, group, max_poll_interval_ms=1000, max_poll_records=7)
    bridge = await start_bridge(make_bridge, sim, [source], queue={"max_records": 20})
    kafka = kafka_of(bridge)
    await wait_until(kafka.assigned.is_set, timeout=20)
    pauses_before = metrics.sample("cortex_bridge_kafka_pauses_total", {"source": "events"})
    await sim.outage(None)  # Cortex is down: nothing drains the queue
    n = 200
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i), []) for i in range(n)])
    await wait_until(lambda: metrics.sample("cortex_bridge_kafka_paused", {"source": "events"}) == 1, timeout=10)
    # Longer than both the session timeout and the poll interval: membership must survive it.
    await asyncio.sleep(2.5)
    assert metrics.sample("cortex_bridge_kafka_paused", {"source": "events"}) == 1
    assert bridge.queue.depth == 20
    assert kafka.assignments == 1
    await sim.resume()

    async def all_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= n

    await wait_until(all_delivered, timeout=40)
    await asyncio.sleep(0.3)
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(n))
    assert metrics.sample("cortex_bridge_kafka_pauses_total", {"source": "events"}) > pauses_before
    assert metrics.sample("cortex_bridge_kafka_paused", {"source": "events"}) == 0
    tps = [TopicPartition(topic, p) for p in range(2)]

    async def committed_to_end() -> bool:
        return await committed_offsets(broker.bootstrap, group, tps) == {0: n // 2, 1: n // 2}

    # A member that had left the group would only rejoin (a second assignment) around here.
    await wait_until(committed_to_end, timeout=10)
    assert kafka.assignments == 1, "pausing must not cost the group membership"
    assert (stored_rows(bridge.queue, "SELECT COUNT(*) FROM dead"))[0][0] == 0


async def test_bridge_killed_mid_stream_resumes_without_loss_or_duplicates(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory, tmp_path: Path
) -> None:
    """kill -9 of a real bridge process: uncommitted messages come again and dedupe by record id."""
    topic, group = unique("crash"), unique("g")
    await create_topic(broker.bootstrap, topic, 2)
    n = 300
    await produce(broker.bootstrap, topic, [(i % 2, None, deploy(i), []) for i in range(n)])
    sim.config.faults = SimFaults(latency_ms=10)
    queue_path = tmp_path / "crash.db"
    # A long commit interval: at the kill, much of what is durable is not committed yet.
    source = kafka_source(broker.bootstrap, topic, group, max_poll_records=20, commit_interval_seconds=30)
    config = {
        "cortex": {"url": sim.url, "token": "sim-token", "linger_ms": 5, "rate_limit_per_minute": 100_000,
                   "burst": 1000},
        # A small queue: consumption follows delivery, so the kill also lands mid-topic.
        "queue": {"path": str(queue_path), "max_records": 30},
        "http": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "warning"},
        "ingest": {"allow_unauthenticated": True},
        "sources": [source],
    }
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "--config", str(config_path), "run",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async def some_delivered() -> bool:
            assert proc.returncode is None, "the bridge process exited on its own"
            return len(titles(await sim_state(sim))) >= 60

        await wait_until(some_delivered, timeout=30)
    finally:
        proc.kill()
        await proc.wait()
    assert len(titles(await sim_state(sim))) < n, "the kill must happen mid-stream"
    sim.config.faults = SimFaults()
    duplicates = metrics.sample("cortex_bridge_records_duplicate_total", {"source": "events", "kind": "deploy"})
    await start_bridge(make_bridge, sim, [{**source, "commit_interval_seconds": 0.2}], queue_path=queue_path)

    async def all_delivered() -> bool:
        return len(titles(await sim_state(sim))) >= n

    await wait_until(all_delivered, timeout=30)
    tps = [TopicPartition(topic, p) for p in range(2)]

    async def committed_to_end() -> bool:
        return await committed_offsets(broker.bootstrap, group, tps) == {0: n // 2, 1: n // 2}

    await wait_until(committed_to_end, timeout=15)
    await asyncio.sleep(0.3)
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(n))
    # Nothing was committed before the kill: messages came again and were recognized by record id.
    assert metrics.sample("cortex_bridge_records_duplicate_total", {"source": "events", "kind": "deploy"}) \
        > duplicates


async def test_pattern_subscription_reads_every_matching_topic(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    prefix, group = unique("pat"), unique("g")
    for suffix in ("a", "b"):
        await create_topic(broker.bootstrap, f"{prefix}-{suffix}", 1)
    await create_topic(broker.bootstrap, f"other-{prefix}", 1)
    source = kafka_source(broker.bootstrap, "", group, topics=[], topic_pattern=f"^{prefix}-.*")
    await start_bridge(make_bridge, sim, [source])
    await produce(broker.bootstrap, f"{prefix}-a", [(0, None, deploy(i), []) for i in range(0, 10)])
    await produce(broker.bootstrap, f"{prefix}-b", [(0, None, deploy(i), []) for i in range(10, 20)])
    await produce(broker.bootstrap, f"other-{prefix}", [(0, None, deploy(i, "other"), []) for i in range(5)])

    async def delivered() -> bool:
        return len(titles(await sim_state(sim))) >= 20

    await wait_until(delivered, timeout=20)
    await asyncio.sleep(0.3)
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(20))


async def test_bridge_started_while_kafka_is_down_consumes_once_it_is_up(
    sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    late = Tansu(free_port())  # nothing listens there yet
    topic, group = unique("late"), unique("g")
    bridge = await start_bridge(make_bridge, sim, [kafka_source(late.bootstrap, topic, group)])
    await asyncio.sleep(1.0)  # a few failed connection attempts
    assert bridge.readiness()[0], "a source waiting for Kafka must not block the bridge"
    late.start()
    try:
        await create_topic(late.bootstrap, topic, 1)
        await produce(late.bootstrap, topic, [(0, None, deploy(i), []) for i in range(10)])

        async def delivered() -> bool:
            return len(titles(await sim_state(sim))) >= 10

        await wait_until(delivered, timeout=30)
        await bridge.stop(deadline=5)
    finally:
        late.kill()
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(10))


async def test_a_batch_that_fails_unexpectedly_is_fetched_again_not_skipped(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, group = unique("fail"), unique("g")
    await create_topic(broker.bootstrap, topic, 1)
    await produce(broker.bootstrap, topic, [(0, None, deploy(i), []) for i in range(30)])
    bridge = await start_bridge(make_bridge, sim, [kafka_source(broker.bootstrap, topic, group,
                                                                max_poll_records=10)])
    original = bridge.queue.append
    calls = 0

    async def append_failing_once(records: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk controller on fire")
        return await original(records, **kwargs)

    monkeypatch.setattr(bridge.queue, "append", append_failing_once)
    tp = TopicPartition(topic, 0)

    async def committed_all() -> bool:
        return (await committed_offsets(broker.bootstrap, group, [tp]))[0] == 30

    await wait_until(committed_all, timeout=30)
    await wait_until(lambda: bridge.queue.depth == 0, timeout=10)
    assert calls > 3, "the failed batch was fetched and appended again"
    assert sorted(titles(await sim_state(sim))) == sorted(f"run-{i}" for i in range(30))
