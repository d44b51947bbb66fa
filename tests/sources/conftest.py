"""Webhook test fixtures: a simulated Cortex and bridges with webhook sources.

Every test talks HTTP to a bridge started in-process (``Bridge.create`` + ``start``) whose Cortex
is the simulator, and reads what Cortex ended up with from the simulator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import Settings, load_settings
from bridge.cortex.simulator import SimEntity, SimulatorConfig, SimulatorServer
from bridge.queue import DurableQueue
from bridge.sources.base import SourceContext
from tests.support.webhooks import ENTITIES, METRIC_KEYS, SIM_TOKEN, Running, StartBridge


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[SourceContext]:
    """What a source is built with: default settings (unauthenticated ingest) and a SQLite queue."""
    queue = await DurableQueue.open(tmp_path / "q.db")
    yield SourceContext(settings=load_settings(None, queue={"path": str(tmp_path / "q.db")},
                                               ingest={"allow_unauthenticated": True}), queue=queue)
    await queue.close()


@pytest.fixture
async def cortex() -> AsyncIterator[SimulatorServer]:
    """The simulated Cortex tenant."""
    config = SimulatorConfig(
        tokens=[SIM_TOKEN],
        entities=[SimEntity(tag=tag, git_repository=repo) for tag, repo in ENTITIES.items()],
        metric_keys=METRIC_KEYS,
    )
    async with SimulatorServer(config) as server:
        yield server


@pytest.fixture
async def start_bridge(cortex: SimulatorServer, tmp_path: Path) -> AsyncIterator[StartBridge]:
    """``await start_bridge(source, ...)``: a bridge with these sources, stopped at teardown."""
    started: list[Bridge] = []

    async def start(*sources: dict[str, Any], ingest: dict[str, Any] | None = None, **http: Any) -> Running:
        settings = load_settings(
            None,
            cortex={"url": cortex.url, "token": SIM_TOKEN, "linger_ms": 5},
            queue={"path": tmp_path / f"q{len(started)}.db"},
            retry={"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
            http={"host": "127.0.0.1", "port": 0, **http},
            metrics={"host": "127.0.0.1", "port": 0},
            log={"level": "warning"},
            ingest=ingest or {"allow_unauthenticated": True},
            sources=list(sources),
        )
        return await _launch(settings, cortex, started)

    yield start
    for bridge in started:
        await bridge.stop(deadline=2)


@pytest.fixture(params=["sqlite", "postgres"])
def queue_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The queue of a test's bridges, on each backend."""
    if request.param == "sqlite":
        return {"path": tmp_path / "queue.db"}
    return {"backend": "postgres", "postgres": {"dsn": request.getfixturevalue("pg_dsn")}}


#: ``await start_on_queue(sources, deploys)``: a bridge on the test's one queue (a restart is a
#: stop and another start).
StartOnQueue = Callable[[list[dict[str, Any]], dict[str, Any]], Awaitable[Running]]


@pytest.fixture
async def start_on_queue(cortex: SimulatorServer, queue_settings: dict[str, Any]) -> AsyncIterator[StartOnQueue]:
    """Bridges on one queue with fast retries and reconciliation; all are stopped at teardown."""
    started: list[Bridge] = []

    async def start(sources: list[dict[str, Any]], deploys: dict[str, Any]) -> Running:
        settings = load_settings(
            None, cortex={"url": cortex.url, "token": SIM_TOKEN, "linger_ms": 5, "request_timeout_seconds": 2,
                          "reconcile_settle_seconds": 2.5},
            queue=queue_settings, retry={"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
            http={"host": "127.0.0.1", "port": 0}, metrics={"host": "127.0.0.1", "port": 0},
            log={"level": "warning"}, ingest={"allow_unauthenticated": True}, deploys=deploys, sources=sources)
        return await _launch(settings, cortex, started)

    yield start
    for bridge in started:
        await bridge.stop(deadline=2)


async def _launch(settings: Settings, cortex: SimulatorServer, started: list[Bridge]) -> Running:
    """A started bridge, remembered in ``started`` so the fixture stops it."""
    bridge = await Bridge.create(settings)
    await bridge.start()
    started.append(bridge)
    return Running(bridge, cortex)
