"""One permit, one request: the client never resends behind the budget's back.

aiohttp resends an idempotent request (GET, PUT, DELETE) once by itself when the connection
drops before the answer. Cortex counts both against the quota, and a write whose answer was
lost would look answered. These tests drop the connection after the server saw the request and
count what arrived, for the two idempotent methods the bridge uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.cortex.budget import TokenBucket
from bridge.cortex.client import Ambiguous, CortexClient
from bridge.cortex.endpoints import put_custom_data
from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.records import RECORD_ADAPTER, CustomDataRecord
from tests.support.cortex import SIM_TOKEN, sim_config


def client_for(url: str) -> CortexClient:
    return CortexClient(url, lambda: SIM_TOKEN, TokenBucket(1000, 50), timeout_seconds=5)


async def test_a_put_whose_answer_is_dropped_is_sent_once_and_reported_ambiguous() -> None:
    record = RECORD_ADAPTER.validate_python({"id": "r1", "provenance": {"source": "test"}, "kind": "custom_data",
                                             "entity": "checkout-service", "key": "owner", "value": "payments"})
    assert isinstance(record, CustomDataRecord)
    async with SimulatorServer(sim_config(faults=SimFaults(drop_after_commit_every=1))) as sim, \
            client_for(sim.url) as client:
        # A first answered request leaves a pooled connection: the case aiohttp would retry on.
        assert (await client.request("GET", "/api/v1/catalog", endpoint="catalog")).ok
        with pytest.raises(Ambiguous):
            await client.write(put_custom_data([record]))
        puts = [r for r in sim.store.requests if r["method"] == "PUT"]
    assert len(puts) == 1, puts


@pytest.fixture
async def dropping_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that answers its first request and closes the connection on every later one."""
    arrivals: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        arrivals.append(request.method)
        if len(arrivals) > 1 and request.transport is not None:
            request.transport.close()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", arrivals
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_an_idempotent_request_on_a_dropped_connection_arrives_once(
    dropping_server: tuple[str, list[str]], method: str
) -> None:
    url, arrivals = dropping_server
    async with client_for(url) as client:
        assert (await client.request("GET", "/warm", endpoint="warm")).ok
        with pytest.raises(Ambiguous):
            await client.request(method, "/api/v1/anything", endpoint="test", body={"a": 1})
    assert arrivals == ["GET", method]
