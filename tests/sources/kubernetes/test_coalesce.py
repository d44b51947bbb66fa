"""A GitHub deployment_status and a Kubernetes rollout of the same change are one Cortex deploy.

The rollout knows only its image; the bridge learned the image's commit from GitHub's real
``registry_package`` delivery (lineage), so the rollout carries the sha and coalesces with the
CI report of that sha: one POST, the second report a PUT by uuid, both sources listed. The
rollout runs in the fake apiserver; the GitHub deliveries (real payloads: the deployment_status
carries the package's commit and a current time, as a deploy of that build would) go through
the GitHub source's pipeline on the same queue, in either order.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.cortex.simulator import SimulatorServer
from bridge.sources.base import SourceContext
from bridge.sources.pipeline import Ignored, InputPipeline, Mapped
from bridge.sources.webhooks.github import GitHubAdapter, GitHubSettings
from bridge.sources.webhooks.source import header_map
from tests.sources.kubernetes.test_lineage import PACKAGE_IMAGE, PACKAGE_SHA
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import sim_requests, sim_state
from tests.support.kubernetes import Running, StartBridge
from tests.support.webhooks import fixture_bytes

ENTITY = "checkout-service"


def github(running: Running) -> InputPipeline:
    settings = GitHubSettings(name="github", type="github", allow_unauthenticated=True,
                              entity={"static": {"codertocat/hello-world": ENTITY}, "lookup": False})
    return GitHubAdapter(settings).pipeline(SourceContext(settings=running.bridge.settings,
                                                          queue=running.bridge.queue))


async def teach_lineage(running: Running) -> None:
    outcome = await github(running).run(header_map([("X-GitHub-Event", "registry_package"),
                                                    ("Content-Type", "application/json")]),
                                        fixture_bytes("github/registry_package.published.docker.json"))
    assert outcome == Ignored("lineage: registry_package published")


async def report_github(running: Running) -> None:
    payload: dict[str, Any] = json.loads(fixture_bytes("github/deployment_status.success.json"))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload["deployment"]["sha"] = PACKAGE_SHA
    for part in ("deployment", "deployment_status"):
        payload[part]["created_at"] = payload[part]["updated_at"] = now
    outcome = await github(running).run(header_map([("X-GitHub-Event", "deployment_status"),
                                                    ("X-GitHub-Delivery", "d-1"),
                                                    ("Content-Type", "application/json")]),
                                        json.dumps(payload).encode())
    assert isinstance(outcome, Mapped) and len(outcome.records) == 1, outcome
    await running.bridge.queue.append(outcome.records, delivery=("github", "d-1"))


async def deploys(cortex: SimulatorServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await sim_state(cortex))["deploys"].get(ENTITY, [])
    return found


@pytest.mark.parametrize("github_first", [True, False])
async def test_a_ci_report_and_a_rollout_of_one_change_are_one_deploy(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge,
    github_first: bool,
) -> None:
    cluster.create_deployment(ENTITY, image="ghcr.io/codertocat/hello-world:old")
    running = await start_bridge(environment="production")
    await running.caught_up(apiserver)
    await teach_lineage(running)
    if github_first:
        await report_github(running)
        await running.caught_up(apiserver)
    cluster.set_image(ENTITY, PACKAGE_IMAGE)
    await running.caught_up(apiserver)
    if not github_first:
        await report_github(running)
        await running.caught_up(apiserver)
    [deploy] = await deploys(cortex)
    assert deploy["sha"] == PACKAGE_SHA and deploy["environment"] == "production"
    assert sorted(s["source"] for s in deploy["customData"]["sources"]) == ["github", "k8s"]
    assert deploy["customData"]["images"] == {"app": PACKAGE_IMAGE}
    writes = [r["method"] for r in await sim_requests(cortex) if "/deploys" in r["path"] and r["method"] != "GET"]
    assert writes == ["POST", "PUT"]


async def test_a_rollout_of_another_change_stays_its_own_deploy(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge,
) -> None:
    cluster.create_deployment(ENTITY, image="ghcr.io/codertocat/hello-world:old")
    running = await start_bridge(environment="production")
    await running.caught_up(apiserver)
    await teach_lineage(running)
    await report_github(running)
    cluster.set_image(ENTITY, "ghcr.io/codertocat/hello-world:unknown-build")  # no lineage: no sha
    await running.caught_up(apiserver)
    found = await deploys(cortex)
    assert len(found) == 2 and all("sources" not in d["customData"] for d in found)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    return "queue" if request.param == "sqlite" else str(request.getfixturevalue("pg_dsn"))


async def test_lineage_learned_after_an_image_only_deploy_was_sent_gives_it_its_sha(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge, db: str,
) -> None:
    cluster.create_deployment(ENTITY, image="ghcr.io/codertocat/hello-world:old")
    running = await start_bridge(db=db, environment="production")
    await running.caught_up(apiserver)
    cluster.set_image(ENTITY, PACKAGE_IMAGE)  # no lineage yet: posted without a sha
    await running.caught_up(apiserver)
    [sent] = await deploys(cortex)
    assert "sha" not in sent
    await running.bridge.stop(deadline=2)
    running = await start_bridge(db=db, environment="production")
    await teach_lineage(running)  # CI says which commit the image holds: the deploy is updated by PUT
    await running.caught_up(apiserver)
    [enriched] = await deploys(cortex)
    assert (enriched["uuid"], enriched["sha"]) == (sent["uuid"], PACKAGE_SHA)
    assert [s["source"] for s in enriched["customData"]["sources"]] == ["k8s"], "lineage is not a source"
    await teach_lineage(running)  # learned again: nothing more to send
    await report_github(running)  # the CI report of that sha now joins the same deploy
    await running.caught_up(apiserver)
    [deploy] = await deploys(cortex)
    assert deploy["uuid"] == sent["uuid"] and deploy["sha"] == PACKAGE_SHA
    assert sorted(s["source"] for s in deploy["customData"]["sources"]) == ["github", "k8s"]
    assert deploy["timestamp"] == sent["timestamp"] and deploy["customData"]["images"] == {"app": PACKAGE_IMAGE}
    writes = [r["method"] for r in await sim_requests(cortex) if "/deploys" in r["path"] and r["method"] != "GET"]
    assert writes == ["POST", "PUT", "PUT"]


async def test_lineage_of_another_image_enriches_nothing(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge,
) -> None:
    cluster.create_deployment(ENTITY, image="ghcr.io/codertocat/hello-world:old")
    running = await start_bridge(environment="production")
    await running.caught_up(apiserver)
    cluster.set_image(ENTITY, "ghcr.io/codertocat/hello-world:unknown-build")
    await running.caught_up(apiserver)
    await teach_lineage(running)  # the package's digest, not this tag
    await running.caught_up(apiserver)
    [deploy] = await deploys(cortex)
    assert "sha" not in deploy
    writes = [r["method"] for r in await sim_requests(cortex) if "/deploys" in r["path"] and r["method"] != "GET"]
    assert writes == ["POST"]
