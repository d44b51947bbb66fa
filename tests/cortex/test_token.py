"""Reading the Cortex token's expiry offline, including Cortex's gzip-compressed payloads."""

from __future__ import annotations

import base64
import gzip
import json

from bridge.cortex.token import jwt_claims, token_expiry


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(header: dict[str, object], payload: bytes) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(payload)}.c2lnbmF0dXJl"


def test_plain_jwt_expiry() -> None:
    token = _jwt({"alg": "HS256"}, json.dumps({"sub": "tenant", "exp": 1_900_000_000}).encode())
    assert token_expiry(token) == 1_900_000_000


def test_gzip_payload_as_cortex_whoami_reads_it() -> None:
    token = _jwt({"alg": "HS512", "zip": "GZIP"}, gzip.compress(json.dumps({"exp": 1_800_000_000}).encode()))
    assert token_expiry(token) == 1_800_000_000


def test_opaque_or_broken_tokens_have_no_expiry() -> None:
    assert token_expiry("not-a-jwt") is None
    assert jwt_claims("a.b.c") is None
    assert token_expiry(_jwt({"alg": "none"}, b'{"sub": "x"}')) is None
