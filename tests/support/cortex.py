"""Test support for every test that talks to the Cortex simulator: the simulated tenant, reading
what it stored, waiting for a condition, posting native records, hostile JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bridge.app import Bridge
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer

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


BridgeFactory = Callable[..., Awaitable[Bridge]]


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


def busiest_window(times: list[float], window: float) -> int:
    """Most requests that arrived within any ``window`` seconds (of the simulator's request log)."""
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


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
