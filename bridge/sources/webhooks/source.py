"""The webhook pipeline every CI/CD adapter runs in: ``POST /webhooks/{name}``.

credentials in the headers (before the body is read) -> body (streamed, bounded in size, time
and, until authenticated, in memory shared by all requests: :mod:`bridge.sources.edge`) -> authenticate
(raw body, constant time) -> content type -> parse -> map to drafts or ignore ->
resolve entities -> durable append -> answer. An adapter supplies only what is specific to its
system (how it signs, which header holds the delivery id, how payloads map to records); the order
of the steps, the answers and the durability rule live here once:

* wrong or missing credentials: ``401``, nothing parsed, nothing queued;
* body too large ``413``, wrong content type ``415``, not JSON ``400``;
* nothing to map (unknown event, action, state): ``202 {"ignored": reason}`` plus a metric, so
  the sending system never disables the hook;
* records: ``202`` only after they are durable (:func:`bridge.sources.admit.admit`); a repeated
  delivery id is answered ``202`` with ``duplicate_delivery`` and stores nothing;
* no entity for the records: kept as dead letters (``cortex-bridge dlq list``), still ``202``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bridge.queue import QueueError, QueueFull, QueueUnavailable
from bridge.records import (
    RECORD_ADAPTER,
    Record,
    RecordKind,
    UnstorableRecord,
    record_id,
    record_to_json,
    utc_now,
)
from bridge.sources.admit import admit, error_response, ignored_response
from bridge.sources.base import SourceContext
from bridge.sources.edge import BodyRefused, read_body
from bridge.sources.entity import EntityResolver, EntitySettings, Resolution, Subject
from bridge.sources.signatures import AuthScheme, SecretSet, SecretUnavailable
from bridge.sources.timestamps import parse_ci_timestamp

log = structlog.get_logger("bridge.webhooks")

Headers = Mapping[str, str]

#: A Cortex custom metric key (what ``MetricRecord.key`` accepts).
MetricKey = Annotated[str, Field(min_length=2, max_length=255, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")]


class WebhookSettings(BaseModel):
    """Settings every webhook source has; each type extends them with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Served at /webhooks/{name}.")
    type: str
    secrets: list[SecretStr] = Field(default_factory=list, description="Active secrets (several while rotating).")
    secret_files: list[Path] = Field(
        default_factory=list, description="Files with one secret per line, re-read on every delivery."
    )
    allow_unauthenticated: bool = Field(False, description="Accept deliveries without credentials.")
    entity: EntitySettings = Field(default_factory=EntitySettings)
    max_body_bytes: int | None = Field(None, ge=1, description="Lower than http.max_body_bytes for this source.")

    @model_validator(mode="after")
    def _credentials_required(self) -> WebhookSettings:
        if not (self.secrets or self.secret_files or self.allow_unauthenticated):
            raise ValueError("set `secrets` or `secret_files` (or `allow_unauthenticated: true`)")
        return self

    @property
    def secret_set(self) -> SecretSet:
        return SecretSet(tuple(self.secrets), tuple(self.secret_files))


S = TypeVar("S", bound=WebhookSettings)


@dataclass(frozen=True)
class Delivery:
    """One received webhook, as adapters see it after authentication and parsing."""

    source: str
    headers: Headers
    body: bytes
    payload: Any
    received_at: datetime


@dataclass(frozen=True)
class Draft:
    """A record without its entity: what an adapter maps a payload to."""

    kind: RecordKind
    id: str
    fields: dict[str, Any]
    subject: Subject


class Ignore(Exception):
    """Raised by an adapter: the payload maps to nothing. ``reason`` is ``category: detail``."""


