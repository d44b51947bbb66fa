"""``cortex-bridge publish-docs --entity TAG FILE``: a CI job hands an entity's OpenAPI spec to the bridge.

The spec goes to the bridge's ``POST /v1/records``, never to Cortex, so the quota, the retries and
"only the newest spec per entity is sent" stay in one place. It is checked here first with the
validation the bridge applies at its door, so a bad spec fails the CI job with the reason and
sends nothing. One run uses one ``Idempotency-Key``: its retries (429, 502-504, a dropped
connection, a timeout) reuse it, and the bridge stores the spec once however often it was resent.

Where the bridge is and its ingest token come from the environment a CI job already has secrets
in (``CORTEX_BRIDGE_URL``, ``CORTEX_BRIDGE_TOKEN``) or from options; a token is never an option
value (it would show in the process list and in CI logs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.queue_commands import CliError
from bridge.records import DocsRecord, UnstorableRecord, encode_record
from bridge.sources.native import RecordErrors, parse_native

URL_ENV = "CORTEX_BRIDGE_URL"
TOKEN_ENV = "CORTEX_BRIDGE_TOKEN"
TOKEN_FILE_ENV = "CORTEX_BRIDGE_TOKEN_FILE"

#: Answers after which the same request may succeed later: the bridge asked to wait or a proxy failed.
_RETRYABLE = frozenset({408, 429, 502, 503, 504})
_MAX_PAUSE = 30.0


@dataclass(frozen=True)
class Answer:
    """One HTTP answer from the bridge (``status`` 0: no answer, ``reason`` says why)."""

    status: int
    body: Any
    reason: str
    retry_after: float | None = None


def cmd_publish_docs(args: argparse.Namespace) -> int:
    """Validate the spec, post it to the bridge (retrying what may succeed later), say what happened."""
    url = records_url(args.url or os.environ.get(URL_ENV, ""))
    token = read_token(args.token_file or os.environ.get(TOKEN_FILE_ENV))
    spec = validated_spec(args.entity, read_spec(args.file))
    body = json.dumps({"kind": "docs", "entity": args.entity, "spec": spec}).encode()
    key = args.idempotency_key or f"publish-docs-{uuid.uuid4()}"
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    answer = post_until_answered(url, body, headers, timeout=args.timeout)
    if 200 <= answer.status < 300:
        ids = answer.body.get("ids", []) if isinstance(answer.body, dict) else []
        repeat = " (already stored by an earlier try)" if isinstance(answer.body, dict) and \
            answer.body.get("duplicate_delivery") else ""
        print(f"published docs for {args.entity}: stored as record {', '.join(ids) or '-'}{repeat}; "
              "the bridge sends the newest spec of each entity to Cortex")
        return 0
    if answer.status == 401:
        raise CliError(f"the bridge refused the ingest token (401): set ${TOKEN_ENV} or --token-file")
    if answer.status == 0:
        raise CliError(f"the bridge did not take the spec within {args.timeout:g} s: {answer.reason}")
    raise CliError(f"the bridge refused the spec ({answer.status}): {answer.reason}")


def records_url(base: str) -> str:
    """``…/v1/records`` of the bridge at ``base``; a usage error for anything but an http(s) URL."""
    base = base.strip()
    if not base:
        raise CliError(f"where is the bridge? pass --url or set ${URL_ENV}", 2)
    if not base.startswith(("http://", "https://")):
        raise CliError(f"--url must be an http:// or https:// URL, not {base[:100]!r}", 2)
    base = base.rstrip("/")
    return base if base.endswith("/v1/records") else f"{base}/v1/records"


def read_token(path: str | None) -> str | None:
    """The ingest token: the first line of ``path`` when given, else ``$CORTEX_BRIDGE_TOKEN``."""
    if path:
        try:
            lines = Path(path).read_text().split()
        except OSError as exc:
            raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}", 2) from None
        if not lines:
            raise CliError(f"the token file {path} is empty", 2)
        return lines[0]
    return os.environ.get(TOKEN_ENV, "").strip() or None


def read_spec(file: str) -> bytes:
    """The spec file's bytes (``-``: standard input)."""
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}", 2) from None


def validated_spec(entity: str, raw: bytes) -> str:
    """The spec as the bridge stores it (compact JSON), checked by the code the bridge's door runs."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError("the spec is not UTF-8 text", 2) from None
    try:
        (record,) = parse_native({"kind": "docs", "entity": entity, "spec": text}, source="publish-docs")
        encode_record(record)
    except RecordErrors as exc:
        problems = "; ".join(p for error in exc.errors for p in error["errors"])
        raise CliError(f"not published: {problems}", 2) from None
    except UnstorableRecord as exc:
        raise CliError(f"not published: {exc}", 2) from None
    assert isinstance(record, DocsRecord)
    return record.spec


def post_until_answered(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST until a final answer (2xx or a refusal) or until ``timeout`` seconds passed."""
    deadline = time.monotonic() + max(timeout, 0.0)
    pause = 1.0
    while True:
        remaining = deadline - time.monotonic()
        answer = post_once(url, body, headers, timeout=max(min(remaining, 30.0), 1.0))
        if answer.status and answer.status not in _RETRYABLE:
            return answer
        wait = min(answer.retry_after if answer.retry_after is not None else pause, _MAX_PAUSE)
        if time.monotonic() + wait > deadline:
            return Answer(0, None, answer.reason if answer.status == 0 else f"last answer {answer.status}: "
                          f"{answer.reason}")
        print(f"cortex-bridge: {answer.reason}; retrying in {wait:g} s", file=sys.stderr)
        time.sleep(wait)
        pause = min(pause * 2, _MAX_PAUSE)


def post_once(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """One POST; a network failure is an :class:`Answer` with status 0."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) checked)
            return _answer(response.status, response.read(), None)
    except urllib.error.HTTPError as exc:
        return _answer(exc.code, exc.read(), exc.headers.get("Retry-After"))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Answer(0, None, f"cannot reach the bridge at {url}: {reason}")


def _answer(status: int, raw: bytes, retry_after: str | None) -> Answer:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")[:300]
    reason = body.get("error", "") if isinstance(body, dict) else str(body)
    if isinstance(body, dict) and body.get("errors"):
        reason = f"{reason}: {json.dumps(body['errors'])[:1000]}"
    try:
        wait = float(retry_after) if retry_after is not None else None
    except ValueError:
        wait = None
    return Answer(status, body, reason or f"HTTP {status}", wait)
