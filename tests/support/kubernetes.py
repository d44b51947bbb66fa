"""The Kubernetes tests' tools: bridges with a kubernetes source against the fake apiserver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.app import Bridge
from bridge.sources.kubernetes.source import KubernetesSource
from tests.support.apiserver import FakeApiServer
from tests.support.cortex import wait_until

#: Custom metric receiving the occurrence count of each event window.
COUNT_METRIC = "k8s-warning-count"


@dataclass
class Running:
    """A started bridge and its kubernetes source."""

    bridge: Bridge
    source: KubernetesSource

    async def caught_up(self, server: FakeApiServer, timeout: float = 10.0) -> None:
        """Wait until every collection is handled up to the server's current resourceVersion and
        every record reached Cortex (or the dead-letter set)."""
        target = int(server.resource_version)

        def done() -> bool:
            positions = self.source.positions
            return (bool(positions) and all(p and int(p) >= target for p in positions.values())
                    and self.bridge.queue.depth == 0)

        await wait_until(done, timeout=timeout)


StartBridge = Callable[..., Awaitable[Running]]


def source_config(kubeconfig: Path, **overrides: Any) -> dict[str, Any]:
    """A kubernetes source as tests use it: short windows and leases, the fake cluster's names."""
    config: dict[str, Any] = {
        "name": "k8s",
        "type": "kubernetes",
        "kubeconfig": str(kubeconfig),
        "cluster": "test-cluster",
        "environment": "staging",
        "entity": {"template": "{name}"},
        "rollouts": {"sha": ["annotation:cortex.io/git-sha"]},
        "events": {"window_seconds": 30},
        "leader_election": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
