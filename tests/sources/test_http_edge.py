"""The ingest port's edge against clients that misbehave on purpose (issues 7 and 8).

Real sockets against a started bridge: request heads sent byte by byte, bodies that stall,
clients that vanish mid-body, many large unsigned posts at once. Every wait has a generous
upper bound: what is asserted is that the server closes or answers, not how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import metrics
from bridge.sources.signatures import HmacScheme, TokenScheme, hmac_hex
from tests.support.webhooks import SECRET, StartBridge, github_signature

GITHUB = {"name": "github", "type": "github", "secrets": [SECRET]}
GITLAB = {"name": "gitlab", "type": "gitlab", "secrets": [SECRET]}
JENKINS = {"name": "jenkins", "type": "jenkins", "secrets": [SECRET]}
INGEST_TOKEN = "ingest-token-1"

#: Generous: the bounds under test are 1-2 s; before the fix these connections stayed open.
CLOSED_WITHIN = 20.0


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_or_answered(reader: asyncio.StreamReader, within: float = CLOSED_WITHIN) -> bytes:
    """Everything the server sent until it closed the connection (fails if it never does)."""
    data = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def head_answer(reader: asyncio.StreamReader, within: float = 10.0) -> tuple[int, dict[str, str]]:
    """Status and headers of the server's answer, read without sending anything more."""
    async with asyncio.timeout(within):
        raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def request_head(path: str, headers: dict[str, str], length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bridge", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- 7: time limits -------------------------------------------------------------------------------


async def test_a_request_head_sent_byte_by_byte_is_cut_off(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, header_timeout_seconds=1.0)
    reader, writer = await connect(running.bridge.ingest_port)
    head = request_head("/webhooks/github", {"X-Padding": "p" * 400}, length=2)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in head:  # 0.1 s a byte: ~50 s for the whole head, unless the server closes
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        answer = await closed_or_answered(reader)
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < CLOSED_WITHIN


async def test_a_connection_that_sends_nothing_is_closed(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, header_timeout_seconds=1.0)
    reader, writer = await connect(running.bridge.ingest_port)
    try:
        assert (await closed_or_answered(reader)).startswith(b"HTTP/1.1 408")
    finally:
        writer.close()


async def test_a_slow_head_on_a_kept_alive_connection_is_cut_off(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, ingest={"token": INGEST_TOKEN}, header_timeout_seconds=1.0)
    reader, writer = await connect(running.bridge.ingest_port)
    try:
        # A complete request first: the connection stays open (HTTP/1.1 keep-alive).
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
        status, headers = await head_answer(reader)
        assert status == 200 and headers.get("connection", "keep-alive").lower() != "close"
        await reader.readexactly(int(headers["content-length"]))
        # Then the next head, one byte every 0.2 s (~15 s for all of it).
        answer = b""
        for byte in b"POST /v1/records HTTP/1.1\r\nHost: bridge\r\nX-Slow: 1234567890123456789\r\n":
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(65536), 0.2)
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        writer.close()


async def test_a_stalled_body_is_answered_408_and_closed(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITLAB, ingest={"token": INGEST_TOKEN}, body_timeout_seconds=1.0)
    for path, headers in (("/v1/records", {"Authorization": f"Bearer {INGEST_TOKEN}"}),
                          ("/webhooks/gitlab", {"X-Gitlab-Token": SECRET})):
        reader, writer = await connect(running.bridge.ingest_port)
        try:
            writer.write(request_head(path, headers, length=10_000) + b'{"records": [')  # and nothing more
            await writer.drain()
            # Closed right after the answer: not held for aiohttp's 10 s lingering read.
            answer = await closed_or_answered(reader, within=6.0)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), (path, answer)
        assert b"not received within 1 s" in answer


async def test_normal_requests_pass_the_edge(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, header_timeout_seconds=1.0, body_timeout_seconds=1.0)
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    status, answer = await running.post("github", body, {"X-GitHub-Event": "ping",
                                                         "X-Hub-Signature-256": github_signature(body)})
    assert status == 202 and "ping" in answer["ignored"]


