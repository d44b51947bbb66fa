"""Warning events become custom events on the owning workload's entity; repeats are aggregated."""

from __future__ import annotations

import asyncio

from bridge.cortex.simulator import SimulatorServer
from bridge.metrics import sample
from tests.support.apiserver import FIXTURES_DIR, FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import sim_state, wait_until
from tests.support.kubernetes import COUNT_METRIC, StartBridge

KSPAN = FIXTURES_DIR / "k8s-real" / "kspan"


async def test_crash_loop_with_50_count_updates_is_one_event_and_one_count_point(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:1.0")
    running = await start_bridge(events={"window_seconds": 2.0, "count_metric": COUNT_METRIC})
    aggregated_before = sample("cortex_bridge_k8s_events_aggregated_total", {"source": "k8s"})
    pod = cluster.pods("checkout-service")[0]["metadata"]["name"]
    event = cluster.warning(pod, "BackOff", "Back-off restarting failed container app in pod " + pod)
    for count in range(2, 52):  # 50 updates of the same Event object
        cluster.repeat(event, count)
        await asyncio.sleep(0.005)
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    [custom] = state["events"]["checkout-service"]
    assert custom["type"] == "BackOff"
    assert custom["title"] == "BackOff: Deployment shop/checkout-service"
    assert custom["description"].startswith(f"Pod {pod}: Back-off restarting")
    assert custom["customData"]["workload"] == "Deployment/checkout-service"
    assert sample("cortex_bridge_k8s_events_aggregated_total", {"source": "k8s"}) - aggregated_before == 50
    # When the window ends, its count (first occurrence + 50 repeats) is one metric point.
    await wait_until(lambda: bool(cortex.store.metric_points.get(COUNT_METRIC, {}).get("checkout-service")), timeout=10)
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [p["value"] for p in state["metrics"][COUNT_METRIC]["checkout-service"]] == [51.0]
    assert len(state["events"]["checkout-service"]) == 1


async def test_pods_of_one_deployment_share_a_window_and_a_new_window_is_a_new_event(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("payments-api", image="registry.example/payments:1", replicas=3)
    running = await start_bridge(events={"window_seconds": 1.0})
    pods = [p["metadata"]["name"] for p in cluster.pods("payments-api")]
    for pod in pods:
        cluster.warning(pod, "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")
    cluster.warning(pods[0], "OOMKilling", "Memory cgroup out of memory: Killed process 4242 (java)")
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert sorted(e["type"] for e in state["events"]["payments-api"]) == ["OOMKilling", "Unhealthy"]
    await asyncio.sleep(1.2)
    cluster.warning(pods[1], "Unhealthy", "Readiness probe failed again")
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert sorted(e["type"] for e in state["events"]["payments-api"]) == ["OOMKilling", "Unhealthy", "Unhealthy"]


async def test_deleted_pod_and_statefulset_pod_are_mapped_by_name_and_filters_and_namespaces_apply(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:1")
    apiserver.create({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "inventory", "namespace": "shop"},
        "spec": {"replicas": 1, "serviceName": "inventory", "selector": {"matchLabels": {"app": "inventory"}},
                 "template": {"metadata": {"labels": {"app": "inventory"}},
                              "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}},
    })
    running = await start_bridge(namespaces=["shop"],
                                 events={"exclude_reasons": ["FailedMount"], "involved_kinds": ["Pod"]})
    await apiserver.wait_for_watches(6)  # replicasets, controllerrevisions, 3 workload kinds, events
    assert all("/namespaces/shop/" in p for p in apiserver.watch_paths())
    rs = cluster.replicasets("checkout-service")[0]["metadata"]["name"]
    cluster.warning(f"{rs}-zx9kq", "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.")
    cluster.warning("inventory-0", "BackOff", "Back-off restarting failed container db")
    cluster.warning("inventory-0", "FailedMount", "MountVolume.SetUp failed")  # excluded reason
    cluster.warning("inventory", "FailedCreate", "create Pod inventory-1 failed", kind="StatefulSet")  # kind filter
    Cluster(apiserver, namespace="default").warning("inventory-0", "BackOff", "not a watched namespace")
    apiserver.create({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "normal.1", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "name": "inventory-0", "namespace": "shop"},
        "reason": "Pulled", "message": "Container image pulled", "type": "Normal", "count": 1,
    })
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [e["type"] for e in state["events"]["checkout-service"]] == ["FailedScheduling"]
    assert [e["type"] for e in state["events"]["inventory"]] == ["BackOff"]
    assert state["counts"]["events"] == 2


async def test_core_v1_api_and_a_real_cluster_recording(
    apiserver: FakeApiServer, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    # A real rollout's objects and events (2020); nothing of it is replayed at the first start.
    apiserver.load(KSPAN)
    running = await start_bridge(
        entity={"template": None, "static": {"default/hello-world": "checkout-service",
                                             "cortex/ingester": "inventory"}},
        events={"api": "core", "types": ["Normal", "Warning"], "reasons": ["ScalingReplicaSet", "SuccessfulDelete"],
                "involved_kinds": []},
    )
    await running.caught_up(apiserver)
    assert (await sim_state(cortex))["counts"] == {"deploys": 0, "events": 0, "metric_points": 0, "custom_data": 0}
    # The scale-up happens once more: a new occurrence of a 2020 event is reported (no max age).
    event = apiserver.get("v1", "Event", "hello-world.164a8590cbae32b9", namespace="default")
    assert event is not None
    event["count"] = 3
    apiserver.update(event)
    # The controller finishes the rollout that was in progress when the bridge started.
    deployment = apiserver.get("apps/v1", "Deployment", "hello-world", namespace="default")
    assert deployment is not None
    deployment["status"].update(observedGeneration=4, updatedReplicas=1, replicas=1, availableReplicas=1)
    apiserver.update(deployment)
    await running.caught_up(apiserver)
    state = await sim_state(cortex)
    [custom] = state["events"]["checkout-service"]
    assert custom["type"] == "ScalingReplicaSet"
    assert custom["description"] == "Deployment hello-world: Scaled up replica set hello-world-6b9d85fbd6 to 1"
    [deploy] = state["deploys"]["checkout-service"]
    # The template went back to nginx:1.19.2, whose ReplicaSet had run before (revision-history).
    assert deploy["type"] == "ROLLBACK"
    assert deploy["customData"]["version"] == "1.19.2-alpine"
    assert "inventory" not in state["events"]


async def test_falls_back_to_core_v1_events_where_events_k8s_io_is_not_served(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("inventory", image="registry.example/inventory:1")
    apiserver.fail_next("get", "/apis/events.k8s.io/v1", code=404, reason="NotFound", message="not served")
    running = await start_bridge()
    await apiserver.wait_for_watches(6)  # replicasets, controllerrevisions, 3 workload kinds, events
    assert "/api/v1/events" in apiserver.watch_paths()
    assert "/apis/events.k8s.io/v1/events" not in apiserver.watch_paths()
    cluster.warning(cluster.pods("inventory")[0]["metadata"]["name"], "FailedMount", "MountVolume.SetUp failed")
    await running.caught_up(apiserver)
    assert [e["type"] for e in (await sim_state(cortex))["events"]["inventory"]] == ["FailedMount"]
