"""Changes of watched objects turned into records and memory updates for a kubernetes source.

Workloads go through :func:`~bridge.sources.kubernetes.rollouts.observe_workload`, Events through the
:class:`~bridge.sources.kubernetes.events.EventAggregator`; what comes out is staged in the
:class:`~bridge.sources.kubernetes.memory.SourceMemory`, which the source flushes.
"""

from __future__ import annotations

import time

import aiohttp
import structlog
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from bridge import metrics
from bridge.records import Record
from bridge.sources.kubernetes.entity import EntityMapper
from bridge.sources.kubernetes.events import EventAggregator, OwnerResolver, normalize_event
from bridge.sources.kubernetes.memory import SourceMemory
from bridge.sources.kubernetes.rollouts import deploy_record, observe_workload
from bridge.sources.kubernetes.settings import KubernetesSourceSettings
from bridge.sources.kubernetes.templates import containers, resolve_value
from bridge.sources.kubernetes.watch import Change, JsonObject, ResourceStream, call_raw, meta
from bridge.sources.kubernetes.workloads import (
    CACHED_RESOURCES,
    REVISIONED_KINDS,
    WORKLOAD_RESOURCES,
    WorkloadCache,
    WorkloadRef,
    labels_of,
)
from bridge.sources.lineage import OCI_REVISION, Built, Fact, Lineage

log = structlog.get_logger("bridge.kubernetes")

#: Seconds a namespace's labels are reused for the environment before they are read again.
NAMESPACE_TTL = 300.0


class ChangeHandler:
    """Stages what each change of a watched object means; the caller holds the source's lock."""

    def __init__(self, settings: KubernetesSourceSettings, core: CoreV1Api, *, cache: WorkloadCache,
                 events: EventAggregator, memory: SourceMemory) -> None:
        self.name = settings.name
        self.settings = settings
        self._core = core
        self._cache = cache
        self._events = events
        self._memory = memory
        self._mapper = EntityMapper(settings.entity, cluster=settings.cluster)
        self._resolver = OwnerResolver(core, cache, source=self.name, size=settings.pod_cache_size)
        self._namespaces: dict[str, tuple[float, dict[str, str]]] = {}
        self._lineage = Lineage(memory.queue, settings.lineage)

    async def changed(self, resource: str, change: Change, *, baseline: bool) -> None:
        """Handle one change of an object of ``resource`` (the plural the stream watches)."""
        if resource in CACHED_RESOURCES:
            self._cache_change(CACHED_RESOURCES[resource], change)
        elif resource in WORKLOAD_RESOURCES:
            kind = WORKLOAD_RESOURCES[resource]
            self._cache_change(kind, change)
            if self.settings.rollouts.enabled and kind in self.settings.rollouts.kinds:
                await self._on_workload(kind, change, baseline=baseline)
        else:
            await self._on_event(change, baseline=baseline)

    def listed(self, stream: ResourceStream, present: set[str]) -> None:
        """Forget what vanished from ``stream``'s collection (``present``: uids after a full list)."""
        resource = stream.resource
        if resource in WORKLOAD_RESOURCES:
            scope = self._memory.workload_scope(WORKLOAD_RESOURCES[resource], stream.namespace)
            gone = {k: "" for k, s in self._memory.workloads.items() if k.startswith(scope) and s.uid not in present}
            self._memory.stage([], gone)
        elif resource == "events":
            self._memory.stage([], self._events.forget_absent(stream.namespace, present))

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
        key = self._memory.workload_key(kind, namespace, name)
        previous = self._memory.workloads.get(key)
        if change.type == "DELETED":
            if previous is not None and previous.uid == str(m.get("uid") or ""):
                self._memory.stage([], {key: ""})
            return
        uid = str(m.get("uid") or "")
        replicasets = self._cache.owned_replicasets(uid) if kind == "Deployment" else []
        revisions = self._cache.owned_revisions(uid) if kind in REVISIONED_KINDS else []
        observation = observe_workload(kind, change.obj, previous, replicasets, baseline=baseline,
                                       revisions=revisions)
        records: list[Record] = []
        facts = _built(change.obj)
        if observation.report is not None and kind in self.settings.rollouts.kinds:
            entity = self._mapper.entity(WorkloadRef.of(kind, change.obj))
            if entity is None:
                metrics.K8S_UNMAPPED.labels(self.name, kind).inc()
                log.info("k8s_unmapped", source=self.name, kind=kind, workload=f"{namespace}/{name}",
                         report=observation.report)
            else:
                record = deploy_record(self.settings.rollouts, observation, kind, change.obj, source=self.name,
                                       cluster=self.settings.cluster, entity=entity,
                                       environment=await self._environment(namespace))
                if record is not None:
                    records.extend(await self._lineage.enrich([record], facts))
                    metrics.K8S_ROLLOUTS_EMITTED.labels(self.name, observation.report).inc()
        updates = {key: observation.state.to_json()} if observation.state != previous else {}
        # What the workload says its image was built from is written with its records.
        learned = self._lineage.updates(facts)
        self._memory.stage(records, {**updates, **learned})
        if learned:
            await self._lineage.bound(len(learned))

    async def _on_event(self, change: Change, *, baseline: bool) -> None:
        event = normalize_event(change.obj)
        if event is None:
            return
        if change.type == "DELETED":
            key = self._events.count_key(event.namespace, event.uid)
            if key in self._events.counts:
                self._memory.stage([], {key: ""})
            return
        metrics.K8S_EVENTS_SEEN.labels(self.name, event.type or "unknown").inc()
        if not self._events.accepts(event) or self._events.new_occurrences(event) <= 0:
            return
        workload = await self._resolver.resolve(event.regarding)
        entity = self._mapper.entity(workload)
        if entity is None and not baseline:
            metrics.K8S_UNMAPPED.labels(self.name, workload.kind).inc()
            log.info("k8s_unmapped", source=self.name, kind=workload.kind,
                     workload=f"{workload.namespace}/{workload.name}", reason=event.reason)
        out = self._events.observe(event, workload, entity, baseline=baseline, now=time.time())
        self._memory.stage(out.records, out.updates)

    async def _environment(self, namespace: str) -> str:
        label = self.settings.environment_namespace_label
        fallback = self.settings.environment or self.settings.cluster
        if not label:
            return fallback
        cached = self._namespaces.get(namespace)
        if cached is None or time.monotonic() - cached[0] > NAMESPACE_TTL:
            try:
                labels = labels_of(await call_raw(self._core.read_namespace, namespace))
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("k8s_namespace_lookup_failed", source=self.name, namespace=namespace, error=repr(exc))
                labels = cached[1] if cached else {}
            cached = (time.monotonic(), labels)
            self._namespaces[namespace] = cached
        return cached[1].get(label) or fallback


def _built(obj: JsonObject) -> list[Fact]:
    """The OCI revision annotation of a workload (or its pod template): its first image's commit."""
    revision = resolve_value([f"annotation:{OCI_REVISION}"], obj)
    first = next((str(c.get("image")) for c in containers(obj) if c.get("image")), None)
    return [Built(first, revision)] if revision and first else []
