"""Webhook sources over HTTP: ``POST /webhooks/{name}``.

credentials in the headers (before the body is read) -> body (streamed, bounded in size, time
and, until authenticated, in memory shared by all requests: :mod:`bridge.sources.edge`) ->
authenticate (raw body, constant time) -> the input pipeline (:mod:`bridge.sources.pipeline`:
size, content type, decode, map, resolve entities) -> durable append
(:mod:`bridge.sources.admit`) -> answer. An adapter (:mod:`bridge.sources.webhooks.adapter`)
supplies what is specific to its system; this module adds what is specific to HTTP, once:

* wrong or missing credentials: ``401``, nothing parsed, nothing queued;
* refusals of the pipeline by kind (:data:`HTTP_STATUS`): body too large ``413``, wrong content
  type ``415``, not JSON or not mappable ``400``, the bridge unable to take input ``503`` with
  ``Retry-After``;
* nothing to map (unknown event, action, state): ``202 {"ignored": reason}`` plus a metric, so
  the sending system never disables the hook;
* records: ``202`` only after they are durable; a repeated delivery id is answered ``202`` with
  ``duplicate_delivery`` and stores nothing;
* no entity for the records: kept as dead letters (``cortex-bridge dlq list``), still ``202``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.records import record_to_json
from bridge.secrets import SecretSet, SecretUnavailable
from bridge.sources.admit import (
    NotAdmitted,
    admitted_response,
    append_records,
    error_response,
    ignored_response,
    keep_dead_letters,
    not_admitted_response,
)
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.edge import BodyRefused, read_body
from bridge.sources.payload import Headers
from bridge.sources.pipeline import Ignored, Mapped, Outcome, RefusalKind, Refused
from bridge.sources.webhooks.adapter import WebhookAdapter

log = structlog.get_logger("bridge.webhooks")

#: How each kind of refusal is answered.
HTTP_STATUS: dict[RefusalKind, int] = {
    RefusalKind.UNAUTHENTICATED: 401,
    RefusalKind.TOO_LARGE: 413,
    RefusalKind.UNSUPPORTED_MEDIA_TYPE: 415,
    RefusalKind.MALFORMED: 400,
    RefusalKind.UNMAPPABLE: 400,
    RefusalKind.UNAVAILABLE: 503,
}


def describe(outcome: Outcome) -> dict[str, Any]:
    """A JSON-able account of an outcome, as HTTP would answer it (what ``cortex-bridge preview`` prints)."""
    if isinstance(outcome, Refused):
        return {"outcome": "rejected", "status": HTTP_STATUS[outcome.kind], "reason": outcome.reason}
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


def header_map(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """Case-insensitive request headers from (name, value) pairs (for previews and tests)."""
    return CIMultiDictProxy(CIMultiDict(pairs))


class WebhookSource:
    """A configured webhook source: its route, authentication, and the pipeline of its adapter."""

    def __init__(self, adapter: WebhookAdapter[Any], ctx: SourceContext) -> None:
        problem = adapter.settings.credentials_problem()
        if problem is not None:
            raise SourceConfigError(f"source {adapter.settings.name!r}: {problem}")
        self.adapter = adapter
        self.ctx = ctx
        self.name: str = adapter.settings.name
        self.type: str = adapter.settings.type
        self.pipeline = adapter.pipeline(ctx)
        self.max_body_bytes = self.pipeline.max_bytes

    def secret_files_problem(self) -> str | None:
        """Why this source's secret files cannot be read now, or ``None`` (checked at start)."""
        try:
            self.adapter.settings.secret_set.values()
        except SecretUnavailable as exc:
            return f"source {self.name!r}: {exc}"
        return None

    def routes(self) -> list[web.RouteDef]:
        """``POST /webhooks/{name}``."""
        return [web.post(f"/webhooks/{self.name}", self.handle)]

    async def start(self) -> None:
        """Nothing to start: deliveries arrive on the ingest port."""

    async def stop(self) -> None:
        """Nothing to stop: every acknowledged delivery is already durable."""

    async def evaluate(
        self, headers: Headers, body: bytes, *, authenticate: bool = True, received_at: datetime | None = None
    ) -> Outcome:
        """Authenticate (unless told not to) and run the pipeline; ``cortex-bridge preview`` calls this."""
        if authenticate:
            refused = self._authenticate(headers, body)
            if refused is not None:
                return refused
        return await self.pipeline.run(headers, body, received_at=received_at)

    # -- authentication ---------------------------------------------------------------------------

    def _secrets(self) -> list[bytes] | Refused:
        secret_set: SecretSet = self.adapter.settings.secret_set
        try:
            return secret_set.values()
        except SecretUnavailable as exc:
            log.error("webhook_secret_unavailable", source=self.name, error=str(exc))
            return Refused(RefusalKind.UNAVAILABLE, "the bridge cannot read this source's secret; retry later")

    def _authenticate(self, headers: Headers, body: bytes) -> Refused | None:
        """The credentials check on the whole delivery (``None``: authenticated)."""
        if self.adapter.settings.allow_unauthenticated:
            return None
        secrets = self._secrets()
        if isinstance(secrets, Refused):
            return secrets
        problem = self.adapter.authenticate(headers, body, secrets) if secrets else "no secret is configured"
        return _unauthenticated(problem) if problem is not None else None

    def check_header(self, headers: Headers) -> tuple[Refused | None, bool]:
        """Before the body is read: (the refusal, or ``None``; whether the sender is authenticated).

        A token (GitLab, Jenkins, Argo CD, CloudEvents, mapping with a token) is checked completely;
        an HMAC signature must be present and well-formed, its body check comes after reading.
        """
        if self.adapter.settings.allow_unauthenticated:
            return None, False
        secrets = self._secrets()
        if isinstance(secrets, Refused):
            return secrets, False
        if not secrets:
            return _unauthenticated("no secret is configured"), False
        problem, complete = self.adapter.check_header(headers, secrets)
        if problem is not None:
            return _unauthenticated(problem), False
        return None, complete

    # -- HTTP -------------------------------------------------------------------------------------

    def _answer(self, refused: Refused, delivery_id: str | None) -> web.Response:
        status = HTTP_STATUS[refused.kind]
        retry = {"Retry-After": str(self.ctx.settings.queue.retry_after_seconds)} if status == 503 else None
        return error_response(status, refused.reason, source=self.name, headers=retry, delivery_id=delivery_id)

    def _header_delivery_id(self, headers: Headers) -> str | None:
        """The delivery id as far as the headers tell it (for the log line of a refusal)."""
        try:
            return self.adapter.delivery_id(headers, None)
        except Exception:  # an id read from the payload (mapping rules, CloudEvents) is not known yet
            return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route handler: credentials in the headers, then the body (bounded), evaluate, store."""
        http = self.ctx.settings.http
        delivery_id = self._header_delivery_id(request.headers)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return error_response(413, f"body larger than {self.max_body_bytes} bytes", source=self.name,
                                  delivery_id=delivery_id)
        refused, authenticated = self.check_header(request.headers)
        if refused is not None:
            return self._answer(refused, delivery_id)
        budget = self.ctx.body_budget
        assert budget is not None
        with budget.holding() as hold:
            try:
                body = await read_body(request, max_bytes=self.max_body_bytes, timeout=http.body_timeout_seconds,
                                       source=self.name, hold=None if authenticated else hold,
                                       retry_after=self.ctx.settings.queue.retry_after_seconds,
                                       delivery_id=delivery_id)
            except BodyRefused as exc:
                return exc.response
            refused = None if authenticated else self._authenticate(request.headers, body)
        if refused is not None:
            return self._answer(refused, delivery_id)
        outcome = await self.evaluate(request.headers, body, authenticate=False)
        if isinstance(outcome, Refused):
            return self._answer(outcome, delivery_id)
        if isinstance(outcome, Ignored):
            log.info("webhook_ignored", source=self.name, reason=outcome.reason)
            return ignored_response(outcome.reason, source=self.name)
        return await self._store(outcome)

    async def _store(self, outcome: Mapped) -> web.Response:
        """Dead letters first, then the records; the answer names both."""
        retry_after = self.ctx.settings.queue.retry_after_seconds
        queue = self.ctx.queue
        delivery_id = outcome.delivery_id
        refused = await keep_dead_letters(queue, outcome.dead, source=self.name)
        if refused is not None:
            return not_admitted_response(refused, source=self.name, retry_after=retry_after, delivery_id=delivery_id)
        if not outcome.records:
            return admitted_response(None, outcome.dead)
        result = await append_records(queue, outcome.records, source=self.name, delivery_id=delivery_id)
        if isinstance(result, NotAdmitted):
            return not_admitted_response(result, source=self.name, retry_after=retry_after, delivery_id=delivery_id)
        return admitted_response(result, outcome.dead)

#: The ``source`` label of deliveries to a webhook path no source serves (never the path's own
#: name: a scanner would make one metric series per name it tries).
UNKNOWN_SOURCE = "unknown"


async def _unknown_source(request: web.Request) -> web.Response:
    # The configured names are not listed: whoever reaches the port need not learn them.
    name = request.match_info["name"][:100]
    return error_response(404, f"no webhook source named {name!r} is configured", source=UNKNOWN_SOURCE,
                          extra={"source": name})


#: ``POST /webhooks/{name}`` for a name no source has: a JSON 404 naming it, counted and logged.
#: Added after the sources' own routes, which match first.
UNKNOWN_SOURCE_ROUTE = web.post("/webhooks/{name}", _unknown_source)


def _unauthenticated(problem: str) -> Refused:
    return Refused(RefusalKind.UNAUTHENTICATED, f"authentication failed: {problem}")
