"""The native record format: ``POST /v1/records`` (and Kafka topics with ``format: native``).

Body: one record object or ``{"records": [...]}``; each has ``kind`` (deploy, event, metric,
custom_data, dependency, docs), ``entity`` and the kind's fields (``key`` for metric and
custom_data). An ``id`` is optional: without one, the id is derived from the record's content, so
posting the same deploy, event or point twice stores it once. A value that replaces the previous
one (custom data, a dependency, docs) also gets the time it was received in its derived id:
setting A, then B, then A again must leave A in Cortex, not drop the third as a repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, get_args

import structlog
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from bridge.config import IngestSettings
from bridge.queue import QueueBackend
from bridge.records import RECORD_ADAPTER, Record, RecordKind, record_id, utc_now
from bridge.secrets import SecretUnavailable
from bridge.sources.admit import admit, error_response
from bridge.sources.edge import BodyBudget, BodyRefused, read_body
from bridge.sources.payload import json_body
from bridge.sources.pipeline import RESTATED_KINDS
from bridge.sources.signatures import TokenScheme

log = structlog.get_logger("bridge.ingest")

MAX_RECORDS_PER_REQUEST = 10_000


class RecordErrors(Exception):
    """Some records of an input are invalid; ``errors`` lists each with its index."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid record(s)")
        self.errors = errors


def _describe(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p not in get_args(RecordKind))
        out.append(f"{loc or 'record'}: {err['msg']}")
    return out


def _items(payload: Any) -> list[Any]:
    """The record objects of a native body; raises :class:`RecordErrors` for a body of no records."""
    items = payload.get("records") if isinstance(payload, dict) and "records" in payload else payload
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise RecordErrors([{"index": None, "errors": ["body must be a record object or {\"records\": [...]}"]}])
    if len(items) > MAX_RECORDS_PER_REQUEST:
        raise RecordErrors([{"index": None, "errors": [f"at most {MAX_RECORDS_PER_REQUEST} records per request"]}])
    return items


def _fields(item: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """A record object as the model validates it: its content-derived id, the bridge's provenance."""
    fields = {k: v for k, v in item.items() if k != "provenance"}
    if "id" not in fields:
        kind = fields.get("kind")
        if isinstance(kind, str) and kind in RESTATED_KINDS:  # any JSON may stand here: validation says why
            fields["id"] = record_id("native", fields, provenance["received_at"])
        else:
            fields["id"] = record_id("native", fields)
    fields["provenance"] = provenance
    return fields


def parse_native(
    payload: Any, *, source: str, delivery_id: str | None = None, received_at: datetime | None = None
) -> list[Record]:
    """Validate a native body into records; raise :class:`RecordErrors` if any is invalid."""
    items = _items(payload)
    provenance = {"source": source, "delivery_id": delivery_id, "received_at": received_at or utc_now()}
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"index": index, "errors": ["record must be a JSON object"]})
            continue
        try:
            records.append(RECORD_ADAPTER.validate_python(_fields(item, provenance)))
        except ValidationError as exc:
            errors.append({"index": index, "id": item.get("id"), "errors": _describe(exc)})
    if errors:
        raise RecordErrors(errors)
    return records


def parse_native_batch(
    payloads: Sequence[tuple[Any, str | None]], *, source: str, received_at: datetime | None = None
) -> list[list[Record] | RecordErrors]:
    """:func:`parse_native` of many bodies (each with its delivery id), validated in one call.

    Each body's outcome is what :func:`parse_native` would have given it: its records, or its
    :class:`RecordErrors`. One validation call for a whole fetched Kafka batch costs less than one
    per body; when any record is invalid, the bodies are validated one by one to say which.
    """
    received = received_at or utc_now()
    outcomes: list[list[Record] | RecordErrors] = []
    fields: list[dict[str, Any]] = []
    sizes: list[int] = []
    for payload, delivery_id in payloads:
        try:
            items = _items(payload)
        except RecordErrors as exc:
            outcomes.append(exc)
            sizes.append(-1)
            continue
        if not all(isinstance(item, dict) for item in items):
            outcomes.append(_parsed(payload, source, delivery_id, received))  # says which is not an object
            sizes.append(-1)
            continue
        provenance = {"source": source, "delivery_id": delivery_id, "received_at": received}
        fields.extend(_fields(item, provenance) for item in items)
        outcomes.append([])
        sizes.append(len(items))
    try:
        records = _RECORDS_ADAPTER.validate_python(fields)
    except ValidationError:
        return [outcome if size < 0 else _parsed(payload, source, delivery_id, received)
                for outcome, size, (payload, delivery_id) in zip(outcomes, sizes, payloads, strict=True)]
    start = 0
    for outcome, size in zip(outcomes, sizes, strict=True):
        if size > 0:
            assert isinstance(outcome, list)
            outcome.extend(records[start:start + size])
            start += size
    return outcomes


def _parsed(payload: Any, source: str, delivery_id: str | None, received: datetime) -> list[Record] | RecordErrors:
    try:
        return parse_native(payload, source=source, delivery_id=delivery_id, received_at=received)
    except RecordErrors as exc:
        return exc


