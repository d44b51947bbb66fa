"""Kubernetes source: rollouts become deploys, Warning events become custom events.

Running in (or against) a cluster, the source follows Deployments, StatefulSets, DaemonSets,
ReplicaSets, ControllerRevisions and Events with list/watch (:mod:`bridge.sources.kubernetes.watch`), reports completed
rollouts (:mod:`bridge.sources.kubernetes.rollouts`) and aggregated events
(:mod:`bridge.sources.kubernetes.events`), and with several replicas lets only the holder of a Lease do
so (:mod:`bridge.sources.kubernetes.leader`). This module is the wiring: settings are
:mod:`bridge.sources.kubernetes.settings`, what a change means is :mod:`bridge.sources.kubernetes.changes`.

What was already reported is remembered in the bridge's database, written in one transaction with
the records (:mod:`bridge.sources.kubernetes.memory`). A restart, a resumed watch or a re-list after
``410`` therefore emits only what is new.

The very first list of a collection (an empty database) is a baseline: what exists is
remembered, nothing is sent, so installing the bridge into a busy cluster sends no replay storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api, EventsV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from bridge import metrics
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.kubernetes.changes import ChangeHandler
from bridge.sources.kubernetes.events import EventAggregator
from bridge.sources.kubernetes.leader import Handover, LeaseElector
from bridge.sources.kubernetes.memory import SourceMemory
from bridge.sources.kubernetes.settings import KubernetesSourceSettings, load_client_configuration
from bridge.sources.kubernetes.watch import Change, ListFunction, ResourceStream, call_raw
from bridge.sources.kubernetes.workloads import CACHED_RESOURCES, REVISIONED_KINDS, WorkloadCache
from bridge.tasks import cancel_and_wait

log = structlog.get_logger("bridge.kubernetes")


#: Staged changes are written at the latest after this many (bounds a transaction during lists).
FLUSH_EVERY = 500


class KubernetesSource:
    """A ``type: kubernetes`` source (see the module docstring)."""

    type = "kubernetes"

    def __init__(self, settings: KubernetesSourceSettings, ctx: SourceContext) -> None:
        self.name = settings.name
        self.settings = settings
        self.queue = ctx.queue
        prefix = f"k8s/{self.name}/"
        self._cache = WorkloadCache()
        self._events = EventAggregator(settings.events, source=self.name, cluster=settings.cluster, prefix=prefix)
        self._memory = SourceMemory(ctx.queue, self._events, source=self.name, prefix=prefix)
        self._instance = ""
        self._lock = asyncio.Lock()
        self._api: ApiClient | None = None
        self._changes: ChangeHandler | None = None
        self._elector: LeaseElector | None = None
        self._task: asyncio.Task[None] | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self._streams: dict[str, tuple[ResourceStream, str]] = {}
        self._term_synced = False
        #: set once every collection was listed in the current term (tests wait on it)
        self.synced = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        """The Kubernetes source serves no HTTP routes."""
        return []

    @property
    def positions(self) -> dict[str, str]:
        """resourceVersion up to which each watched collection was handled ("" while it is being
        listed); empty when this bridge does not lead."""
        if not self.leading:
            return {}
        return {key: stream.position or "" for key, (stream, _) in self._streams.items()}

    @property
    def leading(self) -> bool:
        """Whether this bridge currently watches (always, without leader election)."""
        return self._lead_task is not None and not self._lead_task.done()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and campaign/watch in the background (the bridge starts even if the API is down)."""
        self._task = asyncio.create_task(self._run(), name=f"k8s-{self.name}")

    async def stop(self) -> None:
        """Stop watching with everything handled durable, and hand the Lease over at once."""
        if self._elector is not None:
            self._elector.stop()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._stop_leading()
        if self._elector is not None:
            await self._elector.release()
        if self._api is not None:
            await self._api.close()
            self._api = None
        log.info("k8s_stopped", source=self.name)

    async def _run(self) -> None:
        self._api = await self._connect()
        self._changes = ChangeHandler(self.settings, CoreV1Api(self._api), cache=self._cache, events=self._events,
                                      memory=self._memory)
        await self._memory.load()
        self._instance = self._memory.instance
        if not self.settings.leader_election.enabled:
            self._start_leading(None)
            return
        self._elector = LeaseElector(self._api, self.settings.leader_election, source=self.name,
                                     instance=self._instance, positions=self._positions)
        await self._elector.run(self._start_leading, self._lost_leadership)

    async def _connect(self) -> ApiClient:
        delay = 1.0
        while True:
            try:
                configuration = await load_client_configuration(self.settings)
            except (ConfigException, OSError, ValueError) as exc:
                log.error("k8s_config_failed", source=self.name, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            log.info("k8s_connecting", source=self.name, host=configuration.host, cluster=self.settings.cluster)
            return ApiClient(configuration)

    def _positions(self) -> dict[str, str] | None:
        """What to publish as this leader's watermark (None until every collection is listed)."""
        if not self._term_synced:
            return None
        return {key: stream.position for key, (stream, _) in self._streams.items() if stream.position}

    def _start_leading(self, handover: Handover | None) -> None:
        self._term_synced = False
        self._lead_task = asyncio.create_task(self._lead(handover), name=f"k8s-{self.name}-lead")

    async def _lost_leadership(self) -> None:
        # Someone else may lead already: stop at once rather than finish the change at hand
        # (what was written is on disk; the next term reloads memory from there).
        await self._stop_leading(graceful=False)

    async def _stop_leading(self, *, graceful: bool = True) -> None:
        """Stop watching. ``graceful``: let the change being handled finish and write what is
        staged, so that the watermark handed to the next leader is exact."""
        task = self._lead_task
        if task is None:
            return
        self.synced.clear()
        acquired = False
        if graceful:
            try:
                await asyncio.wait_for(self._lock.acquire(), timeout=5.0)
                acquired = True
            except TimeoutError:
                log.warning("k8s_stop_busy", source=self.name)
        try:
            if acquired:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._memory.flush(), timeout=5.0)
            await cancel_and_wait(task)
        finally:
            if acquired:
                self._lock.release()
        if self._lead_task is task:
            self._lead_task = None

    # -- one leadership term ------------------------------------------------------------------

    async def _lead(self, handover: Handover | None) -> None:
        delay = 1.0
        while True:
            self._term_synced = False
            try:
                await self._memory.load()
                # Objects deleted while this bridge did not watch would linger in the caches.
                self._cache.clear()
                self._streams = await self._build_streams()
                for stream, _ in self._streams.values():
                    await self._initial_sync(stream, handover)
                self._term_synced = True
                self.synced.set()
                log.info("k8s_synced", source=self.name, streams=sorted(self._streams),
                         handover_from=handover.holder if handover else None)
                # The predecessor's view is part of this database now; a later round of this term
                # starts from its own memory, which is newer.
                handover = None
                delay = 1.0
                async with asyncio.TaskGroup() as group:
                    for stream, _ in self._streams.values():
                        group.create_task(stream.watch_forever(), name=f"k8s-{self.name}-{stream.key}")
                    group.create_task(self._housekeeping(), name=f"k8s-{self.name}-housekeeping")
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("k8s_sync_failed", source=self.name, error=repr(exc), retry_in=delay)
            except Exception:
                log.exception("k8s_term_failed", source=self.name, retry_in=delay)
            self.synced.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _build_streams(self) -> dict[str, tuple[ResourceStream, str]]:
        assert self._api is not None
        apps, core = AppsV1Api(self._api), CoreV1Api(self._api)
        plan: list[tuple[str, Any, str, str]] = [
            ("replicasets", apps, "list_replica_set_for_all_namespaces", "list_namespaced_replica_set"),
        ]
        rollouts = self.settings.rollouts
        if rollouts.enabled and any(kind in rollouts.kinds for kind in REVISIONED_KINDS):
            # Listed before the workloads: a rollback is recognized from them (k8s_rollouts).
            plan.append(("controllerrevisions", apps, "list_controller_revision_for_all_namespaces",
                         "list_namespaced_controller_revision"))
        plan += [
            ("deployments", apps, "list_deployment_for_all_namespaces", "list_namespaced_deployment"),
            ("statefulsets", apps, "list_stateful_set_for_all_namespaces", "list_namespaced_stateful_set"),
            ("daemonsets", apps, "list_daemon_set_for_all_namespaces", "list_namespaced_daemon_set"),
        ]
        if self.settings.events.enabled:
            events_api: Any = core
            if self.settings.events.api != "core":
                events_api = EventsV1Api(self._api)
                if self.settings.events.api == "auto":
                    try:
                        await call_raw(events_api.get_api_resources)
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                        events_api = core
            plan.append(("events", events_api, "list_event_for_all_namespaces", "list_namespaced_event"))
        streams: dict[str, tuple[ResourceStream, str]] = {}
        for resource, api, all_name, namespaced_name in plan:
            namespaces: list[str | None] = list(self.settings.namespaces) or [None]
            for namespace in namespaces:
                fn: ListFunction = getattr(api, all_name)
                if namespace is not None:
                    fn = _bind_namespace(getattr(api, namespaced_name), namespace)
                stream = ResourceStream(source=self.name, resource=resource, namespace=namespace, list_fn=fn,
                                        handler=self, timeout_seconds=self.settings.watch_timeout_seconds)
                streams[stream.key] = (stream, resource)
        return streams

    async def _initial_sync(self, stream: ResourceStream, handover: Handover | None) -> None:
        """List a collection: rebuild the previous leader's view first, or baseline a new one."""
        synced = stream.key in self._memory.synced_streams
        # Cache-only collections have no view of the predecessor to rebuild: a current list will do.
        cached = stream.resource in CACHED_RESOURCES
        position = handover.positions.get(stream.key) if handover and not cached else None
        if position:
            if await stream.list_at(position):
                synced = True
            else:
                metrics.K8S_HANDOVER_GAPS.labels(self.name, stream.resource).inc()
                log.warning("k8s_handover_gap", source=self.name, stream=stream.key, position=position)
                synced = False
        await stream.sync(baseline=not synced)
        async with self._lock:
            if stream.key not in self._memory.synced_streams:
                self._memory.stage([], {self._memory.synced_key(stream.key): "1"})
            await self._memory.flush()

    async def _housekeeping(self) -> None:
        interval = min(1.0, self.settings.events.window_seconds / 4)
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                for key in self._events.due(time.time()):
                    out = self._events.close(key)
                    self._memory.stage(out.records, out.updates)
                await self._memory.flush()
            if time.monotonic() - last_purge > 60:
                last_purge = time.monotonic()
                await self._memory.purge_tombstones()

    # -- stream handler -----------------------------------------------------------------------

    async def on_change(self, change: Change, *, baseline: bool) -> None:
        """Handle one change of a watched object (called by the streams)."""
        stream, resource = self._streams[change.stream]
        assert self._changes is not None
        async with self._lock:
            await self._changes.changed(resource, change, baseline=baseline)
            if not stream.listing or self._memory.staged_updates >= FLUSH_EVERY:
                await self._memory.flush()

    async def on_listed(self, stream: ResourceStream, present: set[str], *, baseline: bool) -> None:
        """Forget what vanished while nobody watched (called after each full list)."""
        assert self._changes is not None
        async with self._lock:
            self._changes.listed(stream, present)
            await self._memory.flush()


def _bind_namespace(fn: ListFunction, namespace: str) -> ListFunction:
    """A namespaced list method with its namespace bound (what Watch.stream expects)."""

    async def bound(*args: Any, **kwargs: Any) -> Any:
        return await fn(namespace, *args, **kwargs)

    return bound


def create(config: dict[str, Any], ctx: SourceContext) -> KubernetesSource:
    """Source factory registered as ``type: kubernetes``."""
    settings = parse_settings(KubernetesSourceSettings, config)
    return KubernetesSource(settings, ctx)
