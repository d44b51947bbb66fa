"""Read a Cortex token's expiry offline, as ``cortex whoami`` does (docs/cortex-api.md)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT without verifying it (None when it is not a JWT we can read).

    Cortex may gzip the payload and say so with ``zip: GZIP`` in the header.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(_b64(parts[0]))
        payload = _b64(parts[1])
        if str(header.get("zip", "")).upper() in ("GZIP", "GZ"):
            payload = gzip.decompress(payload)
        claims = json.loads(payload)
    except (ValueError, OSError, AttributeError):
        return None
    return claims if isinstance(claims, dict) else None


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim as a Unix time, if the token carries one."""
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) else None
