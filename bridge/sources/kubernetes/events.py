"""Kubernetes Events -> custom events on the entity of the owning workload, repeats aggregated.

Both Event APIs are read raw: ``events.k8s.io/v1`` (``regarding``, ``note``, ``series``,
``deprecatedCount``) and ``core/v1`` (``involvedObject``, ``message``, ``count``); they are two
views of the same stored objects. An Event object is updated in place when its occurrence
repeats (``count`` / ``series.count`` goes up), so the number of *new* occurrences of an update is
its count minus the count remembered for that event uid. Remembering ``uid -> count`` in the
bridge's database is what makes a restart or a re-list emit nothing that was already handled,
whatever the age of the event: there is no wall-clock "max event age" cut-off.

Aggregation is per (entity, workload, reason), so ten crash-looping pods of one Deployment are one
story. The first occurrence opens a window and becomes one custom event; further occurrences
until the window ends only raise the window's count. When the window ends, the count is sent as
one point of the optional count metric. The next occurrence after that opens a new window.

The owning workload of a Pod is found through ownerReferences (Pod -> ReplicaSet -> Deployment,
or Pod -> StatefulSet/DaemonSet/Job): Pods are read on demand (cached), ReplicaSets and
workloads come from the streams' caches. A Pod already deleted is matched by the naming of its
controller's pods (``<replicaset>-<5 chars>``, ``<statefulset>-<ordinal>``).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import structlog
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge import metrics
from bridge.records import EventRecord, MetricRecord, Provenance, Record, parse_timestamp, record_id
from bridge.sources.kubernetes.rollouts import check_placeholders
from bridge.sources.kubernetes.watch import JsonObject, call_raw, meta
from bridge.sources.kubernetes.workloads import (
    WORKLOAD_RESOURCES,
    WorkloadCache,
    WorkloadRef,
    annotations_of,
    controller_of,
    labels_of,
)

log = structlog.get_logger("bridge.kubernetes")


_TITLE_FIELDS = ("reason", "type", "kind", "object", "namespace", "workload", "workload_kind", "entity", "cluster",
                 "count")
_WORKLOAD_KINDS = frozenset(WORKLOAD_RESOURCES.values())


class EventSettings(BaseModel):
    """``events:`` of a kubernetes source."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Turn Kubernetes Events into custom events.")
    api: Literal["auto", "events.k8s.io", "core"] = Field(
        "auto", description="Event API to watch; auto: events.k8s.io/v1 when served, else core/v1."
    )
    types: list[str] = Field(default_factory=lambda: ["Warning"], description="Event types to keep.")
    reasons: list[str] = Field(default_factory=list, description="Reasons to keep (empty: all).")
    exclude_reasons: list[str] = Field(default_factory=list, description="Reasons to drop.")
    involved_kinds: list[str] = Field(
        default_factory=lambda: ["Pod", "ReplicaSet", "Deployment", "StatefulSet", "DaemonSet"],
        description="Kinds of the object an event is about (empty: all).",
    )
    window_seconds: float = Field(600.0, gt=0, description="Repeats within this long after a first occurrence are aggregated.")
    count_metric: str | None = Field(
        None, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$", min_length=2,
        description="Custom metric key receiving each window's occurrence count (unset: no metric).",
    )
    event_type: str = Field("{reason}", min_length=1, description="Custom event type; placeholders as in title.")
    title: str = Field("{reason}: {workload_kind} {namespace}/{workload}",
                       description=f"Custom event title; placeholders: {', '.join(_TITLE_FIELDS)}.")

    @field_validator("title", "event_type")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return check_placeholders(value, _TITLE_FIELDS)


