"""The input pipeline on its own, and the two transports that run it: HTTP and Kafka formats."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.queue import QueueUnavailable
from bridge.records import record_to_json
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.entity import EntityResolver, EntitySettings, Subject
from bridge.sources.kafka.formats import PoisonMessage, build_decoder
from bridge.sources.payload import Headers
from bridge.sources.pipeline import (
    Delivery,
    Draft,
    Ignored,
    InputPipeline,
    Mapped,
    MapsToNothing,
    RefusalKind,
    Refused,
    UnusablePayload,
)
from bridge.sources.signatures import AuthScheme
from bridge.sources.webhooks import cloudevents, mapping
from bridge.sources.webhooks.adapter import WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import HTTP_STATUS, WebhookSource, describe, header_map
from tests.support.paths import FIXTURES

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CDEVENT = (FIXTURES / "webhooks" / "cdevents" / "service_deployed.json").read_bytes()


@dataclass
class Msg:
    """A consumed Kafka message as decoders see it."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes | None = None
    topic: str = "events"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1_767_000_000_000


def _records(outcome: Any) -> list[str]:
    return [record_to_json(r) for r in outcome.records]


# -- HTTP and Kafka map alike ------------------------------------------------------------------


@pytest.mark.parametrize("static", [{"myapp": "checkout-service"}, {"someone-else": "inventory"}])
async def test_kafka_format_and_webhook_give_the_same_records_and_dead_letters(
    ctx: SourceContext, static: dict[str, str]
) -> None:
    options = {"entity": {"static": static, "lookup": False}}
    webhook = cloudevents.create({"name": "ce", "type": "cloudevents", "allow_unauthenticated": True, **options},
                                 ctx)
    http = await webhook.evaluate(header_map([("Content-Type", "application/json")]), CDEVENT, received_at=NOW)
    assert isinstance(http, Mapped)
    decode = build_decoder("cloudevents", source="ce", options=options, ctx=ctx)
    kafka = await decode(Msg(CDEVENT, [("content-type", b"application/json")]), NOW)
    assert _records(kafka) == _records(http)
    assert [(d.reason, d.detail, [record_to_json(r) for r in d.records]) for d in kafka.dead] == \
        [(d.reason, d.detail, [record_to_json(r) for r in d.records]) for d in http.dead]
    assert len(http.records) + sum(len(d.records) for d in http.dead) == 1


async def test_kafka_formats_need_no_credentials_where_a_webhook_does(ctx: SourceContext) -> None:
    options = {"rules": [{"name": "r", "when": "body.ok", "kind": "event", "id": ["body.id"],
                          "constants": {"type": "X", "title": "t"}}],
               "entity": {"static": {"svc": "checkout-service"}, "lookup": False}, "subject": {"keys": ["body.svc"]}}
    with pytest.raises(SourceConfigError, match="auth: set `auth.hmac` or `auth.token`"):
        mapping.create({"name": "m", "type": "mapping", **options, "secrets": ["s"]}, ctx)
    built = mapping.adapter({"name": "m", "type": "mapping", **options}, ctx)
    assert built.settings.allow_unauthenticated is False, "Kafka does not opt out of credentials"
    decoded = await build_decoder("mapping", source="m", options=options, ctx=ctx)(
        Msg(json.dumps({"ok": True, "id": 1, "svc": "svc"}).encode()), NOW)
    assert [r.entity for r in decoded.records] == ["checkout-service"]


async def test_a_refused_message_is_poison_named_without_http(ctx: SourceContext) -> None:
    decode = build_decoder("cloudevents", source="ce", options={}, ctx=ctx)
    with pytest.raises(PoisonMessage) as caught:
        await decode(Msg(b'{"context": ', [("content-type", b"application/json")]), NOW)
    assert caught.value.reason == "unmappable"
    assert caught.value.detail.startswith("malformed: body is not valid JSON")
    assert "HTTP" not in caught.value.detail and "400" not in caught.value.detail


# -- the pipeline's steps ------------------------------------------------------------------------


class _Settings(WebhookSettings):
    type: Literal["probe"] = "probe"


class ProbeAdapter(WebhookAdapter[_Settings]):
    """Maps ``{"tag": ..., "id": ...}`` to one event; ``{"raise": ...}`` raises what it names."""

    def scheme(self) -> AuthScheme | None:
        return None

    def decode(self, headers: Headers, body: bytes) -> Any:
        payload = json.loads(body)
        if isinstance(payload, dict) and payload.get("refuse"):
            raise UnusablePayload("refused on purpose", RefusalKind(payload["refuse"]))
        return payload

    async def map(self, delivery: Delivery) -> list[Draft]:
        payload = delivery.payload
        raised = payload.get("raise")
        if raised == "nothing":
            raise MapsToNothing("probe-ignored: on purpose")
        if raised == "queue":
            raise QueueUnavailable("disk gone")
        if raised == "bug":
            raise KeyError("surprise")
        if payload.get("empty"):
            return []
        fields = {"type": "PROBE", "title": payload.get("title", "probe"), "timestamp": NOW}
        return [Draft("event", f"probe-{payload['id']}", fields,
                      Subject(keys=(payload["tag"],), repository=payload.get("repository")))]


