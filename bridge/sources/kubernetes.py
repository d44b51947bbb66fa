"""Kubernetes source: rollouts become deploys, Warning events become custom events.

Running in (or against) a cluster, the source follows Deployments, StatefulSets, DaemonSets,
ReplicaSets and Events with list/watch (:mod:`bridge.sources.k8s_watch`), reports completed
rollouts (:mod:`bridge.sources.k8s_rollouts`) and aggregated events
(:mod:`bridge.sources.k8s_events`), and with several replicas lets only the holder of a Lease do
so (:mod:`bridge.sources.k8s_leader`).

What was already reported lives in the bridge's SQLite database next to the queue, under
``k8s/<source>/``: per workload the last completed generation and template, per event uid the
last handled count, the open aggregation windows, and which collections have a baseline. Records
and that memory are written in one transaction (``DurableQueue.append(..., state_updates=...)``),
so they never disagree: after a crash either both the record and "it was reported" are on disk, or
neither is. A restart, a resumed watch or a re-list after ``410`` therefore emits only what is new.

The very first list of a collection (an empty database) is a baseline: what exists is
remembered, nothing is sent, so installing the bridge into a busy cluster sends no replay storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from aiohttp import web
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient, AppsV1Api, Configuration, CoreV1Api, EventsV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge import metrics
from bridge.queue import DurableQueue, QueueFull, QueueUnavailable
from bridge.records import Record
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.k8s_events import (
    EVENTS_SEEN,
    EventAggregator,
    EventSettings,
    OwnerResolver,
    normalize_event,
)
from bridge.sources.k8s_leader import Handover, LeaderElectionSettings, LeaseElector
from bridge.sources.k8s_rollouts import (
    ROLLOUTS_EMITTED,
    UNMAPPED,
    WORKLOAD_RESOURCES,
    EntityMapper,
    EntityMapping,
    RolloutSettings,
    WorkloadCache,
    WorkloadRef,
    WorkloadState,
    deploy_record,
    observe_workload,
)
from bridge.sources.k8s_watch import Change, ListFunction, ResourceStream, call_raw, meta

log = structlog.get_logger("bridge.kubernetes")

HANDOVER_GAPS = Counter(
    "cortex_bridge_k8s_handover_gaps",
    "Hand-overs whose watermark was already compacted away; the collection was baselined instead.",
    ["source", "resource"],
)

#: Seconds a namespace's labels are reused for the environment before they are read again.
NAMESPACE_TTL = 300.0
#: Staged changes are written at the latest after this many (bounds a transaction during lists).
FLUSH_EVERY = 500


class KubernetesSourceSettings(BaseModel):
    """Settings of one ``type: kubernetes`` source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["kubernetes"] = "kubernetes"
    connection: Literal["auto", "in-cluster", "kubeconfig"] = Field(
        "auto",
        description="auto: `kubeconfig` if set, else the pod's service account when running in a cluster, "
        "else $KUBECONFIG or ~/.kube/config.",
    )
    kubeconfig: Path | None = Field(None, description="kubeconfig file (connection kubeconfig/auto).")
    context: str | None = Field(None, description="kubeconfig context; default: its current context.")
    cluster: str = Field("kubernetes", min_length=1, description="Cluster name (ids, customData, environment).")
    environment: str | None = Field(None, description="Deploy environment; default: the cluster name.")
    environment_namespace_label: str | None = Field(
        None, description="Namespace label whose value is the environment (falls back to `environment`)."
    )
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch (empty: all).")
    entity: EntityMapping = Field(default_factory=EntityMapping)
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    leader_election: LeaderElectionSettings = Field(default_factory=LeaderElectionSettings)
    watch_timeout_seconds: int = Field(300, ge=5, le=3600, description="Server-side timeout of one watch request.")
    pod_cache_size: int = Field(4096, ge=16, description="Pods whose owner is remembered for event mapping.")

    @model_validator(mode="before")
    @classmethod
    def _entity_annotation(cls, data: Any) -> Any:
        # Shorthand for the common case: `entity_annotation: cortex.io/tag`.
        if isinstance(data, dict) and "entity_annotation" in data:
            data = dict(data)
            key = data.pop("entity_annotation")
            entity = dict(data.get("entity") or {})
            if "keys" in entity:
                raise ValueError("set entity_annotation or entity.keys, not both")
            entity["keys"] = [key]
            data["entity"] = entity
        return data

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSourceSettings:
        if not self.rollouts.enabled and not self.events.enabled:
            raise ValueError("enable rollouts, events or both")
        if self.kubeconfig is not None and not self.kubeconfig.is_file():
            raise ValueError(f"kubeconfig {self.kubeconfig} does not exist")
        if self.connection == "in-cluster" and self.kubeconfig is not None:
            raise ValueError("connection in-cluster takes no kubeconfig")
        return self