_RECORDS_ADAPTER: TypeAdapter[list[Record]] = TypeAdapter(list[Record])


def native_input_schema() -> dict[str, Any]:
    """The JSON Schema of a ``POST /v1/records`` body, generated from the record models.

    What a producer sends differs from a stored record as :func:`parse_native` says: ``id`` is
    optional (derived from the content), ``provenance`` is the bridge's own (dropped when sent),
    ``kind`` is required (it selects the model), a timestamp may be a number of seconds, and an
    OpenAPI document may be given as an object.
    """
    schema = RECORD_ADAPTER.json_schema()
    defs: dict[str, Any] = schema.pop("$defs")
    defs.pop("Provenance")
    for name in ("DeployRecord", "EventRecord", "MetricRecord", "CustomDataRecord", "DependencyRecord", "DocsRecord"):
        model = defs[name]
        model["properties"].pop("provenance")
        model["required"] = ["kind"] + [f for f in model["required"] if f not in ("id", "provenance")]
        stamp = model["properties"].get("timestamp")
        if stamp is not None:
            model["properties"]["timestamp"] = {
                "description": stamp.pop("description"), "title": stamp.pop("title"),
                "anyOf": [stamp, {"type": "number", "description": "seconds since the epoch"}]}
    spec = defs["DocsRecord"]["properties"]["spec"]  # the door also takes the document as an object
    spec["anyOf"] = [{"type": spec.pop("type")}, {"type": "object"}]
    defs["Record"] = schema
    batch = {"type": "object", "additionalProperties": False, "required": ["records"],
             "properties": {"records": {"type": "array", "minItems": 1, "maxItems": MAX_RECORDS_PER_REQUEST,
                                        "items": {"$ref": "#/$defs/Record"}}}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cortex-bridge native records (POST /v1/records, Kafka format: native)",
        "description": "One record, or {\"records\": [...]}. Generated from bridge/records.py.",
        "oneOf": [{"$ref": "#/$defs/Record"}, batch],
        "$defs": defs,
    }


async def serve_schema(request: web.Request) -> web.Response:
    """``GET /v1/schema``: :func:`native_input_schema` (no credentials: it is the public format)."""
    return web.json_response(native_input_schema(), content_type="application/schema+json")


class NativeEndpoint:
    """``POST /v1/records``: bearer-token check (before the body is read), validation, durable append."""

    name = "native"

    def __init__(self, queue: QueueBackend, *, ingest: IngestSettings, max_body_bytes: int, retry_after: int,
                 body_timeout: float = 30.0, budget: BodyBudget | None = None) -> None:
        self.queue = queue
        self.ingest = ingest
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        self.body_timeout = body_timeout
        self.budget = budget or BodyBudget(32 * 1024 * 1024)

    def _check_token(self, request: web.Request, delivery_id: str | None) -> web.Response | None:
        # The same mechanism as webhook tokens: inline or files re-read on every request.
        try:
            secrets = self.ingest.secret_set.values()
        except SecretUnavailable as exc:
            log.error("ingest_token_unavailable", error=str(exc))
            return error_response(503, "the bridge cannot read its ingest token; retry later", source=self.name,
                                  headers={"Retry-After": str(self.retry_after)}, delivery_id=delivery_id)
        problem = _BEARER.verify(request.headers, b"", secrets) if secrets else "no ingest token is configured"
        if problem is not None:
            return error_response(401, "missing or wrong bearer token", source=self.name,
                                  headers={"WWW-Authenticate": "Bearer"}, delivery_id=delivery_id)
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route handler."""
        delivery_id = request.headers.get("Idempotency-Key")

        def refuse(status: int, reason: str, **kwargs: Any) -> web.Response:
            return error_response(status, reason, source=self.name, delivery_id=delivery_id, **kwargs)

        authenticated = not self.ingest.allow_unauthenticated
        if authenticated:
            refused = self._check_token(request, delivery_id)
            if refused is not None:
                return refused
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return refuse(413, f"body larger than {self.max_body_bytes} bytes")
        ctype = request.content_type
        if ctype not in ("application/json", "application/cloudevents+json") and not ctype.endswith("+json"):
            return refuse(415, "content type must be application/json")
        with self.budget.holding() as hold:
            try:
                raw = await read_body(request, max_bytes=self.max_body_bytes, timeout=self.body_timeout,
                                      source=self.name, hold=None if authenticated else hold,
                                      retry_after=self.retry_after, delivery_id=delivery_id)
            except BodyRefused as exc:
                return exc.response
            try:
                payload = json_body(raw)
            except (ValueError, RecursionError) as exc:
                return refuse(400, f"body is not valid JSON: {exc}")
        del raw
        try:
            records = parse_native(payload, source=self.name, delivery_id=delivery_id)
        except RecordErrors as exc:
            return refuse(400, "invalid records; nothing was stored", extra={"errors": exc.errors})
        return await admit(self.queue, records, source=self.name, delivery_id=delivery_id,
                           retry_after=self.retry_after)

_BEARER = TokenScheme(header="Authorization")
