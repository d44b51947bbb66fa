"""A restarted bridge, a dropped watch and a 410 after compaction send nothing twice and lose nothing."""

from __future__ import annotations

import asyncio

from bridge.cortex.simulator import SimulatorServer
from bridge.metrics import sample
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import sim_state
from tests.support.kubernetes import StartBridge

DEPLOYMENTS = "/apis/apps/v1/deployments"
EVENTS = "/apis/events.k8s.io/v1/events"


async def test_restart_of_the_bridge_sends_only_what_is_new(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:1")
    first = await start_bridge(events={"window_seconds": 1.0})
    cluster.set_image("checkout-service", "registry.example/checkout:2")
    pod = cluster.pods("checkout-service")[0]["metadata"]["name"]
    crash = cluster.warning(pod, "BackOff", "Back-off restarting failed container")
    cluster.warning(pod, "Unhealthy", "Readiness probe failed")
    await first.caught_up(apiserver)
    await asyncio.sleep(1.2)  # both windows end before the restart
    await first.bridge.stop(deadline=2)

    # While the bridge is down: a rollout, the crash loop goes on, something new happens; the
    # Unhealthy event stays as it was and must not come back.
    cluster.set_image("checkout-service", "registry.example/checkout:3")
    cluster.repeat(crash, 7)
    cluster.warning(cluster.pods("checkout-service")[0]["metadata"]["name"], "OOMKilling", "Killed process 1")

    duplicates_before = sample("cortex_bridge_records_duplicate_total", {"source": "k8s", "kind": "event"})
    second = await start_bridge(events={"window_seconds": 1.0})
    await second.caught_up(apiserver)
    # Nothing already sent was even offered to the queue again (its id dedup is a second line).
    assert sample("cortex_bridge_records_duplicate_total", {"source": "k8s", "kind": "event"}) == duplicates_before
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["checkout-service"]] == ["2", "3"]
    # BackOff again: new occurrences after its window ended open a new one.
    assert sorted(e["type"] for e in state["events"]["checkout-service"]) == [
        "BackOff", "BackOff", "OOMKilling", "Unhealthy"]


async def test_dropped_and_reset_watches_resume_without_relisting(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("inventory", image="registry.example/inventory:1")
    running = await start_bridge()
    lists_before = apiserver.request_count("list", DEPLOYMENTS)
    restarts_before = sample("cortex_bridge_k8s_watch_restarts_total",
                             {"source": "k8s", "resource": "deployments", "reason": "reset"})
    pod = cluster.pods("inventory")[0]["metadata"]["name"]
    crash = cluster.warning(pod, "BackOff", "Back-off restarting failed container")
    cluster.set_image("inventory", "registry.example/inventory:2")
    await running.caught_up(apiserver)

    apiserver.drop_watches()  # a clean end of every stream (apiserver restart, load balancer)
    cluster.repeat(crash, 5)
    cluster.set_image("inventory", "registry.example/inventory:3")
    await running.caught_up(apiserver)

    apiserver.fail_next("watch", DEPLOYMENTS, code=500, times=2)  # and the first re-watches fail
    apiserver.drop_watches(abort=True)  # connections reset mid-stream
    cluster.scale("inventory", 3)
    cluster.repeat(crash, 9)
    await running.caught_up(apiserver)

    state = await sim_state(cortex)
    assert [d["type"] for d in state["deploys"]["inventory"]] == ["DEPLOY", "DEPLOY", "SCALE"]
    assert [e["type"] for e in state["events"]["inventory"]] == ["BackOff"]
    assert apiserver.request_count("list", DEPLOYMENTS) == lists_before, "resumed from the last resourceVersion"
    assert sample("cortex_bridge_k8s_api_errors_total", {"source": "k8s", "status": "500"}) >= 2
    assert sample("cortex_bridge_k8s_watch_restarts_total",
                  {"source": "k8s", "resource": "deployments", "reason": "reset"}) > restarts_before


async def test_410_after_compaction_relists_and_diffs(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("payments-api", image="registry.example/payments:1")
    # The repeats below fall in the first BackOff's window however slow the machine: a window of
    # 0.5 s could end before the re-list read them (then they are, by design, a second event).
    running = await start_bridge(events={"window_seconds": 60.0})
    pod = cluster.pods("payments-api")[0]["metadata"]["name"]
    crash = cluster.warning(pod, "BackOff", "Back-off restarting failed container")
    cluster.set_image("payments-api", "registry.example/payments:2")
    await running.caught_up(apiserver)
    expired_before = sample("cortex_bridge_k8s_watch_expired_total", {"source": "k8s", "resource": "deployments"})
    lists_before = apiserver.request_count("list", DEPLOYMENTS) + apiserver.request_count("list", EVENTS)

    # These changes never reach the bridge as watch events: the streams get 410 and history is
    # compacted before their frames are written, so only a re-list can find them.
    cluster.set_image("payments-api", "registry.example/payments:3")
    cluster.repeat(crash, 4)
    cluster.warning(pod, "Unhealthy", "Liveness probe failed")
    apiserver.expire_watches()
    await running.caught_up(apiserver)

    assert sample("cortex_bridge_k8s_watch_expired_total",
                  {"source": "k8s", "resource": "deployments"}) > expired_before
    assert apiserver.request_count("list", DEPLOYMENTS) + apiserver.request_count("list", EVENTS) >= lists_before + 2
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["payments-api"]] == ["2", "3"]
    assert sorted(e["type"] for e in state["events"]["payments-api"]) == ["BackOff", "Unhealthy"]

    # A second compaction with nothing new in between re-lists and sends nothing.
    apiserver.expire_watches()
    await running.caught_up(apiserver)
    assert (await sim_state(cortex))["counts"] == state["counts"]