async def load_client_configuration(
    settings: KubernetesSourceSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Configuration:
    """A client configuration from the service account (in-cluster) or a kubeconfig."""
    configuration = Configuration()
    mode = settings.connection
    if mode == "auto":
        in_cluster = settings.kubeconfig is None and bool(environ.get("KUBERNETES_SERVICE_HOST"))
        mode = "in-cluster" if in_cluster else "kubeconfig"
    if mode == "in-cluster":
        # The loader re-reads the token file every minute: bound service-account tokens rotate.
        InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file, environ=dict(environ)).load_and_set(
            configuration
        )
    else:
        await k8s_config.load_kube_config(
            config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    return configuration


class KubernetesSource:
    """A ``type: kubernetes`` source (see the module docstring)."""

    type = "kubernetes"

    def __init__(self, settings: KubernetesSourceSettings, ctx: SourceContext) -> None:
        self.name = settings.name
        self.settings = settings
        self.queue: DurableQueue = ctx.queue
        self._prefix = f"k8s/{self.name}/"
        self._cache = WorkloadCache()
        self._mapper = EntityMapper(settings.entity, cluster=settings.cluster)
        self._events = EventAggregator(settings.events, source=self.name, cluster=settings.cluster,
                                       prefix=self._prefix)
        self._workloads: dict[str, WorkloadState] = {}
        self._synced_streams: set[str] = set()
        self._instance = ""
        self._pending_records: list[Record] = []
        self._pending_updates: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._api: ApiClient | None = None
        self._resolver: OwnerResolver | None = None
        self._elector: LeaseElector | None = None
        self._task: asyncio.Task[None] | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self._streams: dict[str, tuple[ResourceStream, str]] = {}
        self._term_synced = False
        self._tombstones = False
        self._namespaces: dict[str, tuple[float, dict[str, str]]] = {}
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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        self._resolver = OwnerResolver(CoreV1Api(self._api), self._cache, source=self.name,
                                       size=self.settings.pod_cache_size)
        await self._load_state()
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
                    await asyncio.wait_for(self._flush(), timeout=5.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            if acquired:
                self._lock.release()
        if self._lead_task is task:
            self._lead_task = None

    # -- memory -------------------------------------------------------------------------------

    async def _load_state(self) -> None:
        """Read what was reported from the database (memory == disk at every term's start)."""
        states = await self.queue.get_states(self._prefix)
        self._workloads.clear()
        self._synced_streams.clear()
        self._events.counts.clear()
        self._events.windows.clear()
        self._pending_records, self._pending_updates = [], {}
        for key, value in states.items():
            if value:
                self._apply(key, value)
        self._instance = states.get(self._prefix + "instance") or ""
        if not self._instance:
            # Names this database in Lease watermarks (see k8s_leader).
            self._instance = uuid.uuid4().hex
            await self.queue.put_state({self._prefix + "instance": self._instance})

    def _apply(self, key: str, value: str) -> None:
        if key.startswith(self._prefix + "wl/"):
            if value:
                self._workloads[key] = WorkloadState.from_json(value)
            else:
                self._workloads.pop(key, None)
        elif key.startswith(self._prefix + "synced/"):
            stream = key[len(self._prefix + "synced/"):]
            if value:
                self._synced_streams.add(stream)
            else:
                self._synced_streams.discard(stream)
        elif self._events.owns(key):
            self._events.apply(key, value)

    def _stage(self, records: list[Record], updates: dict[str, str]) -> None:
        """Queue records and memory changes for the next flush; memory reflects them at once."""
        self._pending_records.extend(records)
        self._pending_updates.update(updates)
        for key, value in updates.items():
            self._apply(key, value)

    async def _flush(self) -> None:
        """Write staged records and memory in one transaction; wait (never drop) while refused."""
        if not self._pending_records and not self._pending_updates:
            return
        records, updates = self._pending_records, self._pending_updates
        self._pending_records, self._pending_updates = [], {}
        for record in records:
            metrics.RECORDS_RECEIVED.labels(self.name, record.kind).inc()
        delay = 0.1
        while True:
            try:
                result = await self.queue.append(records, state_updates=updates)
                break
            except (QueueFull, QueueUnavailable) as exc:
                # The watch is not read meanwhile: the apiserver holds the changes, or ends the
                # stream and the next watch resumes from the last handled resourceVersion.
                log.warning("k8s_queue_refused", source=self.name, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        kinds = {r.id: r.kind for r in records}
        for rid in result.new_ids:
            metrics.RECORDS_ENQUEUED.labels(self.name, kinds[rid]).inc()
        for rid in result.duplicate_ids:
            metrics.RECORDS_DUPLICATE.labels(self.name, kinds[rid]).inc()
        self._tombstones = self._tombstones or "" in updates.values()

    async def _purge_tombstones(self) -> None:
        """Delete forgotten keys (written as empty values inside record transactions)."""
        if not self._tombstones:
            return
        self._tombstones = False
        low, high = self._prefix, self._prefix + "\U0010ffff"
        await self.queue.execute(
            lambda conn: conn.execute(
                "DELETE FROM source_state WHERE key >= ? AND key < ? AND value = ''", (low, high)
            ).rowcount
        )

    # -- one leadership term ------------------------------------------------------------------

    async def _lead(self, handover: Handover | None) -> None:
        delay = 1.0
        while True:
            self._term_synced = False
            try:
                await self._load_state()
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
        synced = stream.key in self._synced_streams
        position = handover.positions.get(stream.key) if handover and stream.resource != "replicasets" else None
        if position:
            if await stream.list_at(position):
                synced = True
            else:
                HANDOVER_GAPS.labels(self.name, stream.resource).inc()
                log.warning("k8s_handover_gap", source=self.name, stream=stream.key, position=position)
                synced = False
        await stream.sync(baseline=not synced)
        async with self._lock:
            if stream.key not in self._synced_streams:
                self._stage([], {f"{self._prefix}synced/{stream.key}": "1"})
            await self._flush()

    async def _housekeeping(self) -> None:
        interval = min(1.0, self.settings.events.window_seconds / 4)
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                for key in self._events.due(time.time()):
                    out = self._events.close(key)
                    self._stage(out.records, out.updates)
                await self._flush()
            if time.monotonic() - last_purge > 60:
                last_purge = time.monotonic()
                await self._purge_tombstones()

    # -- stream handler -----------------------------------------------------------------------

    async def on_change(self, change: Change, *, baseline: bool) -> None:
        """Handle one change of a watched object (called by the streams)."""
        stream, resource = self._streams[change.stream]
        async with self._lock:
            if resource == "replicasets":
                self._cache_change("ReplicaSet", change)
            elif resource in WORKLOAD_RESOURCES:
                kind = WORKLOAD_RESOURCES[resource]
                self._cache_change(kind, change)
                if self.settings.rollouts.enabled and kind in self.settings.rollouts.kinds:
                    await self._on_workload(kind, change, baseline=baseline)
            else:
                await self._on_event(change, baseline=baseline)
            if not stream.listing or len(self._pending_updates) >= FLUSH_EVERY:
                await self._flush()

    async def on_listed(self, stream: ResourceStream, present: set[str], *, baseline: bool) -> None:
        """Forget what vanished while nobody watched (called after each full list)."""
        resource = stream.resource
        async with self._lock:
            if resource in WORKLOAD_RESOURCES:
                scope = f"{self._prefix}wl/{WORKLOAD_RESOURCES[resource]}/" + (
                    f"{stream.namespace}/" if stream.namespace else ""
                )
                gone = {k: "" for k, s in self._workloads.items() if k.startswith(scope) and s.uid not in present}
                self._stage([], gone)
            elif resource == "events":
                self._stage([], self._events.forget_absent(stream.namespace, present))
            await self._flush()

    def _cache_change(self, kind: str, change: Change) -> None:
        if change.type == "DELETED":
            self._cache.remove(kind, change.obj)
        else:
            obj = dict(change.obj)
            # managedFields are most of an object's size and never read here.
            obj["metadata"] = {k: v for k, v in meta(obj).items() if k != "managedFields"}
            self._cache.put(kind, obj)

    async def _on_workload(self, kind: str, change: Change, *, baseline: bool) -> None:
        m = meta(change.obj)
        namespace, name = str(m.get("namespace") or ""), str(m.get("name") or "")
        key = f"{self._prefix}wl/{kind}/{namespace}/{name}"
        previous = self._workloads.get(key)
        if change.type == "DELETED":
            if previous is not None and previous.uid == str(m.get("uid") or ""):
                self._stage([], {key: ""})
            return
        replicasets = self._cache.owned_replicasets(str(m.get("uid") or "")) if kind == "Deployment" else []
        observation = observe_workload(kind, change.obj, previous, replicasets, baseline=baseline)
        records: list[Record] = []
        if observation.report is not None and kind in self.settings.rollouts.kinds:
            entity = self._mapper.entity(WorkloadRef.of(kind, change.obj))
            if entity is None:
                UNMAPPED.labels(self.name, kind).inc()
                log.info("k8s_unmapped", source=self.name, kind=kind, workload=f"{namespace}/{name}",
                         report=observation.report)
            else:
                record = deploy_record(self.settings.rollouts, observation, kind, change.obj, source=self.name,
                                       cluster=self.settings.cluster, entity=entity,
                                       environment=await self._environment(namespace))
                if record is not None:
                    records.append(record)
                    ROLLOUTS_EMITTED.labels(self.name, observation.report).inc()
        updates = {key: observation.state.to_json()} if observation.state != previous else {}
        self._stage(records, updates)

    async def _on_event(self, change: Change, *, baseline: bool) -> None:
        event = normalize_event(change.obj)
        if event is None:
            return
        if change.type == "DELETED":
            key = self._events.count_key(event.namespace, event.uid)
            if key in self._events.counts:
                self._stage([], {key: ""})
            return
        EVENTS_SEEN.labels(self.name, event.type or "unknown").inc()
        if not self._events.accepts(event) or self._events.new_occurrences(event) <= 0:
            return
        assert self._resolver is not None
        workload = await self._resolver.resolve(event.regarding)
        entity = self._mapper.entity(workload)
        if entity is None and not baseline:
            UNMAPPED.labels(self.name, workload.kind).inc()
            log.info("k8s_unmapped", source=self.name, kind=workload.kind,
                     workload=f"{workload.namespace}/{workload.name}", reason=event.reason)
        out = self._events.observe(event, workload, entity, baseline=baseline, now=time.time())
        self._stage(out.records, out.updates)

    async def _environment(self, namespace: str) -> str:
        label = self.settings.environment_namespace_label
        fallback = self.settings.environment or self.settings.cluster
        if not label or self._api is None:
            return fallback
        cached = self._namespaces.get(namespace)
        if cached is None or time.monotonic() - cached[0] > NAMESPACE_TTL:
            try:
                ns = await call_raw(CoreV1Api(self._api).read_namespace, namespace)
                labels = {str(k): str(v) for k, v in (meta(ns).get("labels") or {}).items()}
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("k8s_namespace_lookup_failed", source=self.name, namespace=namespace, error=repr(exc))
                labels = cached[1] if cached else {}
            cached = (time.monotonic(), labels)
            self._namespaces[namespace] = cached
        return cached[1].get(label) or fallback


def _bind_namespace(fn: ListFunction, namespace: str) -> ListFunction:
    """A namespaced list method with its namespace bound (what Watch.stream expects)."""

    async def bound(*args: Any, **kwargs: Any) -> Any:
        return await fn(namespace, *args, **kwargs)

    return bound


def create(config: dict[str, Any], ctx: SourceContext) -> KubernetesSource:
    """Source factory registered as ``type: kubernetes``."""
    try:
        settings = KubernetesSourceSettings.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(source)'}: {err['msg']}" for err in exc.errors()
        )
        raise SourceConfigError(f"source {config.get('name')!r}: {problems}") from None
    return KubernetesSource(settings, ctx)
