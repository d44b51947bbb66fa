"""Fixtures: a fake apiserver with its controllers, a simulated Cortex, bridges with a kubernetes source.

Each bridge runs in-process (``Bridge.create`` + ``start``) and drives the real kubernetes_asyncio
client against the fake apiserver through a kubeconfig file, as it would against a cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator import SimulatorServer
from bridge.sources.kubernetes.source import KubernetesSource
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import SIM_TOKEN, sim_config, wait_until
from tests.support.kubernetes import COUNT_METRIC, Running, StartBridge, source_config


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    # Frequent bookmarks let tests tell when a bridge has caught up with every collection.
    async with FakeApiServer(bookmark_interval=0.1, namespaces=("default", "kube-system", "shop")) as server:
        yield server


@pytest.fixture
def cluster(apiserver: FakeApiServer) -> Cluster:
    return Cluster(apiserver)


@pytest.fixture
async def cortex() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim_config(metric_keys=["lead-time", COUNT_METRIC])) as server:
        yield server


@pytest.fixture
async def start_bridge(
    apiserver: FakeApiServer, cortex: SimulatorServer, tmp_path: Path
) -> AsyncIterator[StartBridge]:
    """``await start_bridge(db="a", **source_overrides)``: a bridge whose queue is ``<db>.db``
    (or, when ``db`` is a ``postgresql://`` DSN, that shared database)."""
    started: list[Bridge] = []
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")

    async def start(*, db: str = "queue", synced: bool = True, **overrides: Any) -> Running:
        settings = load_settings(
            None,
            cortex={"url": cortex.url, "token": SIM_TOKEN, "linger_ms": 5},
            queue=({"backend": "postgres", "postgres": {"dsn": db}} if db.startswith("postgresql://")
                   else {"path": tmp_path / f"{db}.db"}),
            retry={"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
            http={"host": "127.0.0.1", "port": 0},
            metrics={"host": "127.0.0.1", "port": 0},
            log={"level": "warning"},
            ingest={"allow_unauthenticated": True},
            sources=[source_config(kubeconfig, **overrides)],
        )
        bridge = await Bridge.create(settings)
        await bridge.start()
        started.append(bridge)
        source = bridge.sources[0]
        assert isinstance(source, KubernetesSource)
        if synced:
            await wait_until(source.synced.is_set, timeout=10)
        return Running(bridge, source)

    yield start
    for bridge in started:
        if not bridge.draining:
            await bridge.stop(deadline=2)
