"""CloudEvents and CDEvents over Kafka (binding spec fixtures, CDEvents conformance documents)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge import metrics
from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import BridgeFactory, sim_state, wait_until
from tests.support.kafka import (
    Tansu,
    committed_offsets,
    create_topic,
    kafka_source,
    produce,
    start_bridge,
    unique,
)
from tests.support.paths import FIXTURES as ALL_FIXTURES
from tests.support.queue_file import stored_rows

FIXTURES = ALL_FIXTURES / "kafka"
CDEVENTS = ["service_deployed", "incident_detected", "pipelinerun_finished"]
#: entity map for the CDEvents subjects (artifact "myapp", service "myApp", pipeline "myPipeline")
ENTITY = {"static": {"myapp": "checkout-service", "mypipeline": "payments-api"}, "lookup": False}


def spec_message(name: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """Key and headers of a Kafka record as rendered in the CloudEvents Kafka binding spec."""
    text = (FIXTURES / name).read_text()
    key_match = re.search(r"^Key: (.+)$", text, re.MULTILINE)
    section = text.split("------------------ headers -------------------", 1)[1]
    section = section.split("------------------- value --------------------", 1)[0]
    headers = []
    for line in section.splitlines():
        match = re.fullmatch(r"([a-z_-]+): (.+)", line.strip())
        if match:
            headers.append((match.group(1), match.group(2).strip('"').encode()))
    return (key_match.group(1).encode() if key_match else None), headers


def cdevent(name: str) -> tuple[bytes, dict[str, Any]]:
    raw = (FIXTURES / f"{name}.json").read_bytes()
    return raw, json.loads(raw)["context"]


def binary_mode(name: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A CDEvent in Kafka binary mode: ce_* headers from its context, the document as the value."""
    raw, context = cdevent(name)
    key, spec_headers = spec_message("spec.kafka-binary-mode.message.txt")
    assert {h for h, _ in spec_headers} >= {"ce_specversion", "ce_type", "ce_source", "ce_id", "ce_time"}
    headers = [("ce_specversion", b"1.0"), ("ce_id", context["id"].encode()),
               ("ce_source", context["source"].encode()), ("ce_type", context["type"].encode()),
               ("ce_time", context["timestamp"].encode()), ("content-type", b"application/json")]
    return key, raw, headers


def structured_mode(name: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A CDEvent in Kafka structured mode: the whole CloudEvent as the value."""
    raw, context = cdevent(name)
    key, headers = spec_message("spec.kafka-structured-mode.message.txt")
    assert headers == [("content-type", b"application/cloudevents+json; charset=UTF-8")]
    event = {"specversion": "1.0", "id": context["id"], "source": context["source"], "type": context["type"],
             "time": context["timestamp"], "datacontenttype": "application/json", "data": json.loads(raw)}
    return key, json.dumps(event).encode(), headers


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_cdevents_fixtures_become_the_expected_records(
    mode: str, broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    topic, group = unique(f"cdevents-{mode}"), unique("g")
    await create_topic(broker.bootstrap, topic, 1)
    build = binary_mode if mode == "binary" else structured_mode
    messages: list[Any] = []
    for name in CDEVENTS:
        key, value, headers = build(name)
        messages.append((0, key, value, headers))
    # The spec's own binary-mode record: a valid CloudEvent whose type nobody maps (ignored).
    key, headers = spec_message("spec.kafka-binary-mode.message.txt")
    messages.append((0, key, b"... application data encoded in Avro ...", headers))
    await produce(broker.bootstrap, topic, messages)
    source = kafka_source(broker.bootstrap, topic, group,
                          topics=[{"name": topic, "format": "cloudevents", "options": {"entity": ENTITY}}])
    bridge = await start_bridge(make_bridge, sim, [source])

    async def delivered() -> bool:
        counts = (await sim_state(sim))["counts"]
        return bool(counts["deploys"] == 1 and counts["events"] == 2)

    await wait_until(delivered, timeout=20)
    tp = TopicPartition(topic, 0)

    async def committed_all() -> bool:
        return (await committed_offsets(broker.bootstrap, group, [tp]))[0] == 4

    await wait_until(committed_all, timeout=10)
    state = await sim_state(sim)
    [deploy] = state["deploys"]["checkout-service"]
    assert (deploy["title"], deploy["type"], deploy["environment"]) == ("Deployed myapp", "DEPLOY", "test123")
    assert deploy["timestamp"].startswith("2023-03-20T14:27:05.315")
    events = {e["type"]: (tag, e) for tag, items in state["events"].items() for e in items}
    assert set(events) == {"INCIDENT_DETECTED", "PIPELINE_FAILED"}
    incident_tag, incident = events["INCIDENT_DETECTED"]
    assert incident_tag == "checkout-service"
    assert incident["description"] == "Response time above threshold of 100ms"
    pipeline_tag, pipeline = events["PIPELINE_FAILED"]
    assert pipeline_tag == "payments-api" and pipeline["title"] == "Pipeline myPipeline: failure"
    labels = {"source": "events", "topic": topic}
    assert metrics.sample("cortex_bridge_kafka_messages_ignored_total", labels) == 1
    assert (stored_rows(bridge.queue, "SELECT COUNT(*) FROM dead"))[0][0] == 0


async def test_undecodable_cloudevent_is_poison_and_unknown_entity_is_a_dead_letter(
    broker: Tansu, sim: SimulatorServer, make_bridge: BridgeFactory
) -> None:
    topic, group = unique("cdevents-dead"), unique("g")
    await create_topic(broker.bootstrap, topic, 1)
    key, value, headers = binary_mode("service_deployed")
    await produce(broker.bootstrap, topic, [
        (0, key, b'{"context": ', headers),  # binary mode, JSON content type, broken JSON
        (0, key, value, headers),  # fine, but no entity is configured for it
    ])
    no_entities = {"static": {"someone-else": "inventory"}, "lookup": False}
    source = kafka_source(broker.bootstrap, topic, group,
                          topics=[{"name": topic, "format": "cloudevents", "options": {"entity": no_entities}}])
    bridge = await start_bridge(make_bridge, sim, [source])
    tp = TopicPartition(topic, 0)

    async def committed_all() -> bool:
        return (await committed_offsets(broker.bootstrap, group, [tp]))[0] == 2

    await wait_until(committed_all, timeout=20)
    rows = stored_rows(bridge.queue, "SELECT kind, reason, body FROM dead ORDER BY kind")
    assert [(kind, reason) for kind, reason, _ in rows] == [("deploy", "entity-unresolved"),
                                                          ("raw_input", "unmappable")]
    poison = json.loads(rows[1][2])
    assert (poison["offset"], poison["headers"]["ce_type"]) == (0, "dev.cdevents.service.deployed.0.3.0")
    await asyncio.sleep(0.2)
    assert (await sim_state(sim))["counts"]["deploys"] == 0