@dataclass(frozen=True)
class ObjectRef:
    """What an event is about."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class KubeEvent:
    """An Event object of either API, reduced to what the bridge uses."""

    uid: str
    namespace: str
    type: str
    reason: str
    note: str
    regarding: ObjectRef
    count: int
    last_seen: datetime | None
    controller: str


def _time(*values: Any) -> datetime | None:
    for value in values:
        if value:
            try:
                return parse_timestamp(str(value))
            except ValueError:
                continue
    return None


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def normalize_event(obj: JsonObject) -> KubeEvent | None:
    """Read an Event of either API; ``None`` when it has no uid."""
    m = meta(obj)
    uid = str(m.get("uid") or "")
    if not uid:
        return None
    series: JsonObject = obj["series"] if isinstance(obj.get("series"), dict) else {}
    if "regarding" in obj or str(obj.get("apiVersion", "")).startswith("events.k8s.io"):
        ref: JsonObject = obj.get("regarding") or {}
        note = obj.get("note")
        count = max(_count(series.get("count")), _count(obj.get("deprecatedCount")), 1)
        last = _time(series.get("lastObservedTime"), obj.get("deprecatedLastTimestamp"), obj.get("eventTime"),
                     m.get("creationTimestamp"))
        controller = obj.get("reportingController") or (obj.get("deprecatedSource") or {}).get("component")
    else:
        ref = obj.get("involvedObject") or {}
        note = obj.get("message")
        count = max(_count(series.get("count")), _count(obj.get("count")), 1)
        last = _time(series.get("lastObservedTime"), obj.get("lastTimestamp"), obj.get("eventTime"),
                     obj.get("firstTimestamp"), m.get("creationTimestamp"))
        controller = (obj.get("source") or {}).get("component") or obj.get("reportingComponent")
    regarding = ObjectRef(str(ref.get("kind") or ""), str(ref.get("namespace") or m.get("namespace") or ""),
                          str(ref.get("name") or ""))
    return KubeEvent(uid, str(m.get("namespace") or ""), str(obj.get("type") or ""), str(obj.get("reason") or ""),
                     str(note or ""), regarding, count, last, str(controller or ""))


class OwnerResolver:
    """Finds the workload an object belongs to (see the module docstring)."""

    def __init__(self, core: CoreV1Api, cache: WorkloadCache, *, source: str, size: int = 4096) -> None:
        self._core = core
        self._cache = cache
        self._source = source
        self._size = size
        # (namespace, pod) -> its controller reference (kind, name), or the pod itself when it has none
        self._pods: OrderedDict[tuple[str, str], tuple[str, str, dict[str, str], dict[str, str]]] = OrderedDict()

    async def resolve(self, ref: ObjectRef) -> WorkloadRef:
        """The owning workload of ``ref`` (the object itself when it has no known owner)."""
        if ref.kind in _WORKLOAD_KINDS:
            return self._cache.workload(ref.kind, ref.namespace, ref.name)
        if ref.kind == "ReplicaSet":
            return self._cache.owner_of_replicaset(ref.namespace, ref.name) or WorkloadRef(
                "ReplicaSet", ref.namespace, ref.name
            )
        if ref.kind == "Pod":
            return await self._pod_owner(ref.namespace, ref.name)
        return WorkloadRef(ref.kind, ref.namespace, ref.name)

    async def _pod_owner(self, namespace: str, name: str) -> WorkloadRef:
        key = (namespace, name)
        entry = self._pods.get(key)
        if entry is None:
            entry = await self._read_pod(namespace, name)
            if entry is None:
                guess = self._cache.guess_pod_owner(namespace, name)
                return guess or WorkloadRef("Pod", namespace, name)
            self._pods[key] = entry
            while len(self._pods) > self._size:
                self._pods.popitem(last=False)
        else:
            self._pods.move_to_end(key)
        kind, owner, labels, annotations = entry
        if kind == "Pod":
            return WorkloadRef("Pod", namespace, name, labels, annotations)
        if kind == "ReplicaSet":
            return self._cache.owner_of_replicaset(namespace, owner) or WorkloadRef("ReplicaSet", namespace, owner)
        if kind in _WORKLOAD_KINDS:
            return self._cache.workload(kind, namespace, owner)
        return WorkloadRef(kind, namespace, owner)

    async def _read_pod(self, namespace: str, name: str) -> tuple[str, str, dict[str, str], dict[str, str]] | None:
        try:
            pod = await call_raw(self._core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                metrics.K8S_API_ERRORS.labels(self._source, str(exc.status or 0)).inc()
                log.warning("k8s_pod_lookup_failed", source=self._source, pod=f"{namespace}/{name}",
                            status=exc.status)
            return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.K8S_API_ERRORS.labels(self._source, "0").inc()
            log.warning("k8s_pod_lookup_failed", source=self._source, pod=f"{namespace}/{name}", error=repr(exc))
            return None
        ref = controller_of(pod)
        if ref is None:
            return ("Pod", name, labels_of(pod), annotations_of(pod))
        return (str(ref.get("kind") or ""), str(ref.get("name") or ""), {}, {})


@dataclass
class Window:
    """An aggregation window of one (entity, workload, reason)."""

    start: float
    count: int
    entity: str
    workload: str
    reason: str

    def to_json(self) -> str:
        """The persisted form."""
        return json.dumps({"start": self.start, "count": self.count, "entity": self.entity,
                           "workload": self.workload, "reason": self.reason}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Window:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(float(data["start"]), int(data["count"]), str(data["entity"]), str(data["workload"]),
                   str(data["reason"]))


@dataclass
class Outcome:
    """Records to send and state to remember (key -> value; ``""`` forgets the key)."""

    records: list[Record] = field(default_factory=list)
    updates: dict[str, str] = field(default_factory=dict)


class EventAggregator:
    """The per-uid counts and the windows, and the records they lead to."""

    def __init__(self, settings: EventSettings, *, source: str, cluster: str, prefix: str) -> None:
        self.settings = settings
        self.source = source
        self.cluster = cluster
        self._count_prefix = prefix + "ev/"
        self._window_prefix = prefix + "win/"
        self.counts: dict[str, int] = {}
        self.windows: dict[str, Window] = {}

    # -- memory ---------------------------------------------------------------------------------

    def owns(self, key: str) -> bool:
        """Whether a state key belongs to the events' memory."""
        return key.startswith((self._count_prefix, self._window_prefix))

    def apply(self, key: str, value: str) -> None:
        """Mirror one state entry (when loading, and when an outcome is staged for writing)."""
        if key.startswith(self._count_prefix):
            if value:
                self.counts[key] = int(value)
            else:
                self.counts.pop(key, None)
        elif key.startswith(self._window_prefix):
            if value:
                self.windows[key] = Window.from_json(value)
            else:
                self.windows.pop(key, None)

    def count_key(self, namespace: str, uid: str) -> str:
        """State key of an event's handled count."""
        return f"{self._count_prefix}{namespace}/{uid}"

    def forget_absent(self, namespace: str | None, present: set[str]) -> dict[str, str]:
        """Forget counts of events that no longer exist (in ``namespace``, or anywhere)."""
        scope = self._count_prefix + (f"{namespace}/" if namespace else "")
        return {key: "" for key in self.counts if key.startswith(scope) and key.rsplit("/", 1)[1] not in present}

    # -- events ---------------------------------------------------------------------------------

    def accepts(self, event: KubeEvent) -> bool:
        """Whether the filters keep this event."""
        s = self.settings
        return (
            event.type in s.types
            and (not s.reasons or event.reason in s.reasons)
            and event.reason not in s.exclude_reasons
            and (not s.involved_kinds or event.regarding.kind in s.involved_kinds)
        )

    def new_occurrences(self, event: KubeEvent) -> int:
        """Occurrences not handled yet (0: an update that repeats what is known)."""
        return event.count - self.counts.get(self.count_key(event.namespace, event.uid), 0)

    def observe(self, event: KubeEvent, workload: WorkloadRef, entity: str | None, *, baseline: bool,
                now: float) -> Outcome:
        """Handle an event with new occurrences (see the module docstring)."""
        out = Outcome(updates={self.count_key(event.namespace, event.uid): str(event.count)})
        if entity is None:
            return out
        delta = self.new_occurrences(event)
        target = f"{workload.kind}/{workload.namespace}/{workload.name}"
        digest = hashlib.sha256(f"{entity}\x1f{target}\x1f{event.reason}".encode()).hexdigest()[:24]
        key = self._window_prefix + digest
        window = self.windows.get(key)
        is_open = window is not None and now < window.start + self.settings.window_seconds
        if baseline:
            # Keep aggregating what was already going on, so a restart or a new leader does not
            # announce a running crash loop again; the count of that window starts at zero.
            seen = event.last_seen.timestamp() if event.last_seen else None
            if not is_open and seen is not None and now - seen < self.settings.window_seconds:
                out.updates[key] = Window(seen, 0, entity, target, event.reason).to_json()
            return out
        if window is not None and is_open:
            # Memory changes only through apply(), with the rest of the outcome.
            out.updates[key] = Window(window.start, window.count + delta, entity, target, event.reason).to_json()
            metrics.K8S_EVENTS_AGGREGATED.labels(self.source).inc(delta)
            return out
        if window is not None:
            out.records.extend(self._close(key, window).records)
        out.updates[key] = Window(now, delta, entity, target, event.reason).to_json()
        out.records.append(self._event_record(event, workload, entity))
        metrics.K8S_EVENTS_EMITTED.labels(self.source).inc()
        return out

    def _event_record(self, event: KubeEvent, workload: WorkloadRef, entity: str) -> EventRecord:
        fields = {"reason": event.reason, "type": event.type, "kind": event.regarding.kind,
                  "object": event.regarding.name, "namespace": event.namespace, "workload": workload.name,
                  "workload_kind": workload.kind, "entity": entity, "cluster": self.cluster, "count": event.count}
        involved = f"{event.regarding.kind} {event.regarding.name}"
        return EventRecord(
            id=record_id("k8s", self.cluster, "event", event.uid, event.count),
            entity=entity,
            provenance=Provenance(source=self.source, delivery_id=f"event/{event.uid}/{event.count}"),
            type=self.settings.event_type.format(**fields),
            title=self.settings.title.format(**fields),
            timestamp=event.last_seen or datetime.now(UTC),
            description=f"{involved}: {event.note}"[:4000] if event.note else involved,
            custom_data={"cluster": self.cluster, "namespace": event.namespace, "reason": event.reason,
                         "workload": f"{workload.kind}/{workload.name}", "object": involved,
                         "count": event.count, "eventUid": event.uid, "reportingController": event.controller},
        )

    # -- windows --------------------------------------------------------------------------------

    def due(self, now: float) -> list[str]:
        """Keys of windows that have ended."""
        return [k for k, w in self.windows.items() if now >= w.start + self.settings.window_seconds]

    def close(self, key: str) -> Outcome:
        """End a window: forget it, and send its count when a count metric is configured."""
        window = self.windows.get(key)
        return self._close(key, window) if window is not None else Outcome()

    def _close(self, key: str, window: Window) -> Outcome:
        out = Outcome(updates={key: ""})
        metric = self.settings.count_metric
        if metric and window.count > 0:
            out.records.append(MetricRecord(
                id=record_id("k8s", self.cluster, "event-count", key, window.start),
                entity=window.entity,
                provenance=Provenance(source=self.source, delivery_id=f"window/{key.rsplit('/', 1)[1]}"),
                key=metric,
                timestamp=datetime.fromtimestamp(window.start, UTC),
                value=float(window.count),
            ))
            metrics.K8S_COUNT_POINTS.labels(self.source).inc()
        return out