def _pipeline(max_bytes: int = 1000) -> InputPipeline:
    adapter = ProbeAdapter(_Settings(name="probe", allow_unauthenticated=True))
    resolver = EntityResolver(EntitySettings(static={"svc": "checkout-service"}, lookup=False), None)
    return InputPipeline(adapter, source="probe", resolver=resolver, max_bytes=max_bytes)


JSON = header_map([("Content-Type", "application/json")])


@pytest.mark.parametrize(("headers", "body", "outcome"), [
    (JSON, b'{"id": 1, "tag": "svc", "pad": "' + b"x" * 100 + b'"}',
     Refused(RefusalKind.TOO_LARGE, "body larger than 50 bytes")),
    (header_map([("Content-Type", "text/plain")]), b"{}",
     Refused(RefusalKind.UNSUPPORTED_MEDIA_TYPE, "content type text/plain is not accepted (application/json)")),
    (JSON, b'{"refuse": "unauthenticated"}', Refused(RefusalKind.UNAUTHENTICATED, "refused on purpose")),
    (JSON, b'{"raise": "nothing"}', Ignored("probe-ignored: on purpose")),
    (JSON, b'{"empty": 1}', Ignored("no-records: the payload maps to nothing")),
    (JSON, b'{"raise": "queue"}',
     Refused(RefusalKind.UNAVAILABLE, "the bridge cannot store input right now; retry later")),
    (JSON, b'{"raise": "bug"}', Refused(RefusalKind.UNMAPPABLE, "payload could not be mapped: KeyError")),
])
async def test_refusals_and_nothing_to_map(headers: Headers, body: bytes, outcome: Any) -> None:
    assert await _pipeline(max_bytes=50).run(headers, body, received_at=NOW) == outcome


async def test_malformed_body_and_invalid_record_are_refused_by_kind() -> None:
    pipeline = _pipeline()
    malformed = await pipeline.run(JSON, b"{nope", received_at=NOW)
    assert isinstance(malformed, Refused) and malformed.kind is RefusalKind.MALFORMED
    assert malformed.reason.startswith("body is not valid JSON: ")
    invalid = await pipeline.run(JSON, b'{"id": 1, "tag": "svc", "title": ""}', received_at=NOW)
    assert isinstance(invalid, Refused) and invalid.kind is RefusalKind.UNMAPPABLE
    assert invalid.reason.startswith("payload maps to an invalid event record: event.title")


async def test_records_get_entity_provenance_and_dead_letters_a_distinct_id() -> None:
    pipeline = _pipeline()
    mapped = await pipeline.run(JSON, b'{"id": 1, "tag": "svc"}', received_at=NOW)
    assert isinstance(mapped, Mapped) and mapped.dead == []
    [record] = mapped.records
    assert (record.id, record.entity, record.provenance.source, record.provenance.received_at) == \
        ("probe-1", "checkout-service", "probe", NOW)
    unknown = await pipeline.run(JSON, b'{"id": 1, "tag": "nobody"}', received_at=NOW)
    assert isinstance(unknown, Mapped) and unknown.records == []
    [group] = unknown.dead
    assert group.reason == "entity-unresolved" and group.records[0].id != "probe-1"
    assert group.records[0].provenance.repository is None
    assert record.provenance.repository is None  # kept only where `dlq register-entities` needs it
    named = await pipeline.run(JSON, b'{"id": 2, "tag": "nobody", "repository": "acme/nobody"}', received_at=NOW)
    assert isinstance(named, Mapped)
    assert [r.provenance.repository for g in named.dead for r in g.records] == ["acme/nobody"]


# -- HTTP answers by refusal kind ----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status"), [
    (RefusalKind.UNAUTHENTICATED, 401),
    (RefusalKind.TOO_LARGE, 413),
    (RefusalKind.UNSUPPORTED_MEDIA_TYPE, 415),
    (RefusalKind.MALFORMED, 400),
    (RefusalKind.UNMAPPABLE, 400),
    (RefusalKind.UNAVAILABLE, 503),
])
async def test_each_refusal_kind_is_answered_with_its_status(ctx: SourceContext, kind: RefusalKind,
                                                             status: int) -> None:
    source = WebhookSource(ProbeAdapter(_Settings(name="probe", allow_unauthenticated=True)), ctx)
    app = web.Application()
    app.add_routes(source.routes())
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/webhooks/probe", json={"refuse": kind.value})
        assert response.status == status
        assert await response.json() == {"error": "refused on purpose"}
        retry_after = str(ctx.settings.queue.retry_after_seconds) if status == 503 else None
        assert response.headers.get("Retry-After") == retry_after
    assert describe(Refused(kind, "why")) == {"outcome": "rejected", "status": status, "reason": "why"}


def test_every_refusal_kind_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(RefusalKind)
