"""Formats, settings and poison entries of the Kafka source, without a broker."""

from __future__ import annotations

import json
import ssl
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.queue.poison import RAW_INPUT_KIND, RawInput
from bridge.records import DependencyRecord, DeployRecord, EventRecord
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.kafka.formats import (
    Decoded,
    PoisonMessage,
    build_decoder,
    http_headers,
    native_batch_decoder,
)
from bridge.sources.kafka.settings import KafkaSourceSettings
from bridge.sources.kafka.source import create
from tests.support.queue_file import stored_rows

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Msg:
    """A consumed message as decoders see it."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes | None = None
    topic: str = "deploys"
    partition: int = 3
    offset: int = 42
    timestamp: int = 1_767_000_000_000


def base(**extra: Any) -> dict[str, Any]:
    return {"name": "events", "type": "kafka", "bootstrap_servers": "a:9092, b:9092", "topics": ["deploys"],
            **extra}


# -- native ------------------------------------------------------------------------------------


async def test_native_message_becomes_records_with_the_message_as_delivery(ctx: SourceContext) -> None:
    decode = build_decoder("native", source="events", options={}, ctx=ctx)
    body = {"records": [{"kind": "deploy", "entity": "checkout-service", "title": "v1", "timestamp": 1_760_000_000},
                        {"kind": "event", "entity": "inventory", "type": "X", "title": "y",
                         "timestamp": "2026-01-01T00:00:00Z"}]}
    decoded = await decode(Msg(json.dumps(body).encode()), NOW)
    deploy, event = decoded.records
    assert isinstance(deploy, DeployRecord) and isinstance(event, EventRecord)
    assert deploy.provenance.delivery_id == "deploys/3/42" and deploy.provenance.received_at == NOW
    again = await decode(Msg(json.dumps(body).encode(), offset=99), NOW)
    assert [r.id for r in again.records] == [deploy.id, event.id], "ids come from content, not offsets"


@pytest.mark.parametrize(("value", "reason"), [
    (b"{nope", "invalid_json"),
    (None, "empty_value"),
    (b'{"kind": "deploy", "entity": "x"}', "invalid_records"),
    (b"[]", "invalid_records"),
])
async def test_native_poison_verdicts(ctx: SourceContext, value: bytes | None, reason: str) -> None:
    decode = build_decoder("native", source="events", options={}, ctx=ctx)
    with pytest.raises(PoisonMessage) as caught:
        await decode(Msg(value), NOW)
    assert caught.value.reason == reason and caught.value.detail


# -- formats mapped by webhook pipelines ---------------------------------------------------------


def test_kafka_binding_headers_become_http_binding_headers() -> None:
    headers = http_headers(Msg(b"{}", [("ce_specversion", b"1.0"), ("ce_type", b"t"), ("content-type", b"text/x"),
                                       ("traceparent", b"00-1")]))
    assert dict(headers) == {"ce-specversion": "1.0", "ce-type": "t", "content-type": "text/x",
                             "traceparent": "00-1"}
    assert http_headers(Msg(b"{}"))["Content-Type"] == "application/json"


async def test_mapping_format_applies_declarative_rules_to_value_and_headers(ctx: SourceContext) -> None:
    options = {
        "subject": {"keys": ["body.pipeline"]},
        "entity": {"static": {"checkout": "checkout-service"}, "lookup": False},
        "rules": [{"name": "build", "when": "body.state == 'passed'", "kind": "event", "id": ["body.build_id"],
                   "fields": {"title": "body.pipeline", "timestamp": "body.finished_at",
                              "description": "headers.\"x-origin\""},
                   "constants": {"type": "BUILD_PASSED"}}],
    }
    decode = build_decoder("mapping", source="events", options=options, ctx=ctx)
    value = {"pipeline": "checkout", "state": "passed", "build_id": 7, "finished_at": "2026-01-01T10:00:00Z"}
    decoded = await decode(Msg(json.dumps(value).encode(), [("x-origin", b"ci")]), NOW)
    [record] = decoded.records
    assert isinstance(record, EventRecord)
    assert (record.entity, record.type, record.title, record.description) == \
        ("checkout-service", "BUILD_PASSED", "checkout", "ci")
    ignored = await decode(Msg(json.dumps({**value, "state": "failed"}).encode()), NOW)
    assert ignored.records == [] and ignored.dead == []


async def test_a_service_graph_topic_becomes_dependency_records(ctx: SourceContext) -> None:
    # A tracing pipeline's service-graph topic: Jaeger dependency links (parent, child, callCount).
    options = {
        "subject": {"keys": ["body.parent"]},
        "entity": {"static": {"frontend": "checkout-service"}, "lookup": False},
        "rules": [{"name": "edge", "when": "body.callCount > `0`", "kind": "dependency",
                   "id": ["body.parent", "body.child"],
                   "fields": {"callee": "body.child", "metadata": "{calls: body.callCount, via: body.source}"},
                   "constants": {"description": "seen in traces"}}],
    }
    decode = build_decoder("mapping", source="graph", options=options, ctx=ctx)
    link = {"parent": "frontend", "child": "payments-api", "callCount": 42, "source": "jaeger"}
    [record] = (await decode(Msg(json.dumps(link).encode(), topic="service-graph"), NOW)).records
    assert isinstance(record, DependencyRecord)
    assert (record.entity, record.callee, record.method, record.path) == ("checkout-service", "payments-api", None, None)
    assert record.metadata == {"calls": 42, "via": "jaeger"} and record.description == "seen in traces"
    # a link naming no callee maps to nothing (the rule is skipped with its reason): no record
    nothing = await decode(Msg(json.dumps({**link, "child": None}).encode(), topic="service-graph"), NOW)
    assert nothing.records == [] and nothing.dead == []


async def test_invalid_format_options_fail_at_startup(ctx: SourceContext) -> None:
    config = base(topics=[{"name": "ce", "format": "cloudevents", "options": {"entity": {"bogus": 1}}}])
    with pytest.raises(SourceConfigError, match=r"'events', topic 'ce'.*entity"):
        create(config, ctx)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "problem"), [
    ({"topics": []}, "exactly one of `topics` and `topic_pattern`"),
    ({"topic_pattern": "^x"}, "exactly one of `topics` and `topic_pattern`"),
    ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
    ({"ssl_cert_file": "/c.pem"}, "ssl_cert_file and ssl_key_file go together"),
    ({"heartbeat_interval_ms": 3000, "session_timeout_ms": 2000}, "heartbeat_interval_ms must be below"),
    ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"start_from": "middle"}, "start_from"),
    ({"topics": [{"name": "t", "format": "avro"}]}, "format"),
])
async def test_invalid_settings_name_the_source_and_the_problem(
    ctx: SourceContext, extra: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SourceConfigError) as caught:
        create(base(**extra), ctx)
    assert "'events'" in str(caught.value) and problem in str(caught.value)


def test_topics_formats_and_consumer_settings() -> None:
    settings = KafkaSourceSettings.model_validate(base(
        topics=["plain", {"name": "ce", "format": "cloudevents", "options": {"pipeline_duration_metric": "d"}}],
        session_timeout_ms=2000, heartbeat_interval_ms=300, start_from="latest",
    ))
    assert settings.bootstrap_servers == ["a:9092", "b:9092"]
    assert settings.format_of("plain") == ("native", {})
    assert settings.format_of("ce") == ("cloudevents", {"pipeline_duration_metric": "d"})
    kwargs = settings.consumer_kwargs()
    assert kwargs["enable_auto_commit"] is False and kwargs["auto_offset_reset"] == "none"
    earliest = KafkaSourceSettings.model_validate(base()).consumer_kwargs()
    assert earliest["auto_offset_reset"] == "earliest"
    assert (kwargs["session_timeout_ms"], kwargs["heartbeat_interval_ms"]) == (2000, 300)
    assert kwargs["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in kwargs
    assert kwargs["isolation_level"] == "read_committed"


def test_sasl_scram_over_tls_with_password_file_and_ca(tmp_path: Path) -> None:
    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                    "-keyout", str(ca_key), "-out", str(ca_cert)], check=True, capture_output=True)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    settings = KafkaSourceSettings.model_validate(base(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="bridge",
        sasl_password="inline-loses", sasl_password_file=str(password), ssl_ca_file=str(ca_cert),
    ))
    kwargs = settings.consumer_kwargs()
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "bridge", "s3cret")
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert "s3cret" not in repr(settings) and "inline-loses" not in repr(settings)


# -- poison entries ------------------------------------------------------------------------------


async def test_poison_entries_are_idempotent_and_keep_binary_payloads(ctx: SourceContext) -> None:
    item = RawInput("events", "deploys/3/42", "invalid_json", "bad", b"\xff\x00binary",
                    {"topic": "deploys", "partition": 3, "offset": 42, "key": None})
    ids = await ctx.queue.dead_letter_raw([item])
    assert ids == [item.id]
    assert await ctx.queue.dead_letter_raw([item]) == ids  # redelivered: the same entry
    rows = stored_rows(ctx.queue, "SELECT id, kind, lane, reason, detail, body FROM dead")
    assert len(rows) == 1
    rid, kind, lane, reason, detail, body = rows[0]
    assert (rid, kind, lane, reason, detail) == (item.id, RAW_INPUT_KIND, "poison", "invalid_json", "bad")
    doc = json.loads(body)
    assert doc["payload_base64"] == "/wBiaW5hcnk=" and "payload" not in doc
    assert (doc["input"], doc["offset"]) == ("deploys/3/42", 42)
    other = RawInput("events", "deploys/3/42", "invalid_json", "bad", b"different payload")
    assert other.id != item.id, "a re-created topic reusing the offset is a different input"
    assert ctx.queue.depth == 0, "a poison entry is not a queued record"


_NATIVE_VALUES = st.one_of(
    st.just(None),  # a tombstone
    st.binary(max_size=20),  # rarely JSON
    st.builds(lambda n, kind: json.dumps({"kind": kind, "entity": f"svc-{n % 3}", "title": f"t{n}", "type": "X",
                                          "timestamp": 1_760_000_000 + n}).encode(),
              st.integers(0, 50), st.sampled_from(["deploy", "event", "bogus"])),
    st.builds(lambda n: json.dumps({"records": [{"kind": "metric", "entity": "svc", "key": "lead-time",
                                                 "value": n, "timestamp": 1_760_000_000}, 7]}).encode(),
              st.integers(0, 5)),
    st.just(b'{"records": []}'),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_NATIVE_VALUES, min_size=1, max_size=12))
def test_a_native_batch_decodes_each_message_as_it_would_alone(values: list[bytes | None]) -> None:
    # One validation call for the batch, yet every message keeps its own records or poison verdict.
    messages = [Msg(value, offset=n) for n, value in enumerate(values)]
    together = native_batch_decoder("events")(messages, NOW)
    for message, outcome in zip(messages, together, strict=True):
        (alone,) = native_batch_decoder("events")([message], NOW)
        if isinstance(alone, PoisonMessage):
            assert isinstance(outcome, PoisonMessage) and (outcome.reason, outcome.detail) == (alone.reason, alone.detail)
        else:
            assert isinstance(outcome, Decoded) and outcome.records == alone.records
            assert all(r.provenance.delivery_id == f"deploys/3/{message.offset}" for r in outcome.records)
