"""Shared fixtures: a real Cortex simulator on loopback and in-process bridges wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import SIM_TOKEN, BridgeFactory, sim_config
from tests.support.postgres import PostgresCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the session (from the pgserver wheel)."""
    cluster = PostgresCluster.in_temporary_directory()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_dsn(pg_cluster: PostgresCluster) -> str:
    """The DSN of a fresh, empty database on the session's cluster."""
    return pg_cluster.create_database()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim_config()) as server:
        yield server


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
