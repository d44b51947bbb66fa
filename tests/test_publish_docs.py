"""``cortex-bridge publish-docs`` end to end: the command in its own process, as a CI job runs it,
posting to a running bridge that delivers to the simulator.

The spec is checked before anything is sent (a bad one fails with the reason, even with no bridge
to reach); the bridge's ingest token comes from the environment or a file and never shows; a
bridge that cannot take the spec yet (503, a dropped connection) is retried under the same
``Idempotency-Key``; publishing A, then B, then A again leaves A in Cortex.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import BridgeFactory, sim_requests, sim_state, wait_until
from tests.support.paths import FIXTURES

TOKEN = "ingest-s3cret-never-shown"
SPEC_A = FIXTURES / "cortex" / "openapi.json"
SPEC_B = FIXTURES / "cortex" / "openapi-2025-10.json"


async def publish(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cortex-bridge publish-docs ARGS`` in its own process, with only ``env`` of the bridge's variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_BRIDGE_")}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bridge.cli", "publish-docs", *args],
        capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def bridge_env(port: int, token: str = TOKEN) -> dict[str, str]:
    return {"CORTEX_BRIDGE_URL": f"http://127.0.0.1:{port}", "CORTEX_BRIDGE_TOKEN": token}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def stored_docs(sim: SimulatorServer, entity: str) -> Any:
    return (await sim_state(sim))["docs"].get(entity)


async def docs_are(sim: SimulatorServer, entity: str, expected: Any) -> bool:
    return bool(await stored_docs(sim, entity) == expected)


async def test_a_yaml_spec_is_published_and_reaches_cortex_as_json(sim: SimulatorServer, make_bridge: BridgeFactory,
                                                                   tmp_path: Path) -> None:
    bridge = await make_bridge(sim, ingest={"token": TOKEN})
    document = json.loads(SPEC_A.read_text())
    spec = tmp_path / "openapi.yaml"
    spec.write_text(yaml.safe_dump(document, sort_keys=False))
    result = await publish("--entity", "payments-api", str(spec), env=bridge_env(bridge.ingest_port))
    assert result.returncode == 0, result.stderr
    assert "published docs for payments-api: stored as record" in result.stdout
    await wait_until(lambda: docs_are(sim, "payments-api", document))
    assert TOKEN not in result.stdout + result.stderr


async def test_publishing_a_then_b_then_a_leaves_a_in_cortex(sim: SimulatorServer, make_bridge: BridgeFactory,
                                                             tmp_path: Path) -> None:
    bridge = await make_bridge(sim, ingest={"token_file": str(_token_file(tmp_path))})
    env = {"CORTEX_BRIDGE_URL": f"http://127.0.0.1:{bridge.ingest_port}/"}
    for spec in (SPEC_A, SPEC_B, SPEC_A):
        result = await publish("--entity", "inventory", "--token-file", str(_token_file(tmp_path)), str(spec), env=env)
        assert result.returncode == 0, result.stderr
        # each waits for the previous to be delivered: the three are separate publications
        expected = json.loads(spec.read_text())
        await wait_until(lambda: docs_are(sim, "inventory", expected))  # noqa: B023 (awaited in the loop)
    puts = [r for r in await sim_requests(sim) if r["method"] == "PUT" and r["path"].endswith("/documentation/openapi")]
    assert len(puts) == 3


@pytest.mark.parametrize(("content", "reason"), [
    (json.dumps({"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {}}), "OpenAPI 3"),
    ("openapi: 3.0.0\ninfo: [unclosed", "spec"),
    (json.dumps({"openapi": "3.1.0", "paths": {}}), "info"),
    ("\udcff", "UTF-8"),
])
async def test_a_bad_spec_fails_before_anything_is_sent(tmp_path: Path, content: str, reason: str) -> None:
    spec = tmp_path / "spec"
    spec.write_bytes(content.encode(errors="surrogateescape"))
    # Nothing listens on this port: the refusal must come from the local check, not from a bridge.
    result = await publish("--entity", "svc", str(spec), env=bridge_env(free_port()))
    assert result.returncode == 2
    assert "cortex-bridge: error:" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_wrong_token_is_refused_and_never_shown(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim, ingest={"token": TOKEN})
    result = await publish("--entity", "inventory", str(SPEC_A), env=bridge_env(bridge.ingest_port, "wrong-t0ken"))
    assert result.returncode == 1
    assert "refused the ingest token (401)" in result.stderr
    assert "wrong-t0ken" not in result.stdout + result.stderr
    assert await stored_docs(sim, "inventory") is None


@pytest.mark.parametrize("argv", [
    ["--entity", "svc", str(SPEC_A)],  # no URL anywhere
    ["--entity", "svc", "--url", "ftp://bridge", str(SPEC_A)],
    ["--entity", "svc", "--url", "http://127.0.0.1:9", "/does/not/exist.yaml"],
    ["--entity", "svc", "--url", "http://127.0.0.1:9", "--token-file", "/does/not/exist", str(SPEC_A)],
])
async def test_usage_errors_are_one_line_and_exit_2(argv: list[str]) -> None:
    result = await publish(*argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cortex-bridge: error:") and "Traceback" not in result.stderr


class FlakyBridge:
    """An HTTP server in front of nothing: drops the first connection, answers 503 to the second,
    202 after; records each request's ``Idempotency-Key``."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("Idempotency-Key"))
        self.bodies.append(await request.json())
        if len(self.keys) == 1:
            assert request.transport is not None
            request.transport.close()  # the answer is lost
            return web.Response(status=202)
        if len(self.keys) == 2:
            return web.json_response({"error": "queue cannot store input right now"}, status=503,
                                     headers={"Retry-After": "1"})
        return web.json_response({"accepted": 1, "ids": ["r1"]}, status=202)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyBridge, int]]:
    server = FlakyBridge()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/records", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, port
    await runner.cleanup()


async def test_lost_answers_and_503_are_retried_under_one_idempotency_key(flaky: tuple[FlakyBridge, int]) -> None:
    server, port = flaky
    result = await publish("--entity", "svc", str(SPEC_B), env=bridge_env(port))
    assert result.returncode == 0, result.stderr
    assert len(server.keys) == 3 and server.keys[0] is not None and len(set(server.keys)) == 1
    assert server.bodies[0] == server.bodies[2]
    assert server.bodies[0]["kind"] == "docs" and json.loads(server.bodies[0]["spec"]) == json.loads(SPEC_B.read_text())
    assert "retrying in 1 s" in result.stderr


async def test_a_bridge_that_never_answers_fails_after_the_timeout() -> None:
    result = await publish("--entity", "svc", "--timeout", "2", str(SPEC_A), env=bridge_env(free_port()))
    assert result.returncode == 1
    assert "did not take the spec within 2 s" in result.stderr and "cannot reach the bridge" in result.stderr


def _token_file(directory: Path) -> Path:
    path = directory / "ingest-token"
    if not path.exists():
        path.write_text(TOKEN + "\n")
    return path
