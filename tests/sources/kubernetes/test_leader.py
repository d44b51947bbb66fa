"""Two bridges: only the Lease holder watches and emits; when it stops or dies, the other takes over."""

from __future__ import annotations

import asyncio
import json

from bridge.cortex.simulator import SimulatorServer
from tests.support.apiserver import FakeApiServer
from tests.support.cluster import Cluster
from tests.support.cortex import sim_state, wait_until
from tests.support.kubernetes import StartBridge
from tests.support.queue_file import stored_rows

#: Short terms so that a test sees an expiry: renew every 0.2 s, give up after 1.5 s, expire after 2 s.
ELECTION = {"enabled": True, "lease_namespace": "kube-system", "lease_duration_seconds": 2,
            "renew_deadline_seconds": 1.5, "retry_period_seconds": 0.2}
STREAMS = 6  # replicasets, controllerrevisions, deployments, statefulsets, daemonsets, events


def exact_lists(server: FakeApiServer) -> list[str]:
    """Paths listed at a past state (how a new leader rebuilds its predecessor's view)."""
    return [r.path for r in server.request_log if r.verb == "list" and r.query.get("resourceVersionMatch") == "Exact"]


async def test_only_the_holder_emits_and_the_other_takes_over_on_graceful_stop(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("checkout-service", image="registry.example/checkout:1")
    first = await start_bridge(db="a", leader_election=ELECTION)
    second = await start_bridge(db="b", leader_election=ELECTION, synced=False)
    await asyncio.sleep(0.6)  # several campaign rounds of the second bridge
    assert first.source.leading and not second.source.leading
    assert apiserver.open_watches == STREAMS, "the follower does not watch"

    cluster.set_image("checkout-service", "registry.example/checkout:2")
    pod = cluster.pods("checkout-service")[0]["metadata"]["name"]
    crash = cluster.warning(pod, "BackOff", "Back-off restarting failed container")
    await first.caught_up(apiserver)
    await asyncio.sleep(0.5)  # the leader publishes its watermark with its renewals
    lease = apiserver.get("coordination.k8s.io/v1", "Lease", "cortex-bridge-k8s", namespace="kube-system")
    assert lease is not None
    assert lease["spec"]["holderIdentity"].endswith(first.source._instance[:8])
    assert json.loads(lease["metadata"]["annotations"]["cortex-bridge.io/processed"])["by"] == first.source._instance
    stored = stored_rows(second.bridge.queue, "SELECT (SELECT COUNT(*) FROM records) + (SELECT COUNT(*) FROM delivered)")
    assert stored == [(0,)], "the follower produced no record at all"

    await first.bridge.stop(deadline=3)  # releases the Lease: no waiting for its expiry
    await wait_until(second.source.synced.is_set, timeout=3)
    rebuilt = exact_lists(apiserver)
    assert len(rebuilt) >= 2, "the new leader rebuilt its predecessor's view at its watermark"
    # Cache-only collections feed no memory: their present state is all a leader needs.
    assert not [path for path in rebuilt if path.endswith(("/replicasets", "/controllerrevisions"))]

    cluster.set_image("checkout-service", "registry.example/checkout:3")
    cluster.repeat(crash, 4)  # the crash loop goes on within the window the first bridge opened
    await second.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["checkout-service"]] == ["2", "3"]
    assert [e["type"] for e in state["events"]["checkout-service"]] == ["BackOff"]

    # The first bridge comes back with its old database (it last saw version 2) and leads again:
    # it starts from the second one's watermark, so version 3 is not sent a second time.
    await asyncio.sleep(0.5)
    again = await start_bridge(db="a", leader_election=ELECTION, synced=False)
    await second.bridge.stop(deadline=3)
    await wait_until(again.source.synced.is_set, timeout=3)
    cluster.set_image("checkout-service", "registry.example/checkout:4")
    await again.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["checkout-service"]] == ["2", "3", "4"]


async def test_a_dead_holder_is_replaced_after_its_lease_expires(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge
) -> None:
    cluster.create_deployment("inventory", image="registry.example/inventory:1")
    first = await start_bridge(db="a", leader_election=ELECTION)
    second = await start_bridge(db="b", leader_election=ELECTION, synced=False)
    cluster.set_image("inventory", "registry.example/inventory:2")
    await first.caught_up(apiserver)
    await asyncio.sleep(0.5)

    # The first bridge dies: no release, no more renewals, its watches go away.
    for task in (first.source._task, first.source._lead_task):
        assert task is not None
        task.cancel()
    cluster.set_image("inventory", "registry.example/inventory:3")  # happens while nobody leads
    await asyncio.sleep(1.0)
    assert not second.source.leading, "the lease has not expired yet"
    await wait_until(second.source.synced.is_set, timeout=5)
    await second.caught_up(apiserver)
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["inventory"]] == ["2", "3"]


async def test_on_postgresql_a_new_holder_resends_nothing_its_dead_predecessor_emitted(
    apiserver: FakeApiServer, cluster: Cluster, cortex: SimulatorServer, start_bridge: StartBridge, pg_dsn: str
) -> None:
    # Two replicas on one PostgreSQL database share the source's memory (and so its instance id):
    # only one may lead (their Lease identities differ per process; with one identity both
    # believed they held the Lease), and the one that takes over from a holder that died right
    # after emitting a change (renewals once a second) neither repeats it nor misses the next.
    slow = {**ELECTION, "lease_duration_seconds": 3, "renew_deadline_seconds": 2.5, "retry_period_seconds": 1.0}
    cluster.create_deployment("inventory", image="registry.example/inventory:1")
    first = await start_bridge(db=pg_dsn, leader_election=slow)
    second = await start_bridge(db=pg_dsn, leader_election=slow, synced=False)
    await asyncio.sleep(1.5)  # a renewal after the initial sync
    assert first.source.leading and not second.source.leading

    async def delivered() -> bool:
        return len((await sim_state(cortex))["deploys"].get("inventory", [])) == 1

    cluster.set_image("inventory", "registry.example/inventory:2")
    await wait_until(delivered, timeout=5, interval=0.01)
    for task in (first.source._task, first.source._lead_task):  # dies: no release, no renewal
        assert task is not None
        task.cancel()
    cluster.set_image("inventory", "registry.example/inventory:3")  # while nobody leads
    await wait_until(second.source.synced.is_set, timeout=10)
    await second.caught_up(apiserver)
    await asyncio.sleep(0.5)  # what the new holder emitted reaches Cortex
    state = await sim_state(cortex)
    assert [d["customData"]["version"] for d in state["deploys"]["inventory"]] == ["2", "3"]
