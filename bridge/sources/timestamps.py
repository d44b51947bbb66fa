"""Timestamps as CI systems write them, parsed to aware UTC datetimes."""

from __future__ import annotations

import re
from datetime import datetime

from bridge.records import parse_timestamp

# "2016-08-12 15:23:28 UTC" (GitLab, Buildkite) and "2021-04-28 21:50:00 +0200" (GitLab).
_SPACED = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*(UTC|Z|[+-]\d{2}:?\d{2})?$")


def parse_ci_timestamp(value: object) -> datetime:
    """ISO-8601, epoch seconds/milliseconds, or the spaced forms above; raises ``ValueError``."""
    if isinstance(value, str):
        match = _SPACED.match(value.strip())
        if match:
            day, clock, zone = match.groups()
            if zone in (None, "UTC", "Z"):
                zone = "+00:00"
            elif ":" not in zone:
                zone = f"{zone[:3]}:{zone[3:]}"
            return parse_timestamp(f"{day}T{clock}{zone}")
        return parse_timestamp(value)
    if isinstance(value, int | float | datetime) and not isinstance(value, bool):
        return parse_timestamp(value)
    raise ValueError(f"not a timestamp: {value!r}")
