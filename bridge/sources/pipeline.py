"""The input pipeline, the same for every transport: one payload in, records or a refusal out.

size -> content type -> (screen) -> decode -> map to drafts (or nothing) -> resolve entities -> records, plus
dead letters for records whose entity is unknown. An adapter supplies what is specific to its
system (:class:`PayloadMapper`: which content types it reads, how it decodes and maps payloads,
which delivery id a payload has); the order of the steps and the outcomes live here once.

Two transports run it: the webhook source (:mod:`bridge.sources.webhooks.source`), which
authenticates the request first and answers over HTTP, and the Kafka formats ``cloudevents`` and
``mapping`` (:mod:`bridge.sources.kafka.formats`), which turn a message into records or a poison
verdict. So an event maps identically whichever way it came (same record ids, same entity
resolution, same dead letters).

Adapters say why a payload gives nothing by raising :class:`MapsToNothing` (understood, nothing to
record) or :class:`UnusablePayload` (cannot be used); the pipeline turns those into the outcomes
:class:`Ignored` and :class:`Refused`. A refusal carries a :class:`RefusalKind`, never a status
code: what the kind means on the wire is each transport's business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from bridge.queue import QueueError
from bridge.records import RECORD_ADAPTER, Record, RecordKind, record_id, utc_now
from bridge.sources.entity import EntityResolver, Resolution, Subject
from bridge.sources.lineage import Fact, Lineage
from bridge.sources.payload import Headers
from bridge.sources.screening import Screener

log = structlog.get_logger("bridge.pipeline")


@dataclass(frozen=True)
class Delivery:
    """One received input, as adapters see it after decoding."""

    source: str
    headers: Headers
    body: bytes
    payload: Any
    received_at: datetime
    #: what the payload says about images and commits, added by the adapter while mapping
    #: (:mod:`bridge.sources.lineage`); learned even when the payload maps to nothing
    facts: list[Fact] = field(default_factory=list)


@dataclass(frozen=True)
class Draft:
    """A record without its entity: what an adapter maps a payload to."""

    kind: RecordKind
    id: str
    fields: dict[str, Any]
    subject: Subject


class RefusalKind(enum.StrEnum):
    """Why an input was refused, independent of the transport that answers it."""

    #: the sender's credentials are missing or wrong
    UNAUTHENTICATED = "unauthenticated"
    #: the body (or a batch in it) is larger than allowed
    TOO_LARGE = "too_large"
    #: the content type is not one the adapter reads
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    #: the body does not parse, or lacks what the adapter needs to read it
    MALFORMED = "malformed"
    #: the payload parses but cannot become valid records
    UNMAPPABLE = "unmappable"
    #: the bridge cannot take input right now (secret or queue unreadable); retrying may work
    UNAVAILABLE = "unavailable"


class MapsToNothing(Exception):
    """Raised by an adapter: the payload is understood and maps to nothing.

    ``reason`` is ``category: detail`` (the category labels a metric).
    """


class UnusablePayload(Exception):
    """Raised by an adapter: the payload cannot be used (refused as ``kind``)."""

    def __init__(self, reason: str, kind: RefusalKind = RefusalKind.MALFORMED) -> None:
        super().__init__(reason)
        self.kind = kind


# -- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """The input is refused; nothing is stored."""

    kind: RefusalKind
    reason: str


@dataclass(frozen=True)
class Ignored:
    """The input maps to nothing; nothing is stored. ``reason`` is ``category: detail``."""

    reason: str


@dataclass(frozen=True)
class DeadLetters:
    """Records whose entity could not be resolved, kept for an operator."""

    records: list[Record]
    reason: str
    detail: str


@dataclass(frozen=True)
class Mapped:
    """Records to append (and dead letters to keep) for one input."""

    records: list[Record]
    delivery_id: str | None
    dead: list[DeadLetters] = field(default_factory=list)


Outcome = Refused | Ignored | Mapped


class PayloadMapper(Protocol):
    """What the pipeline needs of an adapter (:class:`bridge.sources.webhooks.adapter.WebhookAdapter`)."""

    def accepts(self, headers: Headers) -> str | None:
        """``None`` if the content type is one this adapter reads, else why not."""

    def screener(self, headers: Headers) -> Screener | None:
        """A test of bodies sent with ``headers``: why a body maps to nothing, when that is certain
        before decoding (see :mod:`bridge.sources.screening`), the reason :meth:`map` would give;
        else ``None``. ``None`` instead of a test when no body could be screened."""

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The payload of a body; raises ``ValueError`` or :class:`UnusablePayload` if malformed."""

    async def map(self, delivery: Delivery) -> list[Draft]:
        """Drafts for the payload; raises :class:`MapsToNothing` or :class:`UnusablePayload`."""

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        """The sender's id of this delivery (the same on a redelivery), if it has one."""


