"""The resource types the fake apiserver serves, their discovery documents and Event views.

``core/v1`` and ``events.k8s.io/v1`` Events are one resource in a real cluster: both APIs
read and write the same stored objects and only the JSON shape differs. The fake stores
Events in the ``core/v1`` shape and converts on the way in and out with the same field
mapping as ``k8s.io/kubernetes/pkg/apis/events/v1/conversion.go``. It also reproduces how
Go serialises zero values (``"eventTime": null``, ``"regarding": {}``, ...), because
clients see exactly that on a real cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CORE_EVENTS",
    "EVENTS_V1",
    "RESOURCES",
    "ResourceType",
    "api_group_doc",
    "api_group_list_doc",
    "api_resource_list_doc",
    "api_versions_doc",
    "find_resource",
    "from_view",
    "group_versions",
    "to_view",
]

JsonObject = dict[str, Any]
FieldGetter = Callable[[JsonObject], str]

_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_STATUS_VERBS = ("get", "patch", "update")


def _stringify(value: Any) -> str:
    """Render a field value the way the apiserver's field sets do (Go formatting)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dotted(path: str) -> FieldGetter:
    """A getter for a dotted JSON path, returning "" when any step is missing."""
    steps = path.split(".")

    def get(obj: JsonObject) -> str:
        current: Any = obj
        for step in steps:
            if not isinstance(current, dict):
                return ""
            current = current.get(step)
        return _stringify(current)

    return get


def _first_non_empty(*getters: FieldGetter) -> FieldGetter:
    def get(obj: JsonObject) -> str:
        for getter in getters:
            if value := getter(obj):
                return value
        return ""

    return get


def _fields(*paths: str, **special: FieldGetter) -> dict[str, FieldGetter]:
    """Selectable fields: metadata.name/namespace (always), dotted paths, and special getters."""
    getters: dict[str, FieldGetter] = {
        "metadata.name": dotted("metadata.name"),
        "metadata.namespace": dotted("metadata.namespace"),
    }
    getters.update({path: dotted(path) for path in paths})
    getters.update(special)
    return getters


@dataclass(frozen=True)
class ResourceType:
    """One served REST resource (a group/version/plural) and how the apiserver treats it."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # Workload strategies bump metadata.generation when the spec changes (Deployments
    # also on annotation changes, because those are copied onto their ReplicaSets).
    tracks_generation: bool = False
    generation_on_annotations: bool = False
    # Events are the only type here whose registry allows PUT to create.
    allow_create_on_update: bool = False
    # Pods and Namespaces answer DELETE with the object; the rest with a Status.
    return_deleted_object: bool = False
    storage: str = ""
    selectable: Mapping[str, FieldGetter] = field(default_factory=_fields, compare=False, hash=False)

    @property
    def group_version(self) -> str:
        """``v1`` for the core group, ``<group>/<version>`` otherwise (the apiVersion)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        """Key of the shared store: two resource types with the same key see the same objects."""
        return self.storage or f"{self.group or 'core'}/{self.plural}"

    @property
    def qualified_name(self) -> str:
        """``pods`` or ``deployments.apps``, as used in apiserver error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def base_path(self) -> str:
        """``/api/v1`` or ``/apis/<group>/<version>``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None) -> str:
        """The URL path of the collection in ``namespace`` (or across all namespaces)."""
        if self.namespaced and namespace:
            return f"{self.base_path}/namespaces/{namespace}/{self.plural}"
        return f"{self.base_path}/{self.plural}"

    def field_value(self, view: JsonObject, name: str) -> str | None:
        """Value of a selectable field, or ``None`` if the apiserver does not support selecting it."""
        getter = self.selectable.get(name)
        return None if getter is None else getter(view)

    def discovery_entries(self) -> list[JsonObject]:
        """The ``APIResource`` entries of this resource for an ``APIResourceList``."""
        entry: JsonObject = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(_ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": list(_STATUS_VERBS),
                }
            )
        return entries


_EVENT_SOURCE_CORE = _first_non_empty(dotted("source.component"), dotted("reportingComponent"))
_EVENT_SOURCE_V1 = _first_non_empty(dotted("deprecatedSource.component"), dotted("reportingController"))

