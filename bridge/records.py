"""The normalized record model: the only thing that crosses from sources to the sender.

Six kinds, each what one Cortex write endpoint takes (:mod:`bridge.cortex.endpoints` builds the
requests): a deploy, a custom event, one metric point, one custom-data key of one entity, one
dependency edge (caller entity -> callee entity), and an entity's OpenAPI document.

Every record has a deterministic ``id``: a source derives it from what identifies the input
(delivery id, run id, event uid ...) so that a redelivered or replayed input maps to the same id
and the durable queue stores it once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from bridge.openapi_spec import openapi_document
from bridge.storable import json_problem

#: Namespace for record ids (uuid5), fixed forever so ids stay stable across versions.
RECORD_ID_NAMESPACE = uuid.UUID("6f1c7a52-3a0e-4c55-9a43-1f0d2a8c9b11")
_NAMESPACE_BYTES = RECORD_ID_NAMESPACE.bytes

#: Key under which a deploy's or event's record id is stored inside its ``customData`` in Cortex,
#: so that an ambiguous delivery can be matched exactly when it is read back, and a stored deploy
#: traced to its record. It is how a record is identified once delivered, so it stays with the id.
BRIDGE_ID_KEY = "cortexBridgeId"

DeployType = Literal["DEPLOY", "SCALE", "ROLLBACK", "RESTART"]
RecordKind = Literal["deploy", "event", "metric", "custom_data", "dependency", "docs"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def record_id(*parts: object) -> str:
    """Deterministic record id from the parts that identify an input (uuid5 of their canonical JSON).

    Parts may be whole JSON objects (key order does not matter), so an input without an id of its
    own gets one from its content.
    """
    # uuid.uuid5 without building a UUID object (a third of the cost on the ingest hot path); the
    # same bits, so ids stay what they always were.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + canonical_json(parts)).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def canonical_json(parts: tuple[object, ...]) -> bytes:
    """``json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)``, UTF-8 encoded.

    The text record ids hash, so it must never change. orjson writes the same bytes several times
    faster for ASCII text, 64-bit integers, finite floats outside orjson's own notation for small
    magnitudes, string keys and datetimes (``str`` of them, as ``default=str`` gives); anything it
    writes otherwise, or refuses, is written by ``json.dumps`` (property-tested byte for byte in
    tests/test_records.py). Parts are JSON values and datetimes; an ``Enum`` member is not one
    (orjson would write its value where ``json.dumps`` writes its name).
    """
    try:
        fast = orjson.dumps(parts, default=_str_of_datetime, option=_CANONICAL_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a key not str, ...
        fast = b""
    if fast and fast.isascii() and b"\x7f" not in fast and b"null" not in fast and not _small_float(fast):
        return fast
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()


#: datetimes reach ``default`` (as ``json.dumps`` hands them to ``str``); dataclasses too, to be refused.
_CANONICAL_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _str_of_datetime(value: object) -> str:
    if isinstance(value, datetime | date | time):
        return str(value)
    raise TypeError("written by json.dumps")


def _small_float(text: bytes) -> bool:
    """Whether ``text`` may hold a float orjson writes unlike ``repr``: 1e-05 as ``0.00001``, 1e-07
    as ``1e-7`` (a one-digit negative exponent). Also true of some strings: then json.dumps writes it."""
    if b"0.0000" in text:
        return True
    at = text.find(b"e-")
    while at != -1:
        if text[at - 1 : at] in _DIGITS and text[at + 2 : at + 3] in _DIGITS and text[at + 3 : at + 4] not in _DIGITS:
            return True
        at = text.find(b"e-", at + 2)
    return False


#: one-byte slices of a digit (an empty slice, past either end, is not one)
_DIGITS = frozenset(bytes([d]) for d in b"0123456789")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def format_timestamp(ts: datetime) -> str:
    """UTC with an explicit ``Z``, millisecond precision: the format Cortex round-trips."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    if ts.year < 1000:  # strftime's (unpadded) year, which parse_timestamp refuses: kept as it was
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    # the same text as strftime, three times as fast (it runs for every record serialized); an
    # f-string of the same fields is slower
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond // 1000)


