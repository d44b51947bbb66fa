"""Kubernetes rollouts of images whose commit the bridge learned: the deploy carries the sha.

Learned from a workload's OCI ``org.opencontainers.image.revision`` annotation (written with the
source's records), or from a GitHub ``registry_package`` delivery (the real payload) before a
restart of the bridge on the same queue file.
"""

from __future__ import annotations

from typing import Any

from bridge.cortex.simulator import SimulatorServer
from bridge.sources.base import SourceContext
from bridge.sources.lineage import OCI_REVISION
from bridge.sources.pipeline import Ignored
from bridge.sources.webhooks.github import GitHubAdapter, GitHubSettings
from bridge.sources.webhooks.source import header_map
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import sim_state
from tests.support.kubernetes import StartBridge
from tests.support.webhooks import fixture_bytes

PACKAGE_SHA = "6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
PACKAGE_IMAGE = "ghcr.io/codertocat/hello-world@sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"


async def deploys(cortex: SimulatorServer, entity: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await sim_state(cortex))["deploys"].get(entity, [])
    return found


async def test_an_oci_revision_annotation_teaches_the_image_to_other_workloads(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/shop:2.0",
                              annotations={OCI_REVISION: "abcdef1234567"})
    cluster.create_deployment("payments-api", image="registry.example/pay:1.0")
    running = await start_bridge()
    await running.caught_up(apiserver)  # both are baselines: the annotation is learned all the same
    cluster.set_image("payments-api", "registry.example/shop:2.0")
    await running.caught_up(apiserver)
    [deploy] = await deploys(cortex, "payments-api")
    assert deploy["sha"] == "abcdef1234567"
    assert deploy["customData"]["images"] == {"app": "registry.example/shop:2.0"}


async def test_an_unknown_image_rolls_out_without_a_sha(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("payments-api", image="registry.example/pay:1.0")
    running = await start_bridge()
    await running.caught_up(apiserver)
    cluster.set_image("payments-api", "registry.example/pay:1.1")
    await running.caught_up(apiserver)
    [deploy] = await deploys(cortex, "payments-api")
    assert "sha" not in deploy and deploy["customData"]["images"] == {"app": "registry.example/pay:1.1"}


async def test_lineage_from_a_registry_package_is_applied_after_a_restart(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="ghcr.io/codertocat/hello-world:old")
    first = await start_bridge(db="shared")
    await first.caught_up(apiserver)
    # The GitHub source's pipeline on this bridge's queue, fed the real registry_package delivery.
    adapter = GitHubAdapter(GitHubSettings(name="github", type="github", allow_unauthenticated=True))
    pipeline = adapter.pipeline(SourceContext(settings=first.bridge.settings, queue=first.bridge.queue))
    outcome = await pipeline.run(header_map([("X-GitHub-Event", "registry_package"),
                                             ("Content-Type", "application/json")]),
                                 fixture_bytes("github/registry_package.published.docker.json"))
    assert outcome == Ignored("lineage: registry_package published")
    await first.bridge.stop(deadline=2)

    second = await start_bridge(db="shared")
    await second.caught_up(apiserver)
    cluster.set_image("checkout-service", PACKAGE_IMAGE)
    await second.caught_up(apiserver)
    [deploy] = await deploys(cortex, "checkout-service")
    assert deploy["sha"] == PACKAGE_SHA
    assert deploy["customData"]["images"] == {"app": PACKAGE_IMAGE}