_REFERENCE_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")

CORE_EVENTS = ResourceType(
    group="",
    version="v1",
    plural="events",
    singular="event",
    kind="Event",
    namespaced=True,
    short_names=("ev",),
    allow_create_on_update=True,
    storage="events",
    selectable=_fields(
        *(f"involvedObject.{name}" for name in _REFERENCE_FIELDS),
        "reason",
        "reportingComponent",
        "type",
        source=_EVENT_SOURCE_CORE,
    ),
)

EVENTS_V1 = ResourceType(
    group="events.k8s.io",
    version="v1",
    plural="events",
    singular="event",
    kind="Event",
    namespaced=True,
    short_names=("ev",),
    allow_create_on_update=True,
    storage="events",
    selectable=_fields(
        *(f"regarding.{name}" for name in _REFERENCE_FIELDS),
        "reason",
        "reportingController",
        "type",
        source=_EVENT_SOURCE_V1,
    ),
)


def _workload(plural: str, singular: str, kind: str, short: str, *paths: str) -> ResourceType:
    return ResourceType(
        group="apps",
        version="v1",
        plural=plural,
        singular=singular,
        kind=kind,
        namespaced=True,
        short_names=(short,),
        categories=("all",),
        status_subresource=True,
        tracks_generation=True,
        generation_on_annotations=kind == "Deployment",
        selectable=_fields(*paths),
    )


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        group="",
        version="v1",
        plural="namespaces",
        singular="namespace",
        kind="Namespace",
        namespaced=False,
        short_names=("ns",),
        status_subresource=True,
        return_deleted_object=True,
        selectable=_fields("status.phase"),
    ),
    ResourceType(
        group="",
        version="v1",
        plural="pods",
        singular="pod",
        kind="Pod",
        namespaced=True,
        short_names=("po",),
        categories=("all",),
        status_subresource=True,
        return_deleted_object=True,
        selectable=_fields(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    CORE_EVENTS,
    _workload("deployments", "deployment", "Deployment", "deploy"),
    _workload("replicasets", "replicaset", "ReplicaSet", "rs", "status.replicas"),
    _workload("statefulsets", "statefulset", "StatefulSet", "sts"),
    _workload("daemonsets", "daemonset", "DaemonSet", "ds"),
    # The StatefulSet and DaemonSet controllers' history: no short name, category or status.
    ResourceType(
        group="apps",
        version="v1",
        plural="controllerrevisions",
        singular="controllerrevision",
        kind="ControllerRevision",
        namespaced=True,
    ),
    EVENTS_V1,
    ResourceType(
        group="coordination.k8s.io",
        version="v1",
        plural="leases",
        singular="lease",
        kind="Lease",
        namespaced=True,
    ),
)


def group_versions() -> list[str]:
    """Served group/versions in discovery order (core first)."""
    seen: list[str] = []
    for resource in RESOURCES:
        if resource.group_version not in seen:
            seen.append(resource.group_version)
    return seen


def find_resource(group_version: str, name: str) -> ResourceType | None:
    """Look a resource up by group/version and plural, singular, short name or kind."""
    lowered = name.lower()
    for resource in RESOURCES:
        if resource.group_version != group_version:
            continue
        if lowered in (resource.plural, resource.singular, resource.kind.lower(), *resource.short_names):
            return resource
    return None


def api_versions_doc(server_address: str) -> JsonObject:
    """``GET /api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_doc(group: str, versions: Iterable[str]) -> JsonObject:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def _named_groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for resource in RESOURCES:
        if resource.group:
            versions = groups.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
    return groups


def api_group_list_doc() -> JsonObject:
    """``GET /apis``."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(group, versions) for group, versions in _named_groups().items()],
    }


def api_group_doc(group: str) -> JsonObject | None:
    """``GET /apis/<group>``, or ``None`` when the group is not served."""
    versions = _named_groups().get(group)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group, versions)}