def parse_timestamp(value: str | int | float | datetime) -> datetime:
    """Parse ISO-8601 (``Z`` or offset; naive means UTC) or epoch seconds/milliseconds.

    Raises ``ValueError`` for anything else, so validation reports it as a bad field.
    """
    if type(value) is str and len(value) == 24 and value[23] == "Z":
        # The queue's own text (format_timestamp), read back with every record: read directly.
        # fromisoformat takes the "Z" itself (Python >= 3.11); whatever it refuses takes the path below.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"timestamp {value!r} is out of range") from None
    if not isinstance(value, str):
        raise ValueError("timestamp must be an ISO-8601 string or epoch seconds/milliseconds")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: Validation context of a record read from the queue's own serialization (see ``_storable``).
READ_BACK: dict[str, Any] = {"read_back": True}


class UnstorableRecord(ValueError):
    """A record that would not read back from the queue exactly as it is (never acknowledged)."""

    def __init__(self, record_id: str, problem: str) -> None:
        super().__init__(f"record {record_id}: {problem}")
        self.record_id = record_id
        self.problem = problem


class Provenance(BaseModel):
    """Where a record came from: which source, which delivery, when it was received."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    delivery_id: str | None = None
    received_at: AwareDatetime = Field(default_factory=utc_now)
    #: The git repository (``org/repo``) the input named, kept on a record whose entity was not
    #: resolved, so that ``dlq register-entities`` can create the entity with it.
    repository: str | None = Field(None, max_length=512)


class Deployer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="Who deployed.")
    email: str | None = Field(None, description="The deployer's email address.")


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, description="The record's id; posting the same id again stores"
                    " nothing new. Optional on input: derived from the record's content when absent.")
    entity: str = Field(min_length=1, max_length=512, description="Cortex entity tag or id (no spaces or '/').")
    provenance: Provenance

    @field_validator("entity")
    @classmethod
    def _strip_entity(cls, value: str) -> str:
        if value != value.strip() or "/" in value:
            raise ValueError("entity must be a Cortex tag without spaces or '/'")
        return value

    @model_validator(mode="after")
    def _storable(self, info: ValidationInfo) -> _RecordBase:
        # Every field, so that what is acknowledged is exactly what the sender reads back. Text
        # the queue wrote from a checked record keeps what this checks (it is JSON, as deep as
        # the record): reading it back (READ_BACK) need not walk it again.
        if info.context is READ_BACK:
            return self
        problem = json_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def _record_timestamp(value: Any) -> datetime:
    # Millisecond precision, as sent to Cortex, so read-backs compare equal.
    ts = parse_timestamp(value)
    return ts if ts.microsecond % 1000 == 0 else ts.replace(microsecond=ts.microsecond // 1000 * 1000)


#: A timestamp field: accepts ISO-8601 or epoch numbers, always serializes as UTC ``Z``.
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_record_timestamp), PlainSerializer(format_timestamp, return_type=str)
]


_TIMESTAMP = "When it happened: ISO 8601 with a time zone, or seconds since the epoch; kept to the millisecond."
_CUSTOM_DATA = "Any JSON object, shown with the item in Cortex."


class DeployRecord(_RecordBase):
    """A deploy of an entity (rollout, rollback, scale or restart)."""

    kind: Literal["deploy"] = "deploy"
    title: str = Field(min_length=1, description="Shown in the entity's deploy timeline.")
    timestamp: Timestamp = Field(description=_TIMESTAMP)
    type: DeployType = Field("DEPLOY", description="DEPLOY, SCALE, ROLLBACK or RESTART.")
    sha: str | None = Field(None, description="Git commit deployed.")
    environment: str | None = Field(None, description="Environment deployed to (e.g. production).")
    url: str | None = Field(None, description="Link to the deploy (pipeline run, release).")
    deployer: Deployer | None = Field(None, description="Who deployed: `{\"name\": ..., \"email\": ...}`.")
    custom_data: dict[str, Any] | None = Field(default=None, alias="customData", description=_CUSTOM_DATA)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EventRecord(_RecordBase):
    """A custom event on an entity (failed deploy, crash loop, release ...)."""

    kind: Literal["event"] = "event"
    type: str = Field(min_length=1, description="Event type, e.g. DEPLOY_FAILED or INCIDENT.")
    title: str = Field(min_length=1, description="Shown in the entity's event timeline.")
    timestamp: Timestamp = Field(description=_TIMESTAMP)
    description: str | None = Field(None, description="Longer text of the event.")
    url: str | None = Field(None, description="Link to more about the event.")
    custom_data: dict[str, Any] | None = Field(default=None, alias="customData", description=_CUSTOM_DATA)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MetricRecord(_RecordBase):
    """One point of a custom metric (Eng Intelligence) for one entity."""

    kind: Literal["metric"] = "metric"
    key: str = Field(min_length=2, max_length=255, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$",
                     description="Key of a custom metric defined in Cortex (Eng Intelligence).")
    timestamp: Timestamp = Field(description=_TIMESTAMP + " A point older than 6 months is dead-lettered (Cortex would discard it).")
    value: float = Field(allow_inf_nan=False, description="The point's value (a finite number).")


class CustomDataRecord(_RecordBase):
    """One custom-data key of one entity; a later value for the same key overwrites."""

    kind: Literal["custom_data"] = "custom_data"
    key: str = Field(min_length=1, max_length=255, description="Custom-data key on the entity.")
    value: Any = Field(description="Any JSON value except null.")
    description: str | None = Field(None, description="Shown beside the value in Cortex.")

    @field_validator("value")
    @classmethod
    def _value_present(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("value is required (any JSON except null)")
        return value


class DependencyRecord(_RecordBase):
    """A dependency of the caller ``entity`` on the ``callee`` entity, optionally of one endpoint."""

    kind: Literal["dependency"] = "dependency"
    callee: str = Field(min_length=1, max_length=512, description="Cortex tag of the entity depended on.")
    method: HttpMethod | None = Field(None, description="HTTP method of the endpoint called, with `path`.")
    path: str | None = Field(None, min_length=1, max_length=2048, description="Path of the endpoint called.")
    description: str | None = Field(None, max_length=4096, description="Shown with the dependency in Cortex.")
    metadata: dict[str, Any] | None = Field(None, description="Any JSON object kept with the dependency.")

    @field_validator("callee")
    @classmethod
    def _callee_tag(cls, value: str) -> str:
        if value != value.strip() or "/" in value:
            raise ValueError("callee must be a Cortex tag without spaces or '/'")
        return value

    @model_validator(mode="after")
    def _method_with_path(self) -> DependencyRecord:  # Cortex keys an endpoint by both
        if (self.method is None) != (self.path is None):
            raise ValueError("method and path go together: give both or neither")
        return self

    @property
    def edge(self) -> tuple[str, str, str | None, str | None]:
        """What Cortex keys the dependency by: a later record for the same edge overwrites."""
        return (self.entity, self.callee, self.method, self.path)


class DocsRecord(_RecordBase):
    """An entity's OpenAPI document; only the newest queued one per entity is sent."""

    kind: Literal["docs"] = "docs"
    spec: Annotated[str, BeforeValidator(openapi_document)] = Field(
        description="OpenAPI 3.x document: a JSON object, or JSON or YAML text. Stored and sent as JSON text.")


