"""Workloads, ReplicaSets and ControllerRevisions as the streams last saw them: references, owners, the cache.

Rollouts (:mod:`bridge.sources.kubernetes.rollouts`) read a Deployment's ReplicaSets and a StatefulSet's
or DaemonSet's ControllerRevisions from the cache; events (:mod:`bridge.sources.kubernetes.events`) find
the workload that owns the object they are about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from bridge.sources.kubernetes.templates import pod_template, template_hash
from bridge.sources.kubernetes.watch import JsonObject, meta

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
#: Watched resource (plural) -> kind.
WORKLOAD_RESOURCES: dict[str, WorkloadKind] = {
    "deployments": "Deployment",
    "statefulsets": "StatefulSet",
    "daemonsets": "DaemonSet",
}
#: Watched resources that only feed the cache (plural -> kind): no records, no memory of their own.
CACHED_RESOURCES: dict[str, str] = {
    "replicasets": "ReplicaSet",
    "controllerrevisions": "ControllerRevision",
}
#: Kinds whose history is kept in ControllerRevisions.
REVISIONED_KINDS = ("StatefulSet", "DaemonSet")


def labels_of(obj: JsonObject) -> dict[str, str]:
    """An object's labels."""
    return {str(k): str(v) for k, v in (meta(obj).get("labels") or {}).items()}


def annotations_of(obj: JsonObject) -> dict[str, str]:
    """An object's annotations."""
    return {str(k): str(v) for k, v in (meta(obj).get("annotations") or {}).items()}


def controller_of(obj: JsonObject) -> JsonObject | None:
    """The ownerReference marked ``controller: true``, if any."""
    for ref in meta(obj).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None


@dataclass(frozen=True)
class Revision:
    """What rollouts need of a ControllerRevision: the digest of its template, when it was created."""

    template: str
    created: datetime

    @classmethod
    def of(cls, obj: JsonObject) -> Revision | None:
        """The revision of a ControllerRevision (None without a parseable ``creationTimestamp``)."""
        try:
            created = datetime.fromisoformat(str(meta(obj).get("creationTimestamp") or "").replace("Z", "+00:00"))
        except ValueError:
            return None
        data = obj.get("data")
        return cls(template_hash(pod_template(data if isinstance(data, dict) else {})), created)


@dataclass(frozen=True)
class WorkloadRef:
    """The object whose Cortex entity an input belongs to (a workload, or the object itself)."""

    kind: str
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, kind: str, obj: JsonObject) -> WorkloadRef:
        """The reference of ``obj``, an object of ``kind``, with its labels and annotations."""
        m = meta(obj)
        return cls(kind, str(m.get("namespace") or ""), str(m.get("name") or ""), labels_of(obj), annotations_of(obj))


class WorkloadCache:
    """Workloads, ReplicaSets and ControllerRevisions as last seen by the streams (for owners,
    history and entities)."""

    def __init__(self) -> None:
        self.workloads: dict[tuple[str, str, str], JsonObject] = {}
        self.replicasets: dict[tuple[str, str], JsonObject] = {}
        # owner uid -> its ReplicaSets: a Deployment's status changes often, its history rarely
        self._owned: dict[str, set[tuple[str, str]]] = {}
        # owner uid -> (namespace, name) -> revision; only digests are kept, a revision's data is
        # a whole pod template
        self._revisions: dict[str, dict[tuple[str, str], Revision]] = {}
        self._revision_owner: dict[tuple[str, str], str] = {}

    def clear(self) -> None:
        """Forget everything (a new term lists every collection again)."""
        self.workloads.clear()
        self.replicasets.clear()
        self._owned.clear()
        self._revisions.clear()
        self._revision_owner.clear()

    def put(self, kind: str, obj: JsonObject) -> None:
        """Remember the latest state of an object."""
        m = meta(obj)
        ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
        if kind == "ControllerRevision":
            self.remove(kind, obj)  # its controller may have changed (adoption, orphaning)
            ref = controller_of(obj)
            revision = Revision.of(obj)
            if ref is not None and ref.get("kind") in REVISIONED_KINDS and revision is not None:
                owner = str(ref.get("uid"))
                self._revisions.setdefault(owner, {})[(ns, name)] = revision
                self._revision_owner[(ns, name)] = owner
        elif kind == "ReplicaSet":
            self.remove(kind, obj)
            self.replicasets[(ns, name)] = obj
            for ref in m.get("ownerReferences") or []:
                self._owned.setdefault(str(ref.get("uid")), set()).add((ns, name))
        else:
            self.workloads[(kind, ns, name)] = obj

    def remove(self, kind: str, obj: JsonObject) -> None:
        """Forget a deleted object."""
        m = meta(obj)
        ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
        if kind == "ControllerRevision":
            owner = self._revision_owner.pop((ns, name), None)
            revisions = self._revisions.get(owner) if owner is not None else None
            if owner is not None and revisions is not None:
                revisions.pop((ns, name), None)
                if not revisions:
                    del self._revisions[owner]
        elif kind == "ReplicaSet":
            old = self.replicasets.pop((ns, name), None)
            refs = (meta(old).get("ownerReferences") or []) if old is not None else []
            for ref in refs:
                owned = self._owned.get(str(ref.get("uid")))
                if owned is not None:
                    owned.discard((ns, name))
                    if not owned:
                        del self._owned[str(ref.get("uid"))]
        else:
            self.workloads.pop((kind, ns, name), None)

    def workload(self, kind: str, namespace: str, name: str) -> WorkloadRef:
        """A workload as known (without labels and annotations when it is not cached)."""
        obj = self.workloads.get((kind, namespace, name))
        return WorkloadRef.of(kind, obj) if obj is not None else WorkloadRef(kind, namespace, name)

    def owned_replicasets(self, owner_uid: str) -> list[JsonObject]:
        """The ReplicaSets a Deployment owns (its revision history)."""
        return [self.replicasets[key] for key in self._owned.get(owner_uid, ()) if key in self.replicasets]

    def owned_revisions(self, owner_uid: str) -> list[Revision]:
        """The ControllerRevisions a StatefulSet or DaemonSet controls (its revision history)."""
        return list(self._revisions.get(owner_uid, {}).values())

    def owner_of_replicaset(self, namespace: str, name: str) -> WorkloadRef | None:
        """The controller of a cached ReplicaSet (the ReplicaSet itself when it has none)."""
        rs = self.replicasets.get((namespace, name))
        if rs is None:
            return None
        ref = controller_of(rs)
        if ref is None:
            return WorkloadRef.of("ReplicaSet", rs)
        return self.workload(str(ref.get("kind")), namespace, str(ref.get("name")))

    def guess_pod_owner(self, namespace: str, pod: str) -> WorkloadRef | None:
        """Owner of a pod that no longer exists, from the naming of its controllers' pods."""
        for (ns, rs_name) in self.replicasets:
            suffix = pod[len(rs_name) + 1:]
            if ns == namespace and pod.startswith(rs_name + "-") and len(suffix) == 5 and suffix.isalnum():
                return self.owner_of_replicaset(ns, rs_name)
        for (kind, ns, name), obj in self.workloads.items():
            suffix = pod[len(name) + 1:]
            if ns != namespace or not pod.startswith(name + "-"):
                continue
            if (kind == "StatefulSet" and suffix.isdigit()) or (kind == "DaemonSet" and len(suffix) == 5):
                return WorkloadRef.of(kind, obj)
        return None
