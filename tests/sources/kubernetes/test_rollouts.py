"""Rollouts of workloads become exactly one deploy each, classified DEPLOY/ROLLBACK/SCALE/RESTART."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.cortex.simulator import SimulatorServer
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import REVISIONED, Cluster
from tests.support.cortex import sim_state
from tests.support.kubernetes import StartBridge


async def deploys(cortex: SimulatorServer, entity: str) -> list[dict[str, Any]]:
    state = await sim_state(cortex)
    found: list[dict[str, Any]] = state["deploys"].get(entity, [])
    return found


async def test_new_image_is_one_deploy_with_version_sha_and_environment(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:1.4.1",
                              annotations={"cortex.io/git-sha": "1111111"})
    running = await start_bridge()
    await running.caught_up(apiserver)
    assert await deploys(cortex, "checkout-service") == [], "an existing workload is a baseline, not a deploy"

    deployment = cluster.deployment("checkout-service")
    deployment["metadata"]["annotations"]["cortex.io/git-sha"] = "2222222"
    apiserver.update(deployment)
    cluster.set_image("checkout-service", "registry.example/checkout:1.4.2", complete=False)
    await running.caught_up(apiserver)
    assert await deploys(cortex, "checkout-service") == [], "a rollout in progress is not a deploy yet"

    cluster.reconcile("checkout-service")
    await running.caught_up(apiserver)
    [deploy] = await deploys(cortex, "checkout-service")
    assert deploy["type"] == "DEPLOY"
    assert deploy["title"] == "Deploy shop/checkout-service 1.4.2"
    assert deploy["sha"] == "2222222"
    assert deploy["environment"] == "staging"
    custom = deploy["customData"]
    assert custom["version"] == "1.4.2"
    assert custom["images"] == {"app": "registry.example/checkout:1.4.2"}
    assert custom["cluster"] == "test-cluster" and custom["kind"] == "Deployment" and custom["replicas"] == 2


async def test_rollback_to_previous_template(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("payments-api", image="registry.example/payments:2.0.0")
    running = await start_bridge()
    cluster.set_image("payments-api", "registry.example/payments:2.1.0")
    await running.caught_up(apiserver)
    cluster.undo("payments-api")
    await running.caught_up(apiserver)
    found = await deploys(cortex, "payments-api")
    assert [(d["type"], d["customData"]["version"]) for d in found] == [("DEPLOY", "2.1.0"), ("ROLLBACK", "2.0.0")]
    assert found[1]["title"] == "Rollback shop/payments-api to 2.0.0"


async def test_rollback_recognized_from_replicasets_by_a_bridge_that_never_saw_the_old_template(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    # Revision 1 ran before the bridge existed; only its ReplicaSet remembers it.
    cluster.create_deployment("inventory", image="registry.example/inventory:1.0")
    cluster.set_image("inventory", "registry.example/inventory:1.1")
    running = await start_bridge()
    cluster.undo("inventory")
    await running.caught_up(apiserver)
    assert [d["type"] for d in await deploys(cortex, "inventory")] == ["ROLLBACK"]


async def test_scale_only_and_restart_only(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("inventory", image="registry.example/inventory:3.0")
    apiserver.patch("v1", "Namespace", "shop", {"metadata": {"labels": {"cortex.io/environment": "production"}}})
    running = await start_bridge(environment_namespace_label="cortex.io/environment")
    cluster.scale("inventory", 5)
    await running.caught_up(apiserver)
    cluster.restart("inventory")
    await running.caught_up(apiserver)
    found = await deploys(cortex, "inventory")
    assert [d["type"] for d in found] == ["SCALE", "RESTART"]
    assert found[0]["title"] == "Scale shop/inventory from 2 to 5 replicas"
    assert found[0]["customData"]["previousReplicas"] == 2 and found[0]["customData"]["replicas"] == 5
    assert found[1]["title"] == "Restart shop/inventory"
    assert {d["environment"] for d in found} == {"production"}


async def test_failed_rollout_is_one_event_and_no_deploy(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:5.0")
    running = await start_bridge()
    cluster.set_image("checkout-service", "registry.example/checkout:5.1-broken", fail=True)
    await running.caught_up(apiserver)
    # The controller keeps writing the failed status (e.g. another status update): still one event.
    deployment = cluster.deployment("checkout-service")
    deployment["status"]["unavailableReplicas"] = 1
    apiserver.update(deployment)
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert state["deploys"].get("checkout-service", []) == []
    [event] = state["events"]["checkout-service"]
    assert event["type"] == "ROLLOUT_FAILED"
    assert event["title"] == "Rollout of Deployment shop/checkout-service failed"
    assert "timed out progressing" in event["description"]
    # Rolling back out of the failure completes: that is a ROLLBACK deploy.
    cluster.undo("checkout-service")
    await running.caught_up(apiserver)
    assert [d["type"] for d in await deploys(cortex, "checkout-service")] == ["ROLLBACK"]


async def test_types_filter_and_unmapped_workloads(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("inventory", image="registry.example/inventory:1")
    cluster.create_deployment("no-such-entity", image="registry.example/x:1")
    running = await start_bridge(entity={"template": None, "keys": ["cortex.io/tag"]},
                                 rollouts={"types": ["DEPLOY", "ROLLBACK", "RESTART"]})
    deployment = cluster.deployment("inventory")
    deployment["metadata"]["annotations"]["cortex.io/tag"] = "inventory"
    apiserver.update(deployment)
    cluster.scale("inventory", 4)  # SCALE is not wanted
    cluster.set_image("inventory", "registry.example/inventory:2")
    cluster.set_image("no-such-entity", "registry.example/x:2")  # no annotation, no template: skipped
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [d["type"] for d in state["deploys"].get("inventory", [])] == ["DEPLOY"]
    assert state["counts"]["deploys"] == 1


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
async def test_rollback_recognized_from_controller_revisions_by_a_bridge_started_after_the_first_revision(
    kind: REVISIONED, apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    # Revision 1 ran before the bridge existed; only its ControllerRevision remembers it.
    cluster.create_revisioned(kind, "inventory", image="registry.example/inventory:15.4")
    cluster.set_revisioned_image(kind, "inventory", "registry.example/inventory:16.1")
    running = await start_bridge()
    cluster.undo_revisioned(kind, "inventory")
    await running.caught_up(apiserver)
    [rollback] = await deploys(cortex, "inventory")
    assert (rollback["type"], rollback["title"]) == ("ROLLBACK", "Rollback shop/inventory to 15.4")
    assert rollback["customData"]["kind"] == kind
    # As the controller does it: the old revision was reused, renumbered, not re-created.
    assert [(cr["revision"], cr["data"]["spec"]["template"]["spec"]["containers"][0]["image"])
            for cr in cluster.revisions(kind, "inventory")] == [
        (2, "registry.example/inventory:16.1"), (3, "registry.example/inventory:15.4")]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
async def test_a_new_template_is_a_deploy_also_after_a_recognized_rollback(
    kind: REVISIONED, apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_revisioned(kind, "inventory", image="registry.example/inventory:15.4")
    cluster.set_revisioned_image(kind, "inventory", "registry.example/inventory:16.1")
    running = await start_bridge()
    cluster.set_revisioned_image(kind, "inventory", "registry.example/inventory:16.2")
    await running.caught_up(apiserver)
    cluster.undo_revisioned(kind, "inventory")
    await running.caught_up(apiserver)
    cluster.set_revisioned_image(kind, "inventory", "registry.example/inventory:17.0", complete=False)
    await running.caught_up(apiserver)
    cluster.reconcile_revisioned(kind, "inventory")
    await running.caught_up(apiserver)
    assert [(d["type"], d["customData"]["version"]) for d in await deploys(cortex, "inventory")] == [
        ("DEPLOY", "16.2"), ("ROLLBACK", "16.1"), ("DEPLOY", "17.0")]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
async def test_rollback_under_way_when_the_bridge_started_is_recognized_when_it_completes(
    kind: REVISIONED, apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    # The bridge's baseline does not know the template that ran before the rollout; the revision of
    # the template rolled away from, created after the one rolled back to, says it is a return.
    cluster.create_revisioned(kind, "payments-api", image="registry.example/payments:1")
    cluster.set_revisioned_image(kind, "payments-api", "registry.example/payments:2")
    cluster.undo_revisioned(kind, "payments-api", complete=False)
    running = await start_bridge()
    cluster.reconcile_revisioned(kind, "payments-api")
    await running.caught_up(apiserver)
    assert [(d["type"], d["customData"]["version"]) for d in await deploys(cortex, "payments-api")] == [("ROLLBACK", "1")]


async def test_controller_revisions_are_watched_only_while_statefulset_or_daemonset_rollouts_are_reported(
    apiserver: FakeApiServer, start_bridge: StartBridge
) -> None:
    running = await start_bridge(rollouts={"kinds": ["Deployment"]})
    assert "deployments@*" in running.source.positions
    assert "controllerrevisions@*" not in running.source.positions
    assert not [r for r in apiserver.request_log if r.path.endswith("/controllerrevisions")]