async def test_a_client_that_aborts_mid_body_is_one_line_without_traceback(
        start_bridge: StartBridge, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    running = await start_bridge(GITLAB)
    aborts = metrics.sample("cortex_bridge_http_client_aborts_total")
    with structlog.testing.capture_logs() as events:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", running.bridge.ingest_port))
            sock.sendall(request_head("/webhooks/gitlab", {"X-Gitlab-Token": SECRET}, length=100_000) + b"{" * 1000)
            await asyncio.sleep(0.2)  # the handler is reading the body
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST mid-body
        end = time.monotonic() + CLOSED_WITHIN
        while metrics.sample("cortex_bridge_http_client_aborts_total") < aborts + 3 and time.monotonic() < end:
            await asyncio.sleep(0.05)
    assert metrics.sample("cortex_bridge_http_client_aborts_total") == aborts + 3
    lines = [e for e in events if e["event"] == "http_client_disconnected"]
    assert len(lines) == 3 and all("exc_info" not in e for e in lines)
    assert not [r for r in caplog.records if r.exc_info or "Error handling request" in r.getMessage()]
    assert "Traceback" not in capsys.readouterr().out + caplog.text


# -- 8: memory before authentication ------------------------------------------------------------


async def test_missing_or_wrong_header_credentials_are_refused_before_the_body(start_bridge: StartBridge) -> None:
    """The server answers 401 while the client has sent only the head of a 4 MB post."""
    running = await start_bridge(GITHUB, GITLAB, JENKINS, ingest={"token": INGEST_TOKEN})
    cases = [
        ("/v1/records", {}),
        ("/v1/records", {"Authorization": "Bearer wrong"}),
        ("/webhooks/gitlab", {}),
        ("/webhooks/gitlab", {"X-Gitlab-Token": "wrong"}),
        ("/webhooks/jenkins", {"Authorization": "Basic YnJpZGdlOndyb25n"}),
        ("/webhooks/github", {"X-GitHub-Event": "push"}),  # no signature at all
        ("/webhooks/github", {"X-Hub-Signature-256": "sha256=not-hex"}),  # malformed
    ]
    for path, headers in cases:
        reader, writer = await connect(running.bridge.ingest_port)
        try:
            writer.write(request_head(path, headers, length=4 * 1024 * 1024))
            await writer.drain()
            status, _ = await head_answer(reader)
        finally:
            writer.close()
        assert status == 401, (path, headers, status)
    assert running.bridge.body_budget.peak == 0, "a refused request held body bytes"


async def test_concurrent_large_unauthenticated_bodies_are_bounded(start_bridge: StartBridge) -> None:
    """HMAC-signed posts must be read before they can be checked: together they stay in the budget."""
    limit, size = 1024 * 1024, 400 * 1024
    running = await start_bridge(GITHUB, unauthenticated_body_bytes=limit, max_body_bytes=512 * 1024)
    bogus = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}  # well-formed, wrong
    opened = []
    try:
        for _ in range(12):
            reader, writer = await connect(running.bridge.ingest_port)
            writer.write(request_head("/webhooks/github", bogus, length=size) + b"x" * 65536)  # then stall
            await writer.drain()
            opened.append((reader, writer))
        answers = []
        for reader, _writer in opened:
            with contextlib.suppress(TimeoutError):
                answers.append(await head_answer(reader, within=3.0))
        refused = [h for status, h in answers if status == 503]
        # Two bodies of 400 KiB fit in 1 MiB; the other ten are refused without being read.
        assert len(refused) == 10 and all(h["retry-after"] == "5" for h in refused)
        assert running.bridge.body_budget.held <= limit
        assert metrics.sample("cortex_bridge_http_unauthenticated_body_bytes") <= limit
    finally:
        for _reader, writer in opened:
            writer.close()
    assert running.bridge.body_budget.peak <= limit
    end = time.monotonic() + CLOSED_WITHIN
    while running.bridge.body_budget.held and time.monotonic() < end:
        await asyncio.sleep(0.05)
    assert running.bridge.body_budget.held == 0, "bytes of finished requests were not given back"