Record = Annotated[
    DeployRecord | EventRecord | MetricRecord | CustomDataRecord | DependencyRecord | DocsRecord,
    Field(discriminator="kind"),
]
RECORD_ADAPTER: TypeAdapter[Record] = TypeAdapter(Record)


def record_to_json(record: Record) -> str:
    """Serialize a record for the durable queue."""
    return record.model_dump_json(by_alias=True, exclude_none=True)


def describe_invalid(exc: Exception) -> str:
    """Why a value did not validate, without the value itself (it may be a whole stored body)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        )[:1000]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def encode_record(record: Record) -> str:
    """Serialize a record for the durable queue and prove it reads back: the door's last check.

    The model's validators refuse what cannot be stored; this catches whatever they do not
    foresee, with the very code (:func:`record_from_json`) the sender will read it back with.
    Raises :class:`UnstorableRecord`.
    """
    try:
        body = record_to_json(record)
    except (PydanticSerializationError, ValueError, RecursionError) as exc:
        raise UnstorableRecord(record.id, f"cannot be serialized: {describe_invalid(exc)}") from None
    try:
        record_from_json(body)
    except (ValidationError, ValueError, RecursionError) as exc:
        raise UnstorableRecord(record.id, f"would not read back: {describe_invalid(exc)}") from None
    return body


def record_from_json(data: str | bytes) -> Record:
    """Inverse of :func:`record_to_json`."""
    return RECORD_ADAPTER.validate_json(data, context=READ_BACK)


def lane_of(record: Record) -> str:
    """The batching lane: records in one lane may share one Cortex request."""
    if isinstance(record, MetricRecord):
        return f"metric\x1f{record.key}\x1f{record.entity}"
    if isinstance(record, CustomDataRecord | DependencyRecord):
        return record.kind  # one bulk request carries many entities
    return f"{record.kind}\x1f{record.entity}"
