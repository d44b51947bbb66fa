"""CloudEvents 1.0 over HTTP (``type: cloudevents``), carrying CDEvents.

All three HTTP modes are read:

* structured: ``Content-Type: application/cloudevents+json``, one event object;
* batch: ``Content-Type: application/cloudevents-batch+json``, a JSON array of events;
* binary: attributes in ``ce-*`` headers, the event data is the body (any content type).

A plain ``application/json`` body holding a structured event or a bare CDEvents document
(``context`` + ``subject``, as the CDEvents spec serializes them) is read as well.

Events must carry ``specversion`` 1.x, ``id``, ``source`` and ``type`` (else 400). The delivery id
is ``type``, ``source`` and ``id``: CloudEvents makes ``source`` + ``id`` unique, and the type is
added because real producers (the CDEvents conformance samples among them) reuse ids across types.
CDEvents types map as described in :mod:`bridge.sources.webhooks.cdevents`; other types are ignored.
Authentication is a shared token (``Authorization: Bearer``/Basic, or ``token_header``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import Field

from bridge.queue import QueueBackend
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.payload import Headers, json_body, media_type, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, RefusalKind, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import MetricKey, WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.cdevents import CDEventsMapper
from bridge.sources.webhooks.source import WebhookSource

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_REQUIRED = ("id", "source", "type")


class CloudEventsSettings(WebhookSettings):
    """``type: cloudevents``."""

    type: Literal["cloudevents"]
    token_header: str = Field("Authorization", description="Header with the token (Bearer/Basic or raw).")
    pipeline_duration_metric: MetricKey | None = Field(
        None, description="Metric key for pipelinerun durations (started -> finished)."
    )
    max_batch: int = Field(1000, ge=1, description="Most events accepted in one batch.")


class CloudEventsAdapter(WebhookAdapter[CloudEventsSettings]):
    """Reads the CloudEvents envelope; CDEvents payloads are mapped by :class:`CDEventsMapper`."""

    content_types = frozenset({"application/json", STRUCTURED, BATCH})

    def __init__(self, settings: CloudEventsSettings, queue: QueueBackend) -> None:
        super().__init__(settings)
        self.mapper = CDEventsMapper(queue, settings.name, settings.pipeline_duration_metric)

    def scheme(self) -> AuthScheme:
        return TokenScheme(header=self.settings.token_header)

    def accepts(self, headers: Headers) -> str | None:
        # Binary mode: the content type is the data's, whatever it is.
        return None if headers.get("ce-specversion") else super().accepts(headers)

    def decode(self, headers: Headers, body: bytes) -> list[dict[str, Any]]:
        if headers.get("ce-specversion"):
            return [_binary_event(headers, body)]
        document = json_body(body)
        if media_type(headers) == BATCH or isinstance(document, list):
            if not isinstance(document, list):
                raise UnusablePayload("a batch must be a JSON array of events")
            if len(document) > self.settings.max_batch:
                raise UnusablePayload(f"a batch may hold at most {self.settings.max_batch} events",
                                      RefusalKind.TOO_LARGE)
            events = document
        elif isinstance(document, dict) and "specversion" not in document and _is_cdevent(document):
            events = [_wrap_cdevent(document)]
        else:
            events = [document]
        for index, event in enumerate(events):
            _validate(event, index)
        return events

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        if isinstance(payload, list) and len(payload) == 1:
            event = payload[0]
            return f"{event['type']} {event['source']} {event['id']}"
        return None

    async def map(self, delivery: Delivery) -> list[Draft]:
        drafts: list[Draft] = []
        reasons: list[str] = []
        for event in delivery.payload:
            try:
                drafts.extend(await self.mapper.map(event, _data(event), delivery.facts))
            except MapsToNothing as exc:
                reasons.append(str(exc))
        if not drafts:
            raise MapsToNothing("; ".join(dict.fromkeys(reasons)) or "no-records: empty batch")
        return drafts


def _binary_event(headers: Headers, body: bytes) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for name, value in headers.items():
        if name.lower().startswith("ce-"):
            event[name[3:].lower()] = value
    ctype = headers.get("Content-Type")
    if ctype:
        event["datacontenttype"] = ctype
    mtype = media_type(headers)
    # Only JSON data can hold a CDEvent; other data is not needed to map (or ignore) the event.
    if body and (mtype == "application/json" or mtype.endswith("+json")):
        event["data"] = json_body(body)
    _validate(event, 0)
    return event


def _validate(event: Any, index: int) -> None:
    if not isinstance(event, dict):
        raise UnusablePayload(f"event {index}: must be a JSON object")
    version = text(event.get("specversion"))
    if version is None or not version.startswith("1."):
        raise UnusablePayload(f"event {index}: specversion must be 1.x, got {event.get('specversion')!r}")
    for name in _REQUIRED:
        if not isinstance(event.get(name), str) or not event[name]:
            raise UnusablePayload(f"event {index}: required attribute {name!r} is missing or empty")


def _is_cdevent(document: dict[str, Any]) -> bool:
    return isinstance(document.get("context"), dict) and isinstance(document.get("subject"), dict)


def _wrap_cdevent(document: dict[str, Any]) -> dict[str, Any]:
    # The CDEvents CloudEvents binding: id, source, type and time are the context's.
    context = document["context"]
    return {"specversion": "1.0", "id": context.get("id"), "source": context.get("source"),
            "type": context.get("type"), "time": context.get("timestamp"),
            "datacontenttype": "application/json", "data": document}


def _data(event: dict[str, Any]) -> Any:
    if "data" in event:
        return event["data"]
    encoded = event.get("data_base64")
    if not isinstance(encoded, str):
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


def adapter(config: dict[str, Any], ctx: SourceContext) -> CloudEventsAdapter:
    """The adapter of ``config``; also what Kafka's ``cloudevents`` format runs."""
    return CloudEventsAdapter(parse_settings(CloudEventsSettings, config), ctx.queue)


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``cloudevents``."""
    return WebhookSource(adapter(config, ctx), ctx)