class Reject(Exception):
    """Raised by an adapter: the payload is unusable (answered with ``status``, default 400)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class WebhookAdapter(ABC, Generic[S]):
    """The system-specific part of a webhook source."""

    #: media types accepted (after authentication); ``+json`` suffixes are always accepted
    content_types: frozenset[str] = frozenset({"application/json"})

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @abstractmethod
    def scheme(self) -> AuthScheme | None:
        """How deliveries are authenticated (``None``: by nothing the bridge can check)."""

    def authenticate(self, headers: Headers, body: bytes, secrets: list[bytes]) -> str | None:
        """``None`` if the delivery carries valid credentials, else why not (for the 401)."""
        scheme = self.scheme()
        return scheme.verify(headers, body, secrets) if scheme is not None else None

    def check_header(self, headers: Headers, secrets: list[bytes]) -> tuple[str | None, bool]:
        """Before the body is read: (why the credentials are refused or ``None``, whether they are
        fully checked). A token is checked completely; an HMAC only for presence and form."""
        scheme = self.scheme()
        if scheme is None:
            return None, False
        return scheme.check_header(headers, secrets), not scheme.needs_body

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        """The sender's id of this delivery (the same on a redelivery), if it has one."""
        return None

    def accepts(self, headers: Headers) -> str | None:
        """``None`` if the content type is one this adapter reads, else why not (for the 415)."""
        ctype = media_type(headers)
        if ctype in self.content_types or ctype.endswith("+json"):
            return None
        return f"content type {ctype or '(none)'} is not accepted ({', '.join(sorted(self.content_types))})"

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The payload of a body; raise ``ValueError`` (or :class:`Reject`) if it is malformed."""
        return json.loads(body)

    @abstractmethod
    async def map(self, delivery: Delivery) -> list[Draft]:
        """Drafts for the payload; raise :class:`Ignore` or :class:`Reject` instead of returning []."""


# -- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """Answered with a 4xx (or 503); nothing stored."""

    status: int
    reason: str


@dataclass(frozen=True)
class Ignored:
    """Answered 202 ``{"ignored": reason}``; nothing stored."""

    reason: str


@dataclass(frozen=True)
class DeadLetters:
    """Records whose entity could not be resolved, kept for an operator."""

    records: list[Record]
    reason: str
    detail: str


@dataclass(frozen=True)
class Mapped:
    """Records to append (and dead letters to keep) for one delivery."""

    records: list[Record]
    delivery_id: str | None
    dead: list[DeadLetters] = field(default_factory=list)


Outcome = Rejected | Ignored | Mapped


def describe(outcome: Outcome) -> dict[str, Any]:
    """A JSON-able account of an outcome (what ``cortex-bridge preview`` prints)."""
    if isinstance(outcome, Rejected):
        return {"outcome": "rejected", "status": outcome.status, "reason": outcome.reason}
    if isinstance(outcome, Ignored):
        return {"outcome": "ignored", "reason": outcome.reason}
    return {
        "outcome": "records",
        "delivery_id": outcome.delivery_id,
        "records": [json.loads(record_to_json(r)) for r in outcome.records],
        "dead_letters": [
            {"reason": d.reason, "detail": d.detail, "records": [json.loads(record_to_json(r)) for r in d.records]}
            for d in outcome.dead
        ],
    }


def media_type(headers: Headers) -> str:
    """The lowercase media type of ``Content-Type`` without parameters."""
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class WebhookSource:
    """A configured webhook source: routes, and the pipeline around its adapter."""

    def __init__(self, adapter: WebhookAdapter[Any], ctx: SourceContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.name: str = adapter.settings.name
        self.type: str = adapter.settings.type
        self.resolver = EntityResolver(adapter.settings.entity, ctx.lookup_repository)
        self.max_body_bytes = min(
            ctx.settings.http.max_body_bytes, adapter.settings.max_body_bytes or ctx.settings.http.max_body_bytes
        )

    def routes(self) -> list[web.RouteDef]:
        """``POST /webhooks/{name}``."""
        return [web.post(f"/webhooks/{self.name}", self.handle)]

    async def start(self) -> None:
        """Nothing to start: deliveries arrive on the ingest port."""

    async def stop(self) -> None:
        """Nothing to stop: every acknowledged delivery is already durable."""

    # -- the pipeline -------------------------------------------------------------------------

    async def evaluate(
        self, headers: Headers, body: bytes, *, authenticate: bool = True, received_at: datetime | None = None
    ) -> Outcome:
        """Run every step short of storing; ``cortex-bridge preview`` calls this directly."""
        if authenticate:
            refused = self._authenticate(headers, body)
            if refused is not None:
                return refused
        if len(body) > self.max_body_bytes:
            return Rejected(413, f"body larger than {self.max_body_bytes} bytes")
        unaccepted = self.adapter.accepts(headers)
        if unaccepted is not None:
            return Rejected(415, unaccepted)
        try:
            payload = self.adapter.decode(headers, body)
        except Reject as exc:
            return Rejected(exc.status, str(exc))
        except (ValueError, RecursionError) as exc:
            return Rejected(400, f"body is not valid JSON: {str(exc)[:200]}")
        delivery = Delivery(self.name, headers, body, payload, received_at or utc_now())
        try:
            drafts = await self.adapter.map(delivery)
            delivery_id = self.adapter.delivery_id(headers, payload)
        except Ignore as exc:
            return Ignored(str(exc))
        except Reject as exc:
            return Rejected(exc.status, str(exc))
        except QueueError as exc:
            # An adapter that keeps state (CDEvents pipeline starts) could not reach the queue.
            log.warning("webhook_state_unavailable", source=self.name, error=str(exc))
            return Rejected(503, "the bridge cannot store input right now; retry later")
        except Exception as exc:
            # A payload shape the adapter did not foresee must not become a 500 (senders retry
            # 5xx forever and disable the hook); the traceback is logged for a fix.
            log.exception("webhook_mapping_failed", source=self.name, error=str(exc))
            return Rejected(400, f"payload could not be mapped: {type(exc).__name__}")
        if not drafts:
            return Ignored("no-records: the payload maps to nothing")
        return await self._resolve(drafts, delivery, delivery_id)

    async def _resolve(self, drafts: list[Draft], delivery: Delivery, delivery_id: str | None) -> Outcome:
        resolutions: dict[tuple[Any, ...], Resolution] = {}
        records: list[Record] = []
        dead: dict[tuple[str, str], list[Record]] = {}
        provenance = {"source": self.name, "delivery_id": delivery_id, "received_at": delivery.received_at}
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
                        records.append(self._record(draft, rid, tag, provenance))
                else:
                    # A distinct id, so that the input redelivered after a mapping fix is not
                    # mistaken for the dead letter and dropped as a duplicate.
                    rid = record_id(draft.id, resolution.reason)
                    group = dead.setdefault((resolution.reason, resolution.detail), [])
                    group.append(self._record(draft, rid, resolution.fallback_tag, provenance))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
                )
                return Rejected(400, f"payload maps to an invalid {draft.kind} record: {problems}")
        return Mapped(records, delivery_id, [DeadLetters(rs, r, d) for (r, d), rs in dead.items()])

    @staticmethod
    def _record(draft: Draft, rid: str, tag: str, provenance: dict[str, Any]) -> Record:
        fields = {**draft.fields, "kind": draft.kind, "id": rid, "entity": tag, "provenance": provenance}
        if draft.kind != "custom_data" and fields.get("timestamp") is None:
            # An input that carries no time of its own happened when it was delivered.
            fields["timestamp"] = provenance["received_at"]
        return RECORD_ADAPTER.validate_python(fields)

    # -- HTTP -------------------------------------------------------------------------------------

    def _secrets(self) -> list[bytes] | Rejected:
        secret_set: SecretSet = self.adapter.settings.secret_set
        try:
            return secret_set.values()
        except SecretUnavailable as exc:
            log.error("webhook_secret_unavailable", source=self.name, error=str(exc))
            return Rejected(503, "the bridge cannot read this source's secret; retry later")

    def _authenticate(self, headers: Headers, body: bytes) -> Rejected | None:
        """The credentials check on the whole delivery (``None``: authenticated)."""
        if self.adapter.settings.allow_unauthenticated:
            return None
        secrets = self._secrets()
        if isinstance(secrets, Rejected):
            return secrets
        problem = self.adapter.authenticate(headers, body, secrets) if secrets else "no secret is configured"
        return Rejected(401, f"authentication failed: {problem}") if problem is not None else None

    def check_header(self, headers: Headers) -> tuple[Rejected | None, bool]:
        """Before the body is read: (the refusal, or ``None``; whether the sender is authenticated).

        A token (GitLab, Jenkins, Argo CD, CloudEvents, mapping with a token) is checked completely;
        an HMAC signature must be present and well-formed, its body check comes after reading.
        """
        if self.adapter.settings.allow_unauthenticated:
            return None, False
        secrets = self._secrets()
        if isinstance(secrets, Rejected):
            return secrets, False
        if not secrets:
            return Rejected(401, "authentication failed: no secret is configured"), False
        problem, complete = self.adapter.check_header(headers, secrets)
        if problem is not None:
            return Rejected(401, f"authentication failed: {problem}"), False
        return None, complete

    def _answer(self, outcome: Rejected) -> web.Response:
        retry = {"Retry-After": str(self.ctx.settings.queue.retry_after_seconds)} if outcome.status == 503 else None
        return error_response(outcome.status, outcome.reason, source=self.name, headers=retry)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route handler: credentials in the headers, then the body (bounded), evaluate, store."""
        http = self.ctx.settings.http
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return error_response(413, f"body larger than {self.max_body_bytes} bytes", source=self.name)
        refused, authenticated = self.check_header(request.headers)
        if refused is not None:
            return self._answer(refused)
        budget = self.ctx.body_budget
        assert budget is not None
        with budget.holding() as hold:
            try:
                body = await read_body(request, max_bytes=self.max_body_bytes, timeout=http.body_timeout_seconds,
                                       source=self.name, hold=None if authenticated else hold,
                                       retry_after=self.ctx.settings.queue.retry_after_seconds)
            except BodyRefused as exc:
                return exc.response
            refused = None if authenticated else self._authenticate(request.headers, body)
        if refused is not None:
            return self._answer(refused)
        outcome = await self.evaluate(request.headers, body, authenticate=False)
        if isinstance(outcome, Rejected):
            return self._answer(outcome)
        if isinstance(outcome, Ignored):
            log.info("webhook_ignored", source=self.name, reason=outcome.reason)
            return ignored_response(outcome.reason, source=self.name)
        return await self._store(outcome)

    async def _store(self, outcome: Mapped) -> web.StreamResponse:
        retry_after = self.ctx.settings.queue.retry_after_seconds
        dead_ids: list[str] = []
        for group in outcome.dead:
            try:
                await self.ctx.queue.dead_letter_input(group.records, reason=group.reason, detail=group.detail)
            except (QueueFull, QueueUnavailable) as exc:
                log.warning("webhook_dead_letter_refused", source=self.name, error=str(exc))
                return error_response(503, "queue cannot store input right now; retry later", source=self.name,
                                      headers={"Retry-After": str(retry_after)})
            except UnstorableRecord as exc:
                return error_response(422, f"record cannot be stored as sent; nothing was stored: {exc}",
                                      source=self.name)
            log.warning("webhook_dead_lettered", source=self.name, reason=group.reason, detail=group.detail,
                        records=len(group.records))
            dead_ids.extend(r.id for r in group.records)
        if not outcome.records:
            reasons = sorted({g.reason for g in outcome.dead})
            return web.json_response({"accepted": 0, "dead_lettered": len(dead_ids), "reasons": reasons,
                                      "ids": dead_ids}, status=202)
        response = await admit(self.ctx.queue, outcome.records, source=self.name,
                               delivery_id=outcome.delivery_id, retry_after=retry_after)
        if dead_ids and response.status == 202 and isinstance(response, web.Response) and response.text:
            answer = json.loads(response.text)
            answer["dead_lettered"] = len(dead_ids)
            answer["dead_letter_ids"] = dead_ids
            return web.json_response(answer, status=202)
        return response


def dig(value: Any, *path: str | int) -> Any:
    """``value[path[0]][path[1]]...``, or ``None`` where a step is missing or of another type."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(value, list) or not -len(value) <= key < len(value):
                return None
        elif not isinstance(value, dict):
            return None
        value = value[key] if isinstance(key, int) else value.get(key)
    return value


def text(value: Any) -> str | None:
    """A non-empty string (numbers are rendered), else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def first_timestamp(*values: Any) -> datetime | None:
    """The first of ``values`` that parses as a timestamp (ISO-8601, CI styles, epoch)."""
    for value in values:
        if value is None or value == "":
            continue
        try:
            return parse_ci_timestamp(value)
        except (ValueError, OverflowError, OSError):
            continue
    return None


def header_map(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """Case-insensitive headers from (name, value) pairs (for previews and tests)."""
    return CIMultiDictProxy(CIMultiDict(pairs))
