"""Payload formats of Kafka topics: one message in, records out (or a poison verdict).

Every format is a :data:`MessageDecoder`: it takes one message (value bytes, headers, key and its
topic/partition/offset) and returns a :class:`Decoded`. No records and no dead letters means
"understood, maps to nothing" (e.g. a CloudEvent type nobody maps): the offset is simply done. A
message that cannot be parsed or mapped raises :class:`PoisonMessage`; the source dead-letters it
and moves on.

* ``native``: the JSON of ``POST /v1/records`` (:func:`bridge.sources.native.parse_native`).
* ``cloudevents``: CloudEvents 1.0 in the Kafka protocol binding, structured mode (``content-type:
  application/cloudevents+json``) or binary mode (``ce_*`` headers, value = data), CDEvents
  included. The binding is translated to the HTTP binding (:func:`http_headers`) and the message
  runs through the input pipeline (:mod:`bridge.sources.pipeline`) with the adapter of the
  ``cloudevents`` webhook source type, so HTTP and Kafka map an event identically (same record
  ids, same entity resolution, same dead letters for unknown entities).
* ``mapping``: the value and headers run through the pipeline with the adapter of the
  ``mapping`` webhook source type (declarative rules).

A topic's ``options`` are that adapter's settings (``entity``, ``rules`` ...); ``name`` and
``type`` are filled in. Credentials are not among them: Kafka authenticated the producer. An input
the pipeline refuses is poison with the reason ``unmappable`` and the refusal's kind in the detail.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.records import Record
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.native import RecordErrors, parse_native_batch
from bridge.sources.payload import json_body
from bridge.sources.pipeline import DeadLetters, Ignored, InputPipeline, Refused

log = structlog.get_logger("bridge.kafka")

FormatName = Literal["native", "cloudevents", "mapping"]

#: format -> the factory of the adapter that maps it (``module:function``, imported when used)
ADAPTER_FORMATS: dict[str, str] = {
    "cloudevents": "bridge.sources.webhooks.cloudevents:adapter",
    "mapping": "bridge.sources.webhooks.mapping:adapter",
}


class KafkaMessage(Protocol):
    """What a decoder reads of a consumed message (``aiokafka.ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class PoisonMessage(Exception):
    """The message cannot become records; ``reason`` is a short label, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class FormatUnavailable(Exception):
    """A configured format's mapping is not part of this build, or its options are invalid."""


@dataclass(frozen=True)
class Decoded:
    """What one message maps to."""

    records: list[Record]
    dead: list[DeadLetters] = field(default_factory=list)


class MessageDecoder(Protocol):
    """A topic's format: one message (and when it was received) -> what it maps to."""

    async def __call__(self, message: KafkaMessage, received_at: datetime) -> Decoded:
        """What the message maps to; raises :class:`PoisonMessage`."""

    def ignores(self, message: KafkaMessage) -> bool:
        """True when the message certainly maps to nothing, decided without decoding it."""


def delivery_id(message: KafkaMessage) -> str:
    """Stable identity of a message: ``topic/partition/offset``."""
    return f"{message.topic}/{message.partition}/{message.offset}"


def text_headers(message: KafkaMessage) -> dict[str, str]:
    """Headers as text, lower-cased names (the last of repeated names wins)."""
    out: dict[str, str] = {}
    for name, raw in message.headers or ():
        out[name.lower()] = raw.decode("utf-8", errors="replace") if raw is not None else ""
    return out


def _json_value(message: KafkaMessage) -> Any:
    if message.value is None:
        raise PoisonMessage("empty_value", "message has no value (tombstone)")
    try:
        return json_body(message.value)
    except (ValueError, RecursionError) as exc:
        raise PoisonMessage("invalid_json", f"value is not valid JSON: {exc}") from None


class NativeDecoder:
    """The ``native`` format: the value is a native record body."""

    def __init__(self, source: str) -> None:
        self._decode_batch = native_batch_decoder(source)

    async def __call__(self, message: KafkaMessage, received_at: datetime) -> Decoded:
        outcome = self._decode_batch([message], received_at)[0]
        if isinstance(outcome, PoisonMessage):
            raise outcome
        return outcome

    def ignores(self, message: KafkaMessage) -> bool:
        return False  # every native body is records or poison


#: Messages of one fetched batch (and when they were received) -> each one's outcome, in order:
#: what it maps to, or the :class:`PoisonMessage` it is.
BatchDecoder = Callable[[Sequence[KafkaMessage], datetime], list["Decoded | PoisonMessage"]]


def native_batch_decoder(source: str) -> BatchDecoder:
    """The ``native`` format for a whole fetched batch: one validation call for all its records
    (:func:`bridge.sources.native.parse_native_batch`), the same outcome per message."""

    def decode_batch(messages: Sequence[KafkaMessage], received_at: datetime) -> list[Decoded | PoisonMessage]:
        outcomes: list[Decoded | PoisonMessage | None] = []
        bodies: list[tuple[Any, str | None]] = []
        for message in messages:
            try:
                bodies.append((_json_value(message), delivery_id(message)))
                outcomes.append(None)
            except PoisonMessage as exc:
                outcomes.append(exc)
        parsed = iter(parse_native_batch(bodies, source=source, received_at=received_at))
        return [outcome if outcome is not None else _native_outcome(next(parsed)) for outcome in outcomes]

    return decode_batch


def _native_outcome(parsed: list[Record] | RecordErrors) -> Decoded | PoisonMessage:
    if isinstance(parsed, RecordErrors):
        return PoisonMessage("invalid_records", json.dumps(parsed.errors, default=str))
    return Decoded(parsed)


# -- formats mapped by an adapter in the input pipeline ------------------------------------------


#: What a message without headers reads as (immutable, so one serves all of them).
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def http_headers(message: KafkaMessage) -> CIMultiDictProxy[str]:
    """The message headers as the HTTP request headers the adapters read.

    The CloudEvents Kafka binding names attributes ``ce_<name>`` where the HTTP binding says
    ``ce-<name>``; both put the data's media type in ``content-type``. Without one, the value is
    taken as JSON (CloudEvents' default, and what producers that omit the header send).
    """
    if not message.headers:
        return _NO_HEADERS
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in text_headers(message).items():
        headers.add(f"ce-{name[3:]}" if name.startswith("ce_") else name, value)
    headers.setdefault("Content-Type", "application/json")
    return CIMultiDictProxy(headers)


def adapter_pipeline(fmt: str, *, source: str, options: Mapping[str, Any], ctx: SourceContext) -> InputPipeline:
    """The input pipeline of ``fmt``'s adapter, configured from a topic's ``options``."""
    module_name, _, factory_name = ADAPTER_FORMATS[fmt].partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except ImportError as exc:
        raise FormatUnavailable(f"format {fmt!r} needs {module_name}, which this build lacks ({exc})") from None
    try:
        adapter = factory({**options, "name": source, "type": fmt}, ctx)
    except SourceConfigError as exc:
        raise FormatUnavailable(f"format {fmt!r}: invalid options: {exc}") from None
    pipeline: InputPipeline = adapter.pipeline(ctx)
    return pipeline


class PipelineDecoder:
    """A format mapped in the input pipeline: the value is the body, the headers the headers.

    ``cloudevents``: structured mode (``content-type: application/cloudevents+json``), batches,
    binary mode (``ce_*`` headers, translated by :func:`http_headers`) and bare CDEvents
    documents all read as they do over HTTP. ``mapping``: the rules see the JSON value and headers.
    """

    def __init__(self, pipeline: InputPipeline) -> None:
        self.pipeline = pipeline
        #: the screening of messages without headers (nearly all, on most topics): decided once
        self._headerless: Callable[[bytes], bool] | None | Literal[False] = False

    async def __call__(self, message: KafkaMessage, received_at: datetime) -> Decoded:
        if message.value is None:
            raise PoisonMessage("empty_value", "message has no value (tombstone)")
        outcome = await self.pipeline.run(http_headers(message), message.value, received_at=received_at)
        if isinstance(outcome, Ignored):
            return Decoded([])
        if isinstance(outcome, Refused):
            raise PoisonMessage("unmappable", f"{outcome.kind}: {outcome.reason}")
        return Decoded(list(outcome.records), list(outcome.dead))

    def ignores(self, message: KafkaMessage) -> bool:
        value = message.value
        if value is None:
            return False
        try:
            if message.headers:
                ignoring = self.pipeline.ignoring(http_headers(message))
            else:
                if self._headerless is False:
                    self._headerless = self.pipeline.ignoring(_NO_HEADERS)
                ignoring = self._headerless
            return ignoring is not None and ignoring(value)
        except Exception:  # a screening bug must cost speed, never a message: decode it in full
            log.exception("kafka_screen_error", source=self.pipeline.source, message=delivery_id(message))
            return False


def build_batch_decoder(fmt: FormatName, *, source: str) -> BatchDecoder | None:
    """The batch decoder of a topic's format, where it has one (``native``); others decode each
    message on its own (:func:`build_decoder`)."""
    return native_batch_decoder(source) if fmt == "native" else None


def build_decoder(fmt: FormatName, *, source: str, options: Mapping[str, Any], ctx: SourceContext) -> MessageDecoder:
    """The decoder of a topic's configured format; raises :class:`FormatUnavailable`."""
    if fmt == "native":
        return NativeDecoder(source)
    return PipelineDecoder(adapter_pipeline(fmt, source=source, options=options, ctx=ctx))
