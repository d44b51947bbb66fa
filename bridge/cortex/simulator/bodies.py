"""Request bodies of the simulated Cortex endpoints, validated as Cortex's Java types read them.

Strict JSON types (no ``"3"`` for ``3``), unknown fields ignored as Jackson does under Spring's
defaults; a refusal is the ``400`` Cortex answers, naming each field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from bridge.cortex.simulator.errors import bad_request

# RFC 3339 with the offset optional: the official CLI sends naive times for events and metrics.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})?")
# CLI help for metric keys: "2-255 chars, letters/digits/hyphens, alphanumeric start/end".
_METRIC_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,253}[A-Za-z0-9]")


def parse_date_time(value: object) -> datetime:
    """Parse a strict ISO-8601 date-time into an aware datetime; a missing offset means UTC."""
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        raise ValueError(f"expected a date-time like 2026-07-13T18:26:52Z, got {value!r}")
    try:
        # fromisoformat keeps microseconds and drops further digits of a nanosecond fraction.
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"invalid date-time {value!r}: {exc}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


DateTime = Annotated[datetime, BeforeValidator(parse_date_time)]


class Body(BaseModel):
    # Unknown fields are ignored as Jackson does under Spring's defaults; known ones must carry
    # the exact JSON type (no "3" for 3), which is what the spec promises a client may rely on.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Deployer(Body):
    name: str | None = None
    email: str | None = None


class DeployBody(Body):
    title: str
    timestamp: DateTime
    type: Literal["DEPLOY", "SCALE", "ROLLBACK", "RESTART"]
    sha: str | None = None
    environment: str | None = None
    url: str | None = None
    deployer: Deployer | None = None
    customData: dict[str, Any] | None = None


class EventBody(Body):
    title: str
    type: str
    timestamp: DateTime
    description: str | None = None
    url: str | None = None
    customData: dict[str, Any] | None = None


class SeriesPoint(Body):
    timestamp: DateTime
    value: float


class BulkPointsBody(Body):
    series: list[SeriesPoint] = Field(min_length=1, max_length=100)


class PointBody(Body):
    value: float
    timestamp: DateTime | None = None


class DataItem(Body):
    key: str = Field(min_length=1)
    value: Any
    description: str | None = None

    @field_validator("value")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("value is required (any JSON but null)")
        return value


class CustomDataBody(Body):
    values: dict[str, list[DataItem]]


class MetricDefinitionBody(Body):
    key: str
    name: str | None = None
    type: Literal["PUBLIC_API"] = "PUBLIC_API"
    valence: Literal["POSITIVE", "NEGATIVE", "NEUTRAL"] | None = None
    category: str | None = None
    description: str | None = None
    isDraft: bool = False

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: str) -> str:
        if not _METRIC_KEY.fullmatch(key):
            raise ValueError("2-255 letters, digits or hyphens, starting and ending alphanumeric")
        return key


_ModelT = TypeVar("_ModelT", bound=Body)


def validate(model: type[_ModelT], body: Any) -> _ModelT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        reasons = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"]) or "body"
            reasons.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
        raise bad_request("; ".join(reasons)) from None
