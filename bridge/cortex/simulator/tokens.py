"""Whether a bearer token has expired: Cortex tokens are JWTs, and an expired one is answered 401.

The simulator's own reading of the JWT (``exp`` claim, payload gzip-compressed when the header
says ``zip: GZIP``), independent of the bridge's, so that the two agreeing is evidence.
A token that is not a JWT never expires here (the simulator's plain test tokens).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import time


def _segment(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def expired(token: str, now: float | None = None) -> bool:
    """Whether ``token`` is a JWT whose ``exp`` has passed."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(_segment(parts[0]))
        payload = _segment(parts[1])
        if isinstance(header, dict) and str(header.get("zip", "")).upper() == "GZIP":
            payload = gzip.decompress(payload)
        claims = json.loads(payload)
    except (ValueError, binascii.Error, OSError):
        return False
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return False
    return exp <= (time.time() if now is None else now)
