"""The fake apiserver, driven by the real ``kubernetes_asyncio`` client (and raw HTTP where
the client would hide the wire format), behaves per the documented apiserver semantics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.apiserver.fake_apiserver import FIXTURES_DIR, FakeApiServer, load_manifests

KSPAN = FIXTURES_DIR / "k8s-real" / "kspan"
ROUNDTRIP = FIXTURES_DIR / "k8s-api-roundtrip"
LITERALS = FIXTURES_DIR / "k8s-watch-literals"
PODS_PATH = "/api/v1/namespaces/default/pods"
# Raw HTTP reads must fail rather than hang when a stream is not ended as it should be.
RAW_TIMEOUT = aiohttp.ClientTimeout(total=5)


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.2) as fake:
        yield fake


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    async with server.api_client() as api_client:
        yield api_client


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {}},
    }


def lease(name: str, holder: str) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15),
    )


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def take(stream: watch.Watch, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The first ``count`` events of a started ``Watch.stream``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["raw_object"]["metadata"].get("name", "")) for event in events]


def status_body(error: ApiException) -> dict[str, Any]:
    """The ``Status`` object an ApiException carries."""
    assert error.body is not None
    body: dict[str, Any] = json.loads(error.body)
    return body


async def raw_json(response: Any) -> Any:
    """The JSON body of a call made with ``_preload_content=False`` (typed as the model)."""
    return json.loads(await cast(aiohttp.ClientResponse, response).read())


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --------------------------------------------------------------------------- discovery


async def test_discovery_lists_exactly_what_is_served(server: FakeApiServer, api: client.ApiClient) -> None:
    version = await client.VersionApi(api).get_code()
    assert (version.major, version.minor) == ("1", "31")
    assert (await client.CoreApi(api).get_api_versions()).versions == ["v1"]
    groups = await client.ApisApi(api).get_api_versions()
    assert {group.name for group in groups.groups} == {"apps", "events.k8s.io", "coordination.k8s.io"}

    resource_lists = [
        await client.CoreV1Api(api).get_api_resources(),
        await client.AppsV1Api(api).get_api_resources(),
        await client.EventsV1Api(api).get_api_resources(),
        await client.CoordinationV1Api(api).get_api_resources(),
    ]
    served = {
        (resource_list.group_version, resource.name)
        for resource_list in resource_lists
        for resource in resource_list.resources
        if "/" not in resource.name
    }
    assert served == {
        ("v1", "namespaces"),
        ("v1", "pods"),
        ("v1", "events"),
        ("apps/v1", "deployments"),
        ("apps/v1", "replicasets"),
        ("apps/v1", "statefulsets"),
        ("apps/v1", "daemonsets"),
        ("apps/v1", "controllerrevisions"),
        ("events.k8s.io/v1", "events"),
        ("coordination.k8s.io/v1", "leases"),
    }
    # Every advertised collection answers a list with the advertised kind.
    async with aiohttp.ClientSession(timeout=RAW_TIMEOUT) as http:
        for resource_list in resource_lists:
            prefix = "/api" if resource_list.group_version == "v1" else "/apis"
            for resource in resource_list.resources:
                if "/" in resource.name:
                    continue
                url = f"{server.url}{prefix}/{resource_list.group_version}/{resource.name}"
                async with http.get(url) as response:
                    assert response.status == 200, url
                    assert (await response.json())["kind"] == f"{resource.kind}List"
        async with http.get(f"{server.url}/apis/apps/v1/cronjobs") as response:
            assert response.status == 404
            assert (await response.json())["reason"] == "NotFound"


# --------------------------------------------------------------------------- list


async def test_list_pages_come_from_one_consistent_snapshot(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    for index in range(5):
        server.create(pod(f"p{index}"))
    core = client.CoreV1Api(api)

    first = await core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    assert first.metadata._continue
    # Changes between pages must not show up in later pages of the same list.
    server.create(pod("p5"))
    server.delete("v1", "Pod", "p3")
    second = await core.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    third = await core.list_namespaced_pod("default", limit=2, _continue=second.metadata._continue)
    assert [p.metadata.name for p in second.items] == ["p2", "p3"]
    assert [p.metadata.name for p in third.items] == ["p4"]
    assert third.metadata._continue is None
    assert (
        first.metadata.resource_version == second.metadata.resource_version == third.metadata.resource_version
    )

    fresh = await core.list_namespaced_pod("default")
    assert [p.metadata.name for p in fresh.items] == ["p0", "p1", "p2", "p4", "p5"]
    assert int(fresh.metadata.resource_version) > int(first.metadata.resource_version)
    assert server.request_count("list", PODS_PATH) == 4


async def test_expired_continue_token_gets_the_real_410_status(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    for index in range(3):
        server.create(pod(f"p{index}"))
    core = client.CoreV1Api(api)
    first = await core.list_namespaced_pod("default", limit=1)
    server.create(pod("p3"))
    # Compaction at the list's own revision would not expire it (as in etcd); compact past it.
    server.compact()

    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_pod("default", limit=1, _continue=first.metadata._continue)
    assert caught.value.status == 410
    body = status_body(caught.value)
    literal = json.loads((LITERALS / "status.410-Expired.list-continue-token.json").read_text())
    assert body.keys() == literal.keys()
    for key in ("kind", "apiVersion", "status", "reason", "code"):
        assert body[key] == literal[key]
    assert body["message"].startswith(literal["message"])
    # The token offered in the Status continues (inconsistently) after the last item seen.
    rest = await core.list_namespaced_pod("default", _continue=body["metadata"]["continue"])
    assert [p.metadata.name for p in rest.items] == ["p1", "p2", "p3"]


async def test_exact_list_returns_past_state_until_compacted(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.create(pod("a"))
    core = client.CoreV1Api(api)
    before = (await core.list_namespaced_pod("default")).metadata.resource_version
    server.create(pod("b"))
    server.delete("v1", "Pod", "a")

    past = await core.list_namespaced_pod("default", resource_version=before, resource_version_match="Exact")
    assert [p.metadata.name for p in past.items] == ["a"]
    assert past.metadata.resource_version == before
    not_older = await core.list_namespaced_pod("default", resource_version=before)
    assert [p.metadata.name for p in not_older.items] == ["b"]

    server.compact()
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_pod("default", resource_version=before, resource_version_match="Exact")
    assert caught.value.status == 410
    assert status_body(caught.value)["reason"] == "Expired"


async def test_label_and_field_selectors(server: FakeApiServer, api: client.ApiClient) -> None:
    server.create(pod("web-1", app="web"))
    server.create(pod("web-2", app="web", track="canary"))
    server.create(pod("api-1", app="api"))
    running = pod("db-1", app="db")
    running["status"] = {"phase": "Running"}
    server.create(running)
    core = client.CoreV1Api(api)

    async def names(label_selector: str = "", field_selector: str = "") -> list[str]:
        # An empty selector selects everything, as on a real apiserver.
        result = await core.list_namespaced_pod(
            "default", label_selector=label_selector, field_selector=field_selector
        )
        return [p.metadata.name for p in result.items]

    assert await names(label_selector="app=web") == ["web-1", "web-2"]
    assert await names(label_selector="app==web,!track") == ["web-1"]
    assert await names(label_selector="app in (api, db)") == ["api-1", "db-1"]
    assert await names(label_selector="app notin (web),track!=canary") == ["api-1", "db-1"]
    assert await names(label_selector="track") == ["web-2"]
    assert await names(field_selector="metadata.name=api-1") == ["api-1"]
    assert await names(field_selector="status.phase=Running") == ["db-1"]
    assert await names(field_selector="metadata.name!=api-1", label_selector="app=web") == ["web-1", "web-2"]
    with pytest.raises(ApiException) as caught:
        await names(field_selector="spec.containers=x")
    assert caught.value.status == 400
    assert "field label not supported: spec.containers" in status_body(caught.value)["message"]


async def test_list_wire_format_matches_a_real_apiserver(server: FakeApiServer) -> None:
    server.create(pod("p0"))
    async with (
        aiohttp.ClientSession(timeout=RAW_TIMEOUT) as http,
        http.get(server.url + PODS_PATH) as response,
    ):
        body = await response.json()
    assert response.headers["Content-Type"].startswith("application/json")
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"] == {"resourceVersion": server.resource_version}
    # Built-in list items carry no kind/apiVersion on a real cluster.
    assert "kind" not in body["items"][0]
    assert "apiVersion" not in body["items"][0]


# --------------------------------------------------------------------------- watch


async def test_watch_from_zero_sends_added_for_existing_objects(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    for name in ("b", "a", "c"):
        server.create(deployment(name))
    async with watch.Watch() as w:
        stream = w.stream(client.AppsV1Api(api).list_deployment_for_all_namespaces, resource_version="0")
        events = await take(stream, 3)
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert all(isinstance(event["object"], client.V1Deployment) for event in events)
    assert events[0]["raw_object"]["kind"] == "Deployment"


async def test_watch_from_list_rv_sees_only_later_changes(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.create(pod("old"))
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    server.create(pod("new"))
    server.patch("v1", "Pod", "old", {"metadata": {"labels": {"touched": "yes"}}})
    server.delete("v1", "Pod", "new")
    server.create(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere", "namespace": "other"}}
    )

    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version
        )
        events = await take(stream, 3)
    assert summary(events) == [("ADDED", "new"), ("MODIFIED", "old"), ("DELETED", "new")]
    versions = [rv(event["raw_object"]) for event in events]
    assert versions == sorted(versions)
    assert versions[0] > int(listed.metadata.resource_version)
    # A DELETED event carries the object's last state at the deletion's resourceVersion.
    assert versions[2] > versions[0]


async def test_watch_selector_transitions_are_added_and_deleted(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.create(pod("p", app="web"))
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    server.patch("v1", "Pod", "p", {"metadata": {"labels": {"app": "other"}}})
    server.patch("v1", "Pod", "p", {"metadata": {"labels": {"app": "web"}}})
    server.patch("v1", "Pod", "p", {"metadata": {"labels": {"tier": "front"}}})

    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod,
            "default",
            label_selector="app=web",
            resource_version=listed.metadata.resource_version,
        )
        events = await take(stream, 3)
    assert summary(events) == [("DELETED", "p"), ("ADDED", "p"), ("MODIFIED", "p")]


async def test_bookmarks_only_when_asked_and_timeout_ends_the_stream(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)

    async def watch_for_one_second(**kwargs: Any) -> list[dict[str, Any]]:
        async with watch.Watch() as w:
            return [
                event
                async for event in w.stream(core.list_namespaced_pod, "default", timeout_seconds=1, **kwargs)
            ]

    started = time.monotonic()
    with_bookmarks, without = await asyncio.gather(
        watch_for_one_second(allow_watch_bookmarks=True), watch_for_one_second()
    )
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3
    assert len(with_bookmarks) >= 2
    assert {event["type"] for event in with_bookmarks} == {"BOOKMARK"}
    assert with_bookmarks[0]["raw_object"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": server.resource_version},
    }
    assert without == []


async def test_send_initial_events_ends_with_a_marked_bookmark(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.create(pod("a"))
    server.create(pod("b"))
    async with watch.Watch() as w:
        stream = w.stream(
            client.CoreV1Api(api).list_namespaced_pod,
            "default",
            send_initial_events=True,
            resource_version_match="NotOlderThan",
            allow_watch_bookmarks=True,
        )
        events = await take(stream, 3)
    assert summary(events)[:2] == [("ADDED", "a"), ("ADDED", "b")]
    bookmark = events[2]["raw_object"]
    assert events[2]["type"] == "BOOKMARK"
    assert bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert bookmark["metadata"]["resourceVersion"] == server.resource_version


async def test_watch_from_compacted_rv_raises_410(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    server.create(pod("p"))
    server.compact()
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version
        )
        with pytest.raises(ApiException) as caught:
            await take(stream, 1)
    assert caught.value.status == 410
    assert "Expired: too old resource version" in str(caught.value.reason)
    # kubernetes_asyncio retries a 410 once with the same resourceVersion before raising.
    assert server.request_count("watch", PODS_PATH) == 2


async def test_expired_watch_wire_format(server: FakeApiServer) -> None:
    old = server.resource_version
    server.create(pod("p"))
    compacted = server.compact()
    url = f"{server.url}{PODS_PATH}?watch=1&resourceVersion={old}"
    async with aiohttp.ClientSession(timeout=RAW_TIMEOUT) as http, http.get(url) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = (await response.read()).splitlines()
    assert len(lines) == 1
    frame = json.loads(lines[0])
    assert frame == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {old} ({compacted})",
            "reason": "Expired",
            "code": 410,
        },
    }
    minimal = json.loads((LITERALS / "watch-frame.ERROR.410-Gone.minimal.jsonl").read_text())
    assert minimal["type"] == frame["type"]
    assert minimal["object"].keys() <= frame["object"].keys()


async def test_drop_watches_client_resumes_without_loss_or_duplicates(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    received: list[dict[str, Any]] = []

    async def consume(w: watch.Watch) -> None:
        async for event in w.stream(
            core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version
        ):
            received.append(event)

    async with watch.Watch() as w:
        consumer = asyncio.create_task(consume(w))
        try:
            await server.wait_for_watches(1, path=PODS_PATH)
            for index in range(3):
                server.create(pod(f"p{index}"))
            await wait_until(lambda: len(received) == 3)
            assert server.drop_watches() == 1
            # Written while the client is between connections: must be replayed, once.
            for index in range(3, 6):
                server.create(pod(f"p{index}"))
            await wait_until(lambda: len(received) == 6)
            await asyncio.sleep(0.1)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    assert summary(received) == [("ADDED", f"p{index}") for index in range(6)]
    watches = [entry for entry in server.request_log if entry.verb == "watch"]
    assert len(watches) == 2
    assert watches[1].query["resourceVersion"] == received[2]["raw_object"]["metadata"]["resourceVersion"]


async def test_aborted_watch_connection_surfaces_as_payload_error(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, "default")
        reader = asyncio.create_task(take(stream, 1))
        await server.wait_for_watches(1)
        assert server.drop_watches(abort=True) == 1
        # Unlike a cleanly ended stream, a reset connection is not retried by the client.
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader
    assert server.request_count("watch", PODS_PATH) == 1


async def test_expire_watches_makes_the_client_raise_410(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version
        )
        reader = asyncio.create_task(take(stream, 2))
        await server.wait_for_watches(1)
        server.create(pod("seen"))
        await asyncio.sleep(0.05)
        assert server.expire_watches() == 1
        with pytest.raises(ApiException) as caught:
            await reader
    assert caught.value.status == 410
    assert server.open_watches == 0


async def test_history_limit_is_a_watch_window() -> None:
    async with FakeApiServer(history_limit=2) as small, small.api_client() as api:
        before = small.resource_version
        written = [small.create(pod(f"p{index}")) for index in range(4)]
        core = client.CoreV1Api(api)
        async with watch.Watch() as w:
            recent = w.stream(
                core.list_namespaced_pod,
                "default",
                resource_version=written[1]["metadata"]["resourceVersion"],
            )
            assert summary(await take(recent, 2)) == [("ADDED", "p2"), ("ADDED", "p3")]
        async with watch.Watch() as w:
            with pytest.raises(ApiException) as caught:
                await take(w.stream(core.list_namespaced_pod, "default", resource_version=before), 1)
        assert caught.value.status == 410
        assert small.compacted_resource_version == written[1]["metadata"]["resourceVersion"]


async def test_events_are_mirrored_between_core_and_events_v1(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    core, events_v1 = client.CoreV1Api(api), client.EventsV1Api(api)
    # A new-style event (events.k8s.io/v1 round-trip fixture) read through core/v1.
    new_style = json.loads((ROUNDTRIP / "events.k8s.io.v1.Event.roundtrip-fixture.json").read_text())
    server.create(new_style)
    as_core = await core.read_namespaced_event("nameValue", "namespaceValue")
    assert as_core.message == new_style["note"]
    assert as_core.count == new_style["deprecatedCount"]
    assert as_core.involved_object.kind == new_style["regarding"]["kind"]
    assert as_core.reporting_component == new_style["reportingController"]
    assert as_core.source.component == new_style["deprecatedSource"]["component"]
    assert as_core.series.count == new_style["series"]["count"]
    assert (await events_v1.read_namespaced_event("nameValue", "namespaceValue")).note == "noteValue"

    # A legacy core/v1 event (real kspan capture) read through events.k8s.io/v1.
    (legacy,) = load_manifests(KSPAN / "deployment-rollout.core.v1.Event.00.yaml")
    server.create(legacy)
    name = legacy["metadata"]["name"]
    raw = await events_v1.read_namespaced_event(name, "default", _preload_content=False)
    as_v1 = await raw_json(raw)
    assert as_v1["apiVersion"] == "events.k8s.io/v1"
    assert as_v1["note"] == legacy["message"]
    assert as_v1["deprecatedCount"] == legacy["count"] == 2
    assert as_v1["regarding"] == legacy["involvedObject"]
    assert as_v1["deprecatedLastTimestamp"] == legacy["lastTimestamp"]
    # Legacy events have no eventTime; a real apiserver sends null, which the typed model rejects.
    assert as_v1["eventTime"] is None
    with pytest.raises(ValueError, match="event_time"):
        await events_v1.read_namespaced_event(name, "default")

    selected = await core.list_event_for_all_namespaces(field_selector="involvedObject.kind=Deployment")
    assert [event.metadata.name for event in selected.items] == [name]
    raw_list = await events_v1.list_event_for_all_namespaces(
        field_selector="regarding.kind=Deployment", _preload_content=False
    )
    assert [item["metadata"]["name"] for item in (await raw_json(raw_list))["items"]] == [name]


async def test_core_event_written_later_reaches_an_events_v1_watch(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    listed = await client.CoreV1Api(api).list_namespaced_event("default")
    (legacy,) = load_manifests(KSPAN / "deployment-rollout.core.v1.Event.01.yaml")
    server.create(legacy)
    async with watch.Watch(return_type="object") as w:
        stream = w.stream(
            client.EventsV1Api(api).list_namespaced_event,
            "default",
            resource_version=listed.metadata.resource_version,
        )
        (event,) = await take(stream, 1)
    assert event["type"] == "ADDED"
    assert event["raw_object"]["note"] == "Created pod: hello-world-6b9d85fbd6-klpv2"
    assert event["raw_object"]["regarding"]["kind"] == "ReplicaSet"


# --------------------------------------------------------------------------- writes


async def test_http_create_sets_server_owned_fields(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="worker-", uid="client-chosen"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    created = await core.create_namespaced_pod("default", body)
    assert created.metadata.name.startswith("worker-")
    assert len(created.metadata.name) == len("worker-") + 5
    assert created.metadata.uid != "client-chosen"
    assert created.status.phase == "Pending"
    assert created.metadata.resource_version == server.resource_version
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod("missing", body)
    assert caught.value.status == 404
    assert status_body(caught.value)["message"] == 'namespaces "missing" not found'


async def test_lease_optimistic_concurrency(server: FakeApiServer, api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    created = await leases.create_namespaced_lease("default", lease("leader", "a"))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    with pytest.raises(ApiException) as duplicate:
        await leases.create_namespaced_lease("default", lease("leader", "b"))
    assert status_body(duplicate.value)["reason"] == "AlreadyExists"

    current = await leases.read_namespaced_lease("leader", "default")
    current.spec.holder_identity = "b"
    renewed = await leases.replace_namespaced_lease("leader", "default", current)
    assert renewed.spec.holder_identity == "b"
    assert int(renewed.metadata.resource_version) > int(current.metadata.resource_version)

    current.spec.holder_identity = "c"  # still carries the stale resourceVersion
    with pytest.raises(ApiException) as stale_put:
        await leases.replace_namespaced_lease("leader", "default", current)
    assert stale_put.value.status == 409
    status = status_body(stale_put.value)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Conflict", 409)
    assert status["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "leader"'
    )

    stale_patch = {
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "spec": {"holderIdentity": "c"},
    }
    with pytest.raises(ApiException) as conflict:
        await leases.patch_namespaced_lease("leader", "default", stale_patch)
    assert conflict.value.status == 409
    patched = await leases.patch_namespaced_lease("leader", "default", {"spec": {"leaseTransitions": 1}})
    assert (patched.spec.holder_identity, patched.spec.lease_transitions) == ("b", 1)

    # Writing an identical object changes nothing: same resourceVersion, no watch event.
    unchanged = await leases.replace_namespaced_lease("leader", "default", patched)
    assert unchanged.metadata.resource_version == patched.metadata.resource_version
    with pytest.raises(ApiException) as missing:
        await leases.replace_namespaced_lease("nobody", "default", lease("nobody", "a"))
    assert missing.value.status == 404


async def test_generation_and_status_subresource(server: FakeApiServer, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(),
        ),
        status=client.V1DeploymentStatus(replicas=99),
    )
    created = await apps.create_namespaced_deployment("default", body)
    assert created.metadata.generation == 1
    assert created.status.replicas is None  # status is not writable through create

    scaled = await apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    assert scaled.metadata.generation == 2
    ignored = await apps.patch_namespaced_deployment("web", "default", {"status": {"replicas": 3}})
    assert ignored.status.replicas is None
    assert ignored.metadata.resource_version == scaled.metadata.resource_version

    observed = await apps.patch_namespaced_deployment_status(
        "web", "default", {"spec": {"replicas": 7}, "status": {"observedGeneration": 2, "replicas": 3}}
    )
    assert (observed.status.observed_generation, observed.status.replicas) == (2, 3)
    assert (observed.spec.replicas, observed.metadata.generation) == (3, 2)

    # The Python control writes spec and status like a controller; only spec bumps generation.
    rolled = server.get("apps/v1", "Deployment", "web")
    assert rolled is not None
    rolled["status"]["updatedReplicas"] = 3
    assert server.update(rolled)["metadata"]["generation"] == 2
    rolled["spec"]["template"] = {"metadata": {"labels": {"app": "web"}}}
    assert server.update(rolled)["metadata"]["generation"] == 3


async def test_controller_revisions_list_watch_and_keep_their_creation_timestamp(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    # What the StatefulSet controller writes: a revision owned by its set, the template as a patch.
    template = {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "pg:16"}]}}
    server.create({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "db-5d8f7c9b4", "namespace": "default", "creationTimestamp": "2024-03-01T10:00:00Z",
                     "labels": {"app": "db", "controller-revision-hash": "5d8f7c9b4"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                          "uid": "sts-uid", "controller": True, "blockOwnerDeletion": True}]},
        "data": {"spec": {"template": {**template, "$patch": "replace"}}},
        "revision": 1,
    })
    apps = client.AppsV1Api(api)
    listed = await apps.list_controller_revision_for_all_namespaces()
    (typed,) = listed.items
    assert (typed.metadata.name, typed.revision) == ("db-5d8f7c9b4", 1)
    assert typed.metadata.owner_references[0].kind == "StatefulSet"
    raw = await raw_json(await apps.list_namespaced_controller_revision("default", _preload_content=False))
    assert raw["kind"] == "ControllerRevisionList"
    assert raw["items"][0]["data"]["spec"]["template"]["$patch"] == "replace"

    stream = watch.Watch().stream(apps.list_namespaced_controller_revision, "default",
                                  resource_version=listed.metadata.resource_version, timeout_seconds=5)
    # A rollback reuses the revision: its number goes up, its creationTimestamp stays.
    stored = server.get("apps/v1", "ControllerRevision", "db-5d8f7c9b4", namespace="default")
    assert stored is not None
    stored["revision"] = 3
    server.update(stored)
    [event] = await take(stream, 1)
    assert event["type"] == "MODIFIED"
    assert event["raw_object"]["revision"] == 3
    assert event["raw_object"]["metadata"]["creationTimestamp"] == "2024-03-01T10:00:00Z"


async def test_finalizers_delay_deletion(server: FakeApiServer, api: client.ApiClient) -> None:
    held = pod("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    server.create(held)
    core = client.CoreV1Api(api)
    terminating = await core.delete_namespaced_pod("held", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert (await core.read_namespaced_pod("held", "default")).metadata.finalizers == ["example.com/hold"]
    await core.patch_namespaced_pod("held", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        await core.read_namespaced_pod("held", "default")
    assert gone.value.status == 404


async def test_real_fixture_deployment_and_replicasets_load_and_list_back(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    loaded = server.load(KSPAN)
    assert len(loaded) == 14
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    (deployment,) = (await apps.list_namespaced_deployment("default")).items
    assert deployment.metadata.name == "hello-world"
    assert deployment.metadata.uid == "4ecf82fc-0f0a-44e0-9469-cebbb07f7a31"
    # The captured mid-rollout state survives: generation 4 not yet observed (3).
    assert (deployment.metadata.generation, deployment.status.observed_generation) == (4, 3)
    assert deployment.metadata.resource_version != "649432"  # the fake assigns its own

    replica_sets = await apps.list_replica_set_for_all_namespaces(label_selector="name=hello-world")
    by_name = {rs.metadata.name: rs for rs in replica_sets.items}
    assert set(by_name) == {"hello-world-6b9d85fbd6", "hello-world-7ff854f459"}
    for rs in by_name.values():
        assert rs.metadata.owner_references[0].uid == deployment.metadata.uid
    assert by_name["hello-world-7ff854f459"].spec.template.spec.containers[0].image == "nginx:1.19.3-alpine"

    all_events = await core.list_event_for_all_namespaces()
    assert len(all_events.items) == 11
    rs_events = await core.list_namespaced_event("default", field_selector="involvedObject.kind=ReplicaSet")
    assert sorted(event.message for event in rs_events.items) == [
        "Created pod: hello-world-6b9d85fbd6-klpv2",
        "Deleted pod: hello-world-7ff854f459-kl4hq",
    ]
    assert [ns.metadata.name for ns in (await core.list_namespace()).items] == [
        "cortex",
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]


# --------------------------------------------------------------------------- controls and access


async def test_request_counter_and_injected_failures(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    server.fail_next("list", PODS_PATH, code=429, reason="TooManyRequests", retry_after=2)
    with pytest.raises(ApiException) as throttled:
        await core.list_namespaced_pod("default")
    assert throttled.value.status == 429
    assert throttled.value.headers is not None
    assert throttled.value.headers["Retry-After"] == "2"
    await core.list_namespaced_pod("default")
    await core.list_pod_for_all_namespaces()
    assert server.request_count("list", PODS_PATH) == 2
    assert server.request_count("list", "/api/v1/pods") == 1
    assert server.request_count("list") == 3
    assert server.request_count("watch") == 0


async def test_kubeconfig_and_bearer_token(tmp_path: Path) -> None:
    async with FakeApiServer(token="s3cret") as secured:
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(secured.write_kubeconfig(tmp_path / "kubeconfig")),
            client_configuration=configuration,
        )
        async with client.ApiClient(configuration) as authorised:
            namespaces = await client.CoreV1Api(authorised).list_namespace()
        assert "default" in {ns.metadata.name for ns in namespaces.items}
        async with client.ApiClient(client.Configuration(host=secured.url)) as anonymous:
            with pytest.raises(ApiException) as denied:
                await client.CoreV1Api(anonymous).list_namespace()
        assert denied.value.status == 401