def api_resource_list_doc(group_version: str) -> JsonObject | None:
    """``GET /api/v1`` or ``GET /apis/<group>/<version>``, or ``None`` when not served."""
    entries: list[JsonObject] = []
    for resource in RESOURCES:
        if resource.group_version == group_version:
            entries.extend(resource.discovery_entries())
    if not entries:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


# core/v1 Event field -> events.k8s.io/v1 Event field, in the Go struct order of the latter.
_CORE_TO_V1 = (
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("type", "type"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
)

# How Go's encoding/json renders each Event field when it holds its zero value:
# "always" fields are emitted even when empty (structs without a pointer, and fields
# without omitempty), with the given default; the others are dropped when empty.
_ALWAYS = object()
_CORE_ORDER: tuple[tuple[str, Any], ...] = (
    ("involvedObject", {}),
    ("reason", None),
    ("message", None),
    ("source", {}),
    ("firstTimestamp", _ALWAYS),
    ("lastTimestamp", _ALWAYS),
    ("count", None),
    ("type", None),
    ("eventTime", _ALWAYS),
    ("series", None),
    ("action", None),
    ("related", None),
    ("reportingComponent", ""),
    ("reportingInstance", ""),
)
_V1_ORDER: tuple[tuple[str, Any], ...] = (
    ("eventTime", _ALWAYS),
    ("series", None),
    ("reportingController", None),
    ("reportingInstance", None),
    ("action", None),
    ("reason", None),
    ("regarding", {}),
    ("related", None),
    ("note", None),
    ("type", None),
    ("deprecatedSource", {}),
    ("deprecatedFirstTimestamp", _ALWAYS),
    ("deprecatedLastTimestamp", _ALWAYS),
    ("deprecatedCount", None),
)


def _render(source: JsonObject, order: tuple[tuple[str, Any], ...]) -> JsonObject:
    """Emit ``order``'s fields with Go zero-value rules (see ``_ALWAYS``)."""
    out: JsonObject = {}
    for key, default in order:
        value = source.get(key)
        if value in (None, "", 0) and not isinstance(value, bool):
            if default is _ALWAYS:
                out[key] = None
            elif default is not None:
                out[key] = copy.deepcopy(default) if value is None else value
            continue
        out[key] = copy.deepcopy(value)
    return out


def _event_core_view(stored: JsonObject) -> JsonObject:
    view: JsonObject = {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": copy.deepcopy(stored.get("metadata", {})),
    }
    view.update(_render(stored, _CORE_ORDER))
    known = {"kind", "apiVersion", "metadata", *(key for key, _ in _CORE_ORDER)}
    view.update({key: copy.deepcopy(value) for key, value in stored.items() if key not in known})
    return view


def _event_v1_view(stored: JsonObject) -> JsonObject:
    mapped = {v1_key: stored.get(core_key) for core_key, v1_key in _CORE_TO_V1}
    view: JsonObject = {
        "kind": "Event",
        "apiVersion": "events.k8s.io/v1",
        "metadata": copy.deepcopy(stored.get("metadata", {})),
    }
    view.update(_render(mapped, _V1_ORDER))
    return view


def to_view(resource: ResourceType, stored: JsonObject) -> JsonObject:
    """The object as ``resource``'s API returns it (a deep copy with kind/apiVersion set)."""
    if resource.storage_key == "events":
        return _event_v1_view(stored) if resource.group == "events.k8s.io" else _event_core_view(stored)
    view = copy.deepcopy(stored)
    view["kind"] = resource.kind
    view["apiVersion"] = resource.group_version
    return view


def from_view(resource: ResourceType, view: JsonObject) -> JsonObject:
    """Convert an object in ``resource``'s shape into the stored shape (a deep copy)."""
    obj = copy.deepcopy(view)
    if resource.storage_key != "events" or resource.group != "events.k8s.io":
        obj["kind"] = resource.kind
        obj["apiVersion"] = resource.group_version
        return obj
    stored: JsonObject = {"kind": "Event", "apiVersion": "v1", "metadata": obj.get("metadata", {})}
    for core_key, v1_key in _CORE_TO_V1:
        if v1_key in obj:
            stored[core_key] = obj[v1_key]
    return stored
