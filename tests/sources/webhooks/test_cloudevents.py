"""CloudEvents (structured, batch, binary) carrying CDEvents, over HTTP into a running bridge."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    fixture_bytes,
    fixture_json,
    only,
    without_bridge_id,
)

CLOUDEVENTS: dict[str, Any] = {
    "name": "cdevents",
    "type": "cloudevents",
    "secrets": [SECRET],
    "pipeline_duration_metric": "ci-pipeline-duration",
    "entity": {"static": {"mySubject123": "my-service", "myApp": "my-app", "myPipeline": "my-pipeline"}},
}
AUTH = {"Authorization": f"Bearer {SECRET}"}


async def binary(running: Running, fixture: str, **context: str) -> tuple[int, Any]:
    """A CDEvent in HTTP binary mode: context as ce-* headers, the document as the body."""
    document = fixture_json(fixture)
    ctx = {**document["context"], **context}
    headers = {"ce-specversion": "1.0", "ce-id": ctx["id"], "ce-source": ctx["source"], "ce-type": ctx["type"],
               "ce-time": ctx["timestamp"], **AUTH}
    body = fixture_bytes(fixture) if not context else json.dumps({**document, "context": ctx}).encode()
    return await running.post("cdevents", body, headers)


async def structured(running: Running, fixture: str) -> tuple[int, Any]:
    """A CDEvent in structured mode: a CloudEvent whose data is the CDEvent document."""
    document = fixture_json(fixture)
    context = document["context"]
    event = {"specversion": "1.0", "id": context["id"], "source": context["source"], "type": context["type"],
             "time": context["timestamp"], "datacontenttype": "application/json", "data": document}
    return await running.post("cdevents", json.dumps(event).encode(), AUTH, "application/cloudevents+json")


async def bare(running: Running, fixture: str) -> tuple[int, Any]:
    """A CDEvent document as the CDEvents spec serializes it, posted as plain JSON."""
    return await running.post("cdevents", fixture_bytes(fixture), AUTH)


SERVICE_DEPLOYED = {
    "title": "Deployed myapp",
    "timestamp": "2023-03-20T14:27:05.315Z",
    "type": "DEPLOY",
    "environment": "test123",
    "customData": {
        "artifactId": "pkg:oci/myapp@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427",
        "cdeventType": "dev.cdevents.service.deployed.0.3.0",
        "cdeventSource": "/event/source/123",
        "cdeventId": "271069a8-fc18-44f1-b38f-9d70a1695819",
    },
}


@pytest.mark.parametrize("mode", [binary, structured, bare])
async def test_service_deployed_is_a_deploy_in_every_mode(start_bridge: StartBridge, mode: Any) -> None:
    running = await start_bridge(CLOUDEVENTS)
    assert (await mode(running, "cdevents/service_deployed.json"))[0] == 202
    assert without_bridge_id(only((await running.settled())["deploys"], "my-service")) == SERVICE_DEPLOYED


async def test_one_event_in_three_modes_is_stored_once(start_bridge: StartBridge) -> None:
    running = await start_bridge(CLOUDEVENTS)
    answers = [await mode(running, "cdevents/service_deployed.json") for mode in (binary, structured, bare)]
    assert [a[1].get("duplicate_delivery", False) for a in answers] == [False, True, True]
    assert (await running.settled())["counts"]["deploys"] == 1


@pytest.mark.parametrize(("ce_type", "deploy_type", "title"), [
    ("dev.cdevents.service.upgraded.0.3.0", "DEPLOY", "Deployed myapp"),
    ("dev.cdevents.service.rolledback.0.3.0", "ROLLBACK", "Rolled back myapp"),
])
async def test_upgraded_and_rolled_back_services(start_bridge: StartBridge, ce_type: str, deploy_type: str,
                                                 title: str) -> None:
    # service.upgraded/rolledback share service.deployed's subject content; the spec's sample with
    # the other type.
    running = await start_bridge(CLOUDEVENTS)
    assert (await binary(running, "cdevents/service_deployed.json", type=ce_type))[0] == 202
    deploy = only((await running.settled())["deploys"], "my-service")
    assert (deploy["type"], deploy["title"], deploy["environment"]) == (deploy_type, title, "test123")


async def test_pipelinerun_finished_is_an_event_and_a_duration(start_bridge: StartBridge) -> None:
    running = await start_bridge(CLOUDEVENTS)
    started = await binary(running, "cdevents/pipelinerun_started.json")
    assert started == (202, {"ignored": "pipelinerun-started: start time kept for the duration metric"})
    status, answer = await binary(running, "cdevents/pipelinerun_finished.json")
    assert status == 202 and answer["accepted"] == 2
    state = await running.settled()
    assert without_bridge_id(only(state["events"], "my-pipeline")) == {
        "title": "Pipeline myPipeline: failure",
        "type": "PIPELINE_FAILED",
        "timestamp": "2023-03-20T14:27:05.315Z",
        "description": "Something went wrong\nWith some more details",
        "url": "https://www.example.com/mySubject123",
        "customData": {"pipelineRun": "mySubject123", "outcome": "failure", "cdeventSource": "/event/source/123",
                       "cdeventId": "271069a8-fc18-44f1-b38f-9d70a1695819"},
    }
    # The samples start and finish at the same instant in 2023: a 0 s point, too old for Cortex.
    [point] = await running.dead_records()
    assert (point["kind"], point["entity"], point["key"], point["value"]) == (
        "metric", "my-pipeline", "ci-pipeline-duration", 0.0)
    assert await running.bridge.queue.get_states("cdevents:") == {}


async def test_pipelinerun_finished_without_start_has_no_duration(start_bridge: StartBridge) -> None:
    running = await start_bridge(CLOUDEVENTS)
    status, answer = await structured(running, "cdevents/pipelinerun_finished.json")
    assert status == 202 and answer["accepted"] == 1


async def test_incident_detected_is_an_event(start_bridge: StartBridge) -> None:
    running = await start_bridge(CLOUDEVENTS)
    assert (await structured(running, "cdevents/incident_detected.json"))[0] == 202
    assert without_bridge_id(only((await running.settled())["events"], "my-app")) == {
        "title": "Incident incident-123 on myApp",
        "type": "INCIDENT_DETECTED",
        "timestamp": "2022-11-11T13:52:20.079Z",
        "description": "Response time above threshold of 100ms",
        "customData": {
            "environment": "prod1",
            "artifactId": "pkg:oci/myapp@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427",
            "cdeventSource": "/monitoring/prod1", "cdeventId": "F4BD2B55-B6F6-4F44-AF72-BD2D0E7A8708",
            "customData": {"metric": "responseTime", "threshold": "100ms", "value": "200ms"},
        },
    }


# artifact.published is lineage (tests/sources/webhooks/test_lineage.py).
@pytest.mark.parametrize("fixture", ["taskrun_finished.json", "pipelinerun_queued.json"])
async def test_other_cdevents_are_ignored(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(CLOUDEVENTS)
    ce_type = fixture_json(f"cdevents/{fixture}")["context"]["type"]
    assert await bare(running, f"cdevents/{fixture}") == (202, {"ignored": f"type-not-mapped: {ce_type}"})


@pytest.mark.parametrize("fixture", [
    "spec.json-format.json-object-data.json",
    "spec.json-format.json-number-data.json",
    "spec.json-format.json-string-data.json",
    "spec.json-format.xml-string-data.json",
    "spec.json-format.binary-data_base64.json",
    "spec.json-format.data_base64-no-contenttype.json",
])
async def test_structured_spec_samples_are_ignored(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(CLOUDEVENTS)
    answer = await running.post("cdevents", fixture_bytes(f"cloudevents/{fixture}"), AUTH,
                                "application/cloudevents+json; charset=UTF-8")
    assert answer == (202, {"ignored": "type-not-mapped: com.example.someevent"})


async def test_batch_spec_sample_is_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge(CLOUDEVENTS)
    answer = await running.post("cdevents", fixture_bytes("cloudevents/spec.json-batch.two-events.json"), AUTH,
                                "application/cloudevents-batch+json")
    assert answer == (202, {"ignored": "type-not-mapped: com.example.someevent; "
                                       "type-not-mapped: com.example.someotherevent"})


async def test_binary_mode_spec_sample_is_read_from_headers(start_bridge: StartBridge) -> None:
    text = fixture_bytes("cloudevents/spec.http-binary-mode.json-object-data.http.txt").decode()
    head, _, body = text.partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines())
    running = await start_bridge(CLOUDEVENTS)
    answer = await running.post("cdevents", body.encode(), {**headers, **AUTH}, content_type=None)
    assert answer == (202, {"ignored": "type-not-mapped: com.example.someevent"})


async def test_batch_of_cdevents_maps_each(start_bridge: StartBridge) -> None:
    events = []
    for fixture in ("service_deployed.json", "incident_detected.json"):
        document = fixture_json(f"cdevents/{fixture}")
        context = document["context"]
        events.append({"specversion": "1.0", "id": context["id"], "source": context["source"],
                       "type": context["type"], "data": document})
    running = await start_bridge(CLOUDEVENTS)
    status, answer = await running.post("cdevents", json.dumps(events).encode(), AUTH,
                                        "application/cloudevents-batch+json")
    assert status == 202 and answer["accepted"] == 2
    state = await running.settled()
    assert (state["counts"]["deploys"], state["counts"]["events"]) == (1, 1)


@pytest.mark.parametrize(("change", "error"), [
    (lambda e: e.pop("id"), "event 0: required attribute 'id' is missing or empty"),
    (lambda e: e.update(specversion="0.3"), "event 0: specversion must be 1.x, got '0.3'"),
])
async def test_event_without_required_attributes_is_rejected(start_bridge: StartBridge, change: Any,
                                                             error: str) -> None:
    event = fixture_json("cloudevents/spec.json-format.json-object-data.json")
    change(event)
    running = await start_bridge(CLOUDEVENTS)
    answer = await running.post("cdevents", json.dumps(event).encode(), AUTH, "application/cloudevents+json")
    assert answer == (400, {"error": error})
    assert await running.queued_ids() == set()