async def test_a_chunked_body_past_the_limit_is_413_without_reading_it_all(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, max_body_bytes=64 * 1024)
    head = request_head("/webhooks/github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64,
                                            "Transfer-Encoding": "chunked"})
    reader, writer = await connect(running.bridge.ingest_port)
    try:
        writer.write(head)
        chunk = b"x" * 16384
        for _ in range(8):  # 128 KiB, twice the limit
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        status, _ = await head_answer(reader)
    finally:
        writer.close()
    assert status == 413
    assert running.bridge.body_budget.peak <= 64 * 1024 + 16384


# -- 9/10b: the ingest token ---------------------------------------------------------------------


async def test_ingest_token_file_is_reread_on_change(start_bridge: StartBridge, tmp_path: Any) -> None:
    token_file = tmp_path / "ingest-token"
    token_file.write_text("first-token\n")
    running = await start_bridge(ingest={"token_file": str(token_file)})
    import aiohttp

    url = f"http://127.0.0.1:{running.bridge.ingest_port}/v1/records"
    record = {"kind": "event", "entity": "hello-world", "type": "HELLO", "title": "hi",
              "timestamp": "2026-01-01T00:00:00Z"}

    async def post(token: str) -> int:
        async with aiohttp.ClientSession() as http, http.post(
                url, json=record, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status

    assert await post("first-token") == 202
    token_file.write_text("second-token\n")  # a rotated Kubernetes Secret
    assert await post("first-token") == 401
    assert await post("second-token") == 202


async def test_every_unauthenticated_input_is_warned_about_at_start(start_bridge: StartBridge) -> None:
    with structlog.testing.capture_logs() as events:
        await start_bridge({"name": "open-hook", "type": "gitlab", "allow_unauthenticated": True}, GITHUB,
                           ingest={"allow_unauthenticated": True})
    warned = sorted(e["input"] for e in events if e["event"] == "unauthenticated_input")
    assert warned == ["POST /v1/records", "POST /webhooks/open-hook"]
    assert all(e["log_level"] == "warning" for e in events if e["event"] == "unauthenticated_input")
    with structlog.testing.capture_logs() as events:
        await start_bridge(GITHUB, ingest={"token": INGEST_TOKEN})
    assert not [e for e in events if e["event"] == "unauthenticated_input"]


# -- signature headers: checked early, never wrongly ------------------------------------------


SCHEMES = [
    HmacScheme(header="X-Hub-Signature-256", prefix="sha256="),
    HmacScheme(header="circleci-signature", part="v1"),
    HmacScheme(header="X-Buildkite-Signature", part="signature", timestamp_part="timestamp"),
    HmacScheme(header="X-Sig", algorithm="sha1", prefix="sha1="),
    HmacScheme(header="X-Sig", algorithm="sha512"),
]


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), value=st.text(max_size=300), body=st.binary(max_size=200))
def test_an_early_refusal_is_never_a_signature_that_would_match(scheme: HmacScheme, value: str, body: bytes) -> None:
    """For any header an attacker sends: refused early implies refused late; nothing raises."""
    headers = {scheme.header: value}
    early = scheme.check_header(headers)
    late = scheme.verify(headers, body, [SECRET.encode()])
    if early is not None:
        assert late is not None


@settings(max_examples=100, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), body=st.binary(max_size=500), secret=st.binary(min_size=1, max_size=40))
def test_a_valid_signature_passes_the_early_check(scheme: HmacScheme, body: bytes, secret: bytes) -> None:
    now = int(time.time())
    message = f"{now}.".encode() + body if scheme.timestamp_part else body
    digest = hmac_hex(secret, message, scheme.algorithm)
    if scheme.timestamp_part:
        value = f"{scheme.timestamp_part}={now},{scheme.part}={digest}"
    elif scheme.part:
        value = f"{scheme.part}={digest}"
    else:
        value = scheme.prefix + digest
    headers = {scheme.header: value}
    assert scheme.check_header(headers) is None
    assert scheme.verify(headers, body, [secret]) is None


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200))
def test_a_token_is_checked_completely_from_the_headers(value: str) -> None:
    scheme = TokenScheme(header="Authorization")
    headers = {"Authorization": value}
    assert scheme.check_header(headers, [SECRET.encode()]) == scheme.verify(headers, b"body", [SECRET.encode()])
