"""Authenticating webhook deliveries on the raw body, before anything parses it.

Two families cover every system the bridge speaks to:

* :class:`HmacScheme`: a header carries an HMAC of the raw body (GitHub ``X-Hub-Signature-256:
  sha256=<hex>``, Flux ``X-Signature``, CircleCI ``circleci-signature: v1=<hex>``, Buildkite
  ``X-Buildkite-Signature: timestamp=<t>,signature=<hex>`` over ``"<t>.<body>"``).
* :class:`TokenScheme`: a shared token in a header (GitLab ``X-Gitlab-Token``), as a bearer token,
  or as the password of HTTP Basic auth (Jenkins and Argo CD, which cannot sign).

Both have ``check_header``, run before the body is read: a token scheme is fully checked
there (401 without reading the body), an HMAC scheme checks that its header is present and
well-formed. Every scheme checks all active secrets (rotation: old and new are valid at once) and compares in
constant time. Secrets come inline or from files; files are re-read on each delivery so a rotated
Kubernetes Secret takes effect without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Algorithm = Literal["sha1", "sha256", "sha512"]


def _digest_equal(given: bytes, expected: bytes) -> bool:
    # Hashing first makes the comparison independent of both lengths, not only of the content.
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


def any_secret_matches(given: bytes, secrets: Sequence[bytes]) -> bool:
    """Constant-time membership: every secret is compared, whatever matched earlier."""
    matched = False
    for secret in secrets:
        matched |= _digest_equal(given, secret)
    return matched


def hmac_hex(secret: bytes, message: bytes, algorithm: Algorithm = "sha256") -> str:
    """Lowercase hex HMAC of ``message``: what senders put in their signature headers."""
    return hmac.new(secret, message, algorithm).hexdigest()


class HmacScheme(BaseModel):
    """Where a sender puts its HMAC signature and what it signs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field(description="Header carrying the signature, e.g. X-Hub-Signature-256.")
    algorithm: Algorithm = Field("sha256", description="Hash function of the HMAC.")
    prefix: str = Field("", description="Text before the hex digest, e.g. 'sha256='.")
    part: str | None = Field(
        None, description="For 'k=v,k=v' headers: the key whose value is the signature (e.g. v1)."
    )
    timestamp_part: str | None = Field(
        None, description="Key of a signed timestamp in the header; the HMAC then covers '<timestamp>.<body>'."
    )
    tolerance_seconds: int = Field(300, ge=1, description="Largest accepted age of a signed timestamp.")

    #: An HMAC covers the body: only the header's form can be checked before the body is read.
    needs_body: ClassVar[bool] = True

    def check_header(self, headers: Mapping[str, str], secrets: Sequence[bytes] = (),
                     now: float | None = None) -> str | None:
        """Before the body is read: ``None`` if the signature header is present and well-formed
        (a hex digest of the algorithm's length; a signed timestamp inside the window), else why not."""
        problem, _, _ = self._parse(headers, now)
        return problem

    def _parse(self, headers: Mapping[str, str], now: float | None) -> tuple[str | None, list[str], str | None]:
        # (problem, hex digests offered, signed timestamp)
        value = headers.get(self.header)
        if not value:
            return f"missing {self.header} header", [], None
        parts = _parse_parts(value) if self.part or self.timestamp_part else {}
        signatures = parts.get(self.part, []) if self.part else [value.strip()]
        stamp: str | None = None
        if self.timestamp_part:
            stamps = parts.get(self.timestamp_part, [])
            if len(stamps) != 1 or not stamps[0].isdigit():
                return f"{self.header} has no usable {self.timestamp_part}", [], None
            current = time.time() if now is None else now
            if abs(current - int(stamps[0])) > self.tolerance_seconds:
                return f"{self.header} timestamp is outside the accepted window", [], None
            stamp = stamps[0]
        if not signatures:
            return f"{self.header} has no {self.part} signature", [], None
        length = _HEX_LENGTH[self.algorithm]
        digests = [
            s[len(self.prefix):].strip().lower() for s in signatures if s.startswith(self.prefix)
        ]
        digests = [d for d in digests if len(d) == length and _HEX.issuperset(d)]  # a set test: C, not a loop per character
        if not digests:
            return f"{self.header} is not a {self.prefix}<{self.algorithm} hex digest> signature", [], None
        return None, digests, stamp

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes],
               now: float | None = None) -> str | None:
        """``None`` if the signature matches one of ``secrets``, else why it does not."""
        problem, digests, stamp = self._parse(headers, now)
        if problem is not None:
            return problem
        message = body if stamp is None else stamp.encode() + b"." + body
        expected = [hmac_hex(secret, message, self.algorithm).encode() for secret in secrets]
        matched = False
        for digest in digests:
            matched |= any_secret_matches(digest.encode(), expected)
        return None if matched else f"{self.header} does not match"


_HEX = frozenset("0123456789abcdef")
_HEX_LENGTH: dict[str, int] = {"sha1": 40, "sha256": 64, "sha512": 128}


class TokenScheme(BaseModel):
    """A shared token: raw in ``header``, or ``Bearer <token>`` / Basic auth password in Authorization."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field("Authorization", description="Header carrying the token.")

    #: A token is in the headers: the check is complete before the body is read.
    needs_body: ClassVar[bool] = False

    def check_header(self, headers: Mapping[str, str], secrets: Sequence[bytes] = (),
                     now: float | None = None) -> str | None:
        """Before the body is read: the whole check (a token does not depend on the body)."""
        return self.verify(headers, b"", secrets, now)

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes],
               now: float | None = None) -> str | None:
        """``None`` if the token equals one of ``secrets``, else why not."""
        value = headers.get(self.header)
        if not value:
            return f"missing {self.header} header"
        given = value.strip()
        if self.header.lower() == "authorization":
            scheme, _, credentials = given.partition(" ")
            if scheme.lower() == "bearer":
                given = credentials.strip()
            elif scheme.lower() == "basic":
                given = _basic_password(credentials.strip())
            else:
                return "Authorization must be Bearer or Basic"
        return None if any_secret_matches(given.encode(), secrets) else f"{self.header} does not match"


#: What a webhook adapter authenticates with.
AuthScheme = HmacScheme | TokenScheme


def _parse_parts(value: str) -> dict[str, list[str]]:
    # "t=1,v1=abc,v1=def" -> {"t": ["1"], "v1": ["abc", "def"]}; several values of a key are
    # how senders rotate their own signing secrets.
    parts: dict[str, list[str]] = {}
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts.setdefault(key.strip(), []).append(val.strip())
    return parts


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]
