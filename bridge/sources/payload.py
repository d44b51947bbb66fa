"""Reading what an input carries: its headers and a JSON payload of unknown shape.

Adapters read payloads that nobody validated: every step may be missing or of another type.
These functions answer ``None`` then instead of raising, so a mapping states what it wants and
decides itself what a missing value means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from bridge.sources.timestamps import parse_ci_timestamp

#: Headers of an input; case-insensitive where they come from HTTP (or are made to look like it).
Headers = Mapping[str, str]


def json_body(body: bytes | str) -> Any:
    """The JSON value of a body, exactly as ``json.loads`` reads it, several times faster.

    orjson reads what it can (strict JSON in UTF-8: nearly every payload); what it refuses is
    read by ``json.loads``, which accepts more (``NaN``, a byte-order mark, UTF-16, integers
    beyond 64 bits, which orjson would read as floats: a body with 19 digits in a row goes to
    ``json.loads`` whole) and raises ``ValueError`` or ``RecursionError`` with its own message when the
    body is not JSON. So the answer, and the value read, are those of ``json.loads``.
    """
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_AS_ONES):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


#: Every byte to ``0``, digits to ``1``: 19 ones in a row after translating mean a run of 19
#: digits, perhaps an integer beyond 64 bits, which orjson reads as a float. (A C-speed test;
#: a regular expression for it costs more than decoding the body.)
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= i <= 0x39 else 0x30 for i in range(256))
_NINETEEN_DIGITS = b"1" * 19


def media_type(headers: Headers) -> str:
    """The lowercase media type of ``Content-Type`` without parameters."""
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


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
