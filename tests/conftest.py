"""Shared fixtures: a real Cortex simulator on loopback and in-process bridges wired to it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator.server import SimEntity, SimulatorConfig, SimulatorServer

ENTITIES = ["checkout-service", "payments-api", "inventory"]
METRIC_KEYS = ["lead-time", "deploy-duration"]
SIM_TOKEN = "sim-token"


def sim_config(**overrides: Any) -> SimulatorConfig:
    """The default simulated tenant: three services, two metric definitions."""
    base: dict[str, Any] = {
        "tokens": [SIM_TOKEN],
        "entities": [SimEntity(tag=t, git_repository=f"acme/{t}") for t in ENTITIES],
        "metric_keys": list(METRIC_KEYS),
    }
    base.update(overrides)
    return SimulatorConfig(**base)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim_config()) as server:
        yield server


BridgeFactory = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def make_bridge(tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """Build and start bridges against a simulator; all are stopped at teardown."""
    started: list[Bridge] = []

    async def factory(sim: SimulatorServer, *, queue_path: Path | None = None, **sections: Any) -> Bridge:
        # A short timeout and settle time: ambiguous deliveries are read back within seconds.
        cortex = {"url": sim.url, "token": SIM_TOKEN, "linger_ms": 5, "request_timeout_seconds": 3,
                  "reconcile_settle_seconds": 3.5, **sections.pop("cortex", {})}
        queue = {"path": queue_path or tmp_path / "queue.db", **sections.pop("queue", {})}
        retry = {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5, **sections.pop("retry", {})}
        settings = load_settings(
            None,
            cortex=cortex,
            queue=queue,
            retry=retry,
            http={"host": "127.0.0.1", "port": 0, **sections.pop("http", {})},
            metrics={"host": "127.0.0.1", "port": 0},
            log={"level": "warning"},
            # Tests post to /v1/records without a token unless they pass ingest={"token": ...}.
            ingest=sections.pop("ingest", {"allow_unauthenticated": True}),
            **sections,
        )
        bridge = await Bridge.create(settings)
        await bridge.start()
        started.append(bridge)
        return bridge

    yield factory
    for bridge in started:
        if not bridge.draining:
            await bridge.stop(deadline=2)


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0,
                     interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail the test with a clear message on timeout."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def sim_state(sim: SimulatorServer) -> dict[str, Any]:
    """What the simulated Cortex stored, read over HTTP like any client would."""
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/_sim/state") as resp:
        assert resp.status == 200
        state: dict[str, Any] = await resp.json()
        return state


async def sim_requests(sim: SimulatorServer) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/_sim/requests") as resp:
        assert resp.status == 200
        log: list[dict[str, Any]] = await resp.json()
        return log


async def post_records(bridge: Bridge, body: Any, *, headers: dict[str, str] | None = None,
                       raw: bytes | None = None) -> tuple[int, Any]:
    """POST to the bridge's native endpoint; returns (status, parsed JSON or text)."""
    url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as http, \
            http.post(url, json=None if raw is not None else body, data=raw, headers=hdrs) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, await resp.text()


def hostile_json(document: Any) -> bytes:
    """JSON as a careless or hostile producer sends it: NaN/Infinity tokens allowed, lone
    surrogates as ``\\ud800`` escapes (which every JSON parser decodes), nesting of ~1000 levels
    (the C encoder recurses per level, so it gets a little more stack than the default)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        return json.dumps(document, allow_nan=True).encode()
    finally:
        sys.setrecursionlimit(limit)