class InputPipeline:
    """One configured adapter's way from a payload to records."""

    def __init__(self, mapper: PayloadMapper, *, source: str, resolver: EntityResolver, max_bytes: int,
                 lineage: Lineage | None = None) -> None:
        self.mapper = mapper
        self.source = source
        self.resolver = resolver
        self.max_bytes = max_bytes
        self.lineage = lineage

    async def run(self, headers: Headers, body: bytes, *, received_at: datetime | None = None) -> Outcome:
        """Every step short of storing: what ``body`` (with ``headers``) maps to."""
        refused = self._refusal(headers, body)
        if refused is not None:
            return refused
        screened = self._screened(headers, body)
        if screened is not None:
            return screened
        try:
            payload = self.mapper.decode(headers, body)
        except UnusablePayload as exc:
            return Refused(exc.kind, str(exc))
        except (ValueError, RecursionError) as exc:
            return Refused(RefusalKind.MALFORMED, f"body is not valid JSON: {str(exc)[:200]}")
        delivery = Delivery(self.source, headers, body, payload, received_at or utc_now())
        try:
            try:
                drafts = await self.mapper.map(delivery)
                delivery_id = self.mapper.delivery_id(headers, payload)
            finally:
                # A registry_package or push maps to nothing and is all lineage; a deploy payload
                # may carry its own commit time. Facts are idempotent: stored ahead of the records.
                if self.lineage is not None and delivery.facts:
                    await self.lineage.learn(delivery.facts)
        except MapsToNothing as exc:
            return Ignored(str(exc))
        except UnusablePayload as exc:
            return Refused(exc.kind, str(exc))
        except QueueError as exc:
            # An adapter that keeps state (CDEvents pipeline starts) could not reach the queue.
            log.warning("input_state_unavailable", source=self.source, error=str(exc))
            return Refused(RefusalKind.UNAVAILABLE, "the bridge cannot store input right now; retry later")
        except Exception as exc:
            # A payload shape the adapter did not foresee must not become a 500 (senders retry
            # 5xx forever and disable the hook) or stall a partition; the traceback is logged for a fix.
            log.exception("input_mapping_failed", source=self.source, error=str(exc))
            return Refused(RefusalKind.UNMAPPABLE, f"payload could not be mapped: {type(exc).__name__}")
        if not drafts:
            return Ignored("no-records: the payload maps to nothing")
        return await self._resolve(drafts, delivery, delivery_id)

    def screen(self, headers: Headers, body: bytes) -> Ignored | None:
        """What :meth:`run` would answer when that is "ignored" and certain before decoding (a
        shared topic's irrelevant messages cost a substring test, not a decode and every rule)."""
        return None if self._refusal(headers, body) is not None else self._screened(headers, body)

    def _screened(self, headers: Headers, body: bytes) -> Ignored | None:
        """The adapter's screening of an input not refused (see :meth:`screen`)."""
        screens = self.mapper.screener(headers)
        reason = screens(body) if screens is not None else None
        return None if reason is None else Ignored(reason)

    def ignoring(self, headers: Headers) -> Callable[[bytes], bool] | None:
        """``screen(headers, body) is not None`` as a test of bodies, with what depends on the
        headers alone decided once (a Kafka topic's messages without headers all share them);
        ``None`` when no body sent with these headers can be screened."""
        if self.mapper.accepts(headers) is not None:
            return None  # refused, never ignored
        screens = self.mapper.screener(headers)
        if screens is None:
            return None
        max_bytes = self.max_bytes
        return lambda body: len(body) <= max_bytes and screens(body) is not None

    def _refusal(self, headers: Headers, body: bytes) -> Refused | None:
        """The refusal of an input too large or of a content type the adapter does not read."""
        if len(body) > self.max_bytes:
            return Refused(RefusalKind.TOO_LARGE, f"body larger than {self.max_bytes} bytes")
        unaccepted = self.mapper.accepts(headers)
        if unaccepted is not None:
            return Refused(RefusalKind.UNSUPPORTED_MEDIA_TYPE, unaccepted)
        return None

    async def _resolve(self, drafts: list[Draft], delivery: Delivery, delivery_id: str | None) -> Outcome:
        resolutions: dict[tuple[Any, ...], Resolution] = {}
        records: list[Record] = []
        dead: dict[tuple[str, str], list[Record]] = {}
        provenance = {"source": self.source, "delivery_id": delivery_id, "received_at": delivery.received_at}
        for draft in drafts:
            # Drafts of one payload share a subject: resolve it (and spend a lookup) once.
            key = (draft.subject.keys, draft.subject.repository, id(draft.subject.document))
            if key not in resolutions:
                resolutions[key] = await self.resolver.resolve(draft.subject)
            resolution = resolutions[key]
            try:
                if resolution.reason is None:
                    for tag in resolution.tags:
                        # One entity keeps the adapter's id (so correlated inputs dedupe); a
                        # monorepo fan-out needs one id per entity.
                        rid = draft.id if len(resolution.tags) == 1 else record_id(draft.id, tag)
                        records.append(_record(draft, rid, tag, provenance))
                else:
                    # A distinct id, so that the input redelivered after a mapping fix is not
                    # mistaken for the dead letter and dropped as a duplicate.
                    rid = record_id(draft.id, resolution.reason)
                    group = dead.setdefault((resolution.reason, resolution.detail), [])
                    group.append(_record(draft, rid, resolution.fallback_tag,
                                         {**provenance, "repository": draft.subject.repository}))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
                )
                return Refused(RefusalKind.UNMAPPABLE, f"payload maps to an invalid {draft.kind} record: {problems}")
        if self.lineage is not None:
            try:
                records = await self.lineage.enrich(records, delivery.facts)
            except QueueError as exc:
                log.warning("input_state_unavailable", source=self.source, error=str(exc))
                return Refused(RefusalKind.UNAVAILABLE, "the bridge cannot store input right now; retry later")
        return Mapped(records, delivery_id, [DeadLetters(rs, r, d) for (r, d), rs in dead.items()])


#: Kinds that say when they happened (custom data, dependencies and docs are state, not events).
TIMED_KINDS = frozenset({"deploy", "event", "metric"})

#: Kinds whose newest record replaces the previous value in Cortex (a PUT). A repeat of one is a
#: restatement: its id includes when it was received, so it is not deduplicated against an older
#: record of the same content (A, B, then A again must end with A; a dependency still reported
#: must look reported). Resending one is harmless; a redelivered input still dedupes by its
#: delivery id.
RESTATED_KINDS = frozenset({"custom_data", "dependency", "docs"})


def _record(draft: Draft, rid: str, tag: str, provenance: dict[str, Any]) -> Record:
    if draft.kind in RESTATED_KINDS:
        rid = record_id(rid, provenance["received_at"])
    fields = {**draft.fields, "kind": draft.kind, "id": rid, "entity": tag, "provenance": provenance}
    if draft.kind in TIMED_KINDS and fields.get("timestamp") is None:
        # An input that carries no time of its own happened when it was delivered.
        fields["timestamp"] = provenance["received_at"]
    return RECORD_ADAPTER.validate_python(fields)
