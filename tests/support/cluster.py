"""Plays kube-controller-manager and kubelet against the fake apiserver, which has no controllers.

:class:`Cluster` writes what the real controllers would: a Deployment's ReplicaSets (one per pod
template, named ``<deployment>-<pod-template-hash>``, revision annotations, a reused ReplicaSet
getting ``deployment.kubernetes.io/revision-history`` on rollback), Pods owned by them, the
Deployment's status through a rollout (progressing, then complete, or ProgressDeadlineExceeded),
the ControllerRevisions of StatefulSets and DaemonSets (as their controllers keep history: a new
template gets a new revision numbered max+1, a template an existing revision holds reuses it with
its number raised to max+1 and its creationTimestamp kept, beyond ``revisionHistoryLimit`` the
oldest are deleted) and their status through a rollout, and kubelet-style core/v1 Warning events
whose ``count`` goes up on every repeat.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tests.support.apiserver import FakeApiServer

JsonObject = dict[str, Any]
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
APPS = "apps/v1"
REVISIONED = Literal["StatefulSet", "DaemonSet"]
#: Nodes a DaemonSet runs on.
NODES = 3


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def controller_hash(template: JsonObject) -> str:
    """Stands in for the controller's FNV hash of the whole template (restartedAt included)."""
    return hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _owner(obj: JsonObject) -> JsonObject:
    m = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": m["name"], "uid": m["uid"],
            "controller": True, "blockOwnerDeletion": True}


class Cluster:
    """Controllers of one fake apiserver (see the module docstring)."""

    def __init__(self, server: FakeApiServer, namespace: str = "shop") -> None:
        self.server = server
        self.namespace = namespace
        self._last_revision_at: datetime | None = None

    # -- deployments --------------------------------------------------------------------------

    def create_deployment(self, name: str, *, image: str, replicas: int = 2,
                          annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                          template_labels: dict[str, str] | None = None) -> JsonObject:
        """Create a Deployment and complete its first rollout."""
        obj = {
            "apiVersion": APPS, "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace, "annotations": dict(annotations or {}),
                         "labels": dict(labels or {})},
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": 600,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name, **(template_labels or {})}},
                    "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"}]},
                },
            },
        }
        self.server.create(obj)
        return self.reconcile(name)

    def deployment(self, name: str) -> JsonObject:
        obj = self.server.get(APPS, "Deployment", name, namespace=self.namespace)
        assert obj is not None, name
        return obj

    def _change(self, name: str, mutate: Any, *, complete: bool = True, fail: bool = False) -> JsonObject:
        obj = self.deployment(name)
        mutate(obj["spec"])
        self.server.update(obj)
        return self.reconcile(name, complete=complete, fail=fail)

    def set_image(self, name: str, image: str, **kwargs: Any) -> JsonObject:
        """``kubectl set image``, then the rollout."""
        def mutate(spec: JsonObject) -> None:
            spec["template"]["spec"]["containers"][0]["image"] = image
        return self._change(name, mutate, **kwargs)

    def scale(self, name: str, replicas: int, **kwargs: Any) -> JsonObject:
        """``kubectl scale``."""
        def mutate(spec: JsonObject) -> None:
            spec["replicas"] = replicas
        return self._change(name, mutate, **kwargs)

    def restart(self, name: str, **kwargs: Any) -> JsonObject:
        """``kubectl rollout restart``: a new restartedAt annotation on the pod template."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"

        def mutate(spec: JsonObject) -> None:
            template_meta = spec["template"].setdefault("metadata", {})
            template_meta.setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = stamp
        return self._change(name, mutate, **kwargs)

    def undo(self, name: str, **kwargs: Any) -> JsonObject:
        """``kubectl rollout undo``: the template of the previous revision's ReplicaSet."""
        replicasets = sorted(self.replicasets(name), key=lambda rs: int(rs["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"]))
        previous = copy.deepcopy(replicasets[-2]["spec"]["template"])
        previous["metadata"]["labels"].pop("pod-template-hash")

        def mutate(spec: JsonObject) -> None:
            spec["template"] = previous
        return self._change(name, mutate, **kwargs)

    def replicasets(self, name: str) -> list[JsonObject]:
        uid = self.deployment(name)["metadata"]["uid"]
        return [rs for rs in self.server.objects(APPS, "ReplicaSet", namespace=self.namespace)
                if any(ref["uid"] == uid for ref in rs["metadata"].get("ownerReferences", []))]

    def reconcile(self, name: str, *, complete: bool = True, fail: bool = False) -> JsonObject:
        """What the deployment controller does for the Deployment's current spec."""
        deployment = self.deployment(name)
        spec = deployment["spec"]
        replicas = int(spec["replicas"])
        template = spec["template"]
        pod_hash = controller_hash(template)
        owned = self.replicasets(name)
        revisions = [int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for rs in owned]
        latest = max(revisions, default=0)
        current = next((rs for rs in owned if rs["metadata"]["labels"]["pod-template-hash"] == pod_hash), None)
        if current is None:
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
            current = self.server.create({
                "apiVersion": APPS, "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{pod_hash}", "namespace": self.namespace,
                    "labels": dict(rs_template["metadata"]["labels"]),
                    "annotations": {"deployment.kubernetes.io/revision": str(latest + 1),
                                    "deployment.kubernetes.io/desired-replicas": str(replicas)},
                    "ownerReferences": [_owner(deployment)],
                },
                "spec": {"replicas": 0, "selector": {"matchLabels": dict(rs_template["metadata"]["labels"])},
                         "template": rs_template},
            })
        else:
            annotations = current["metadata"]["annotations"]
            revision = int(annotations["deployment.kubernetes.io/revision"])
            if revision != latest:
                history = [h for h in annotations.get("deployment.kubernetes.io/revision-history", "").split(",") if h]
                annotations["deployment.kubernetes.io/revision-history"] = ",".join([*history, str(revision)])
                annotations["deployment.kubernetes.io/revision"] = str(latest + 1)
                current = self.server.update(current)
        generation = deployment["metadata"]["generation"]
        old_pods = sum(int(rs["spec"].get("replicas", 0)) for rs in owned if rs["metadata"]["uid"] !=
                       current["metadata"]["uid"])
        deployment["status"] = {
            "observedGeneration": generation, "replicas": old_pods + 1, "updatedReplicas": min(1, replicas),
            "readyReplicas": old_pods, "availableReplicas": old_pods,
            "conditions": [self._condition("Progressing", "True", "ReplicaSetUpdated",
                                           f'ReplicaSet "{current["metadata"]["name"]}" is progressing.')],
        }
        deployment = self.server.update(deployment)
        if fail:
            deployment["status"]["conditions"] = [self._condition(
                "Progressing", "False", "ProgressDeadlineExceeded",
                f'ReplicaSet "{current["metadata"]["name"]}" has timed out progressing.')]
            return self.server.update(deployment)
        if not complete:
            return deployment
        for rs in owned:
            if rs["metadata"]["uid"] != current["metadata"]["uid"] and rs["spec"].get("replicas"):
                rs["spec"]["replicas"] = 0
                rs["status"] = {"replicas": 0, "observedGeneration": rs["metadata"].get("generation", 1)}
                self.server.update(rs)
        current = self.server.get(APPS, "ReplicaSet", current["metadata"]["name"], namespace=self.namespace) or current
        current["spec"]["replicas"] = replicas
        current["status"] = {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}
        current = self.server.update(current)
        self._pods_for(current, replicas)
        deployment["status"] = {
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                self._condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
                self._condition("Progressing", "True", "NewReplicaSetAvailable",
                                f'ReplicaSet "{current["metadata"]["name"]}" has successfully progressed.'),
            ],
        }
        return self.server.update(deployment)

    @staticmethod
    def _condition(kind: str, status: str, reason: str, message: str) -> JsonObject:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": now(), "lastTransitionTime": now()}

    def _pods_for(self, rs: JsonObject, replicas: int) -> None:
        existing = [p for p in self.server.objects("v1", "Pod", namespace=self.namespace)
                    if any(ref["uid"] == rs["metadata"]["uid"] for ref in p["metadata"].get("ownerReferences", []))]
        for _ in range(replicas - len(existing)):
            suffix = "".join(random.choices(_ALPHABET, k=5))
            self.server.create({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{rs['metadata']['name']}-{suffix}", "namespace": self.namespace,
                             "labels": dict(rs["spec"]["template"]["metadata"]["labels"]),
                             "ownerReferences": [_owner(rs)]},
                "spec": copy.deepcopy(rs["spec"]["template"]["spec"]),
                "status": {"phase": "Running"},
            })

    def pods(self, name: str) -> list[JsonObject]:
        """Pods of the Deployment's current ReplicaSet."""
        rs_names = {rs["metadata"]["name"] for rs in self.replicasets(name) if rs["spec"].get("replicas")}
        return [p for p in self.server.objects("v1", "Pod", namespace=self.namespace)
                if any(ref["name"] in rs_names for ref in p["metadata"].get("ownerReferences", []))]

    # -- statefulsets and daemonsets -----------------------------------------------------------

    def create_revisioned(self, kind: REVISIONED, name: str, *, image: str, replicas: int = 2,
                          history_limit: int = 10) -> JsonObject:
        """Create a StatefulSet or DaemonSet and complete its first rollout."""
        spec: JsonObject = {
            "selector": {"matchLabels": {"app": name}},
            "revisionHistoryLimit": history_limit,
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"}]}},
        }
        if kind == "StatefulSet":
            spec.update(replicas=replicas, serviceName=name)
        self.server.create({"apiVersion": APPS, "kind": kind,
                            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec})
        return self.reconcile_revisioned(kind, name)

    def workload(self, kind: str, name: str) -> JsonObject:
        obj = self.server.get(APPS, kind, name, namespace=self.namespace)
        assert obj is not None, (kind, name)
        return obj

    def set_revisioned_image(self, kind: REVISIONED, name: str, image: str, *, complete: bool = True) -> JsonObject:
        """``kubectl set image`` on a StatefulSet or DaemonSet, then the rollout."""
        obj = self.workload(kind, name)
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self.server.update(obj)
        return self.reconcile_revisioned(kind, name, complete=complete)

    def undo_revisioned(self, kind: REVISIONED, name: str, *, complete: bool = True) -> JsonObject:
        """``kubectl rollout undo``: apply the template of the revision before the newest one."""
        revisions = self.revisions(kind, name)
        previous = copy.deepcopy(revisions[-2]["data"]["spec"]["template"])
        previous.pop("$patch")
        previous["metadata"].pop("creationTimestamp", None)
        obj = self.workload(kind, name)
        obj["spec"]["template"] = previous
        self.server.update(obj)
        return self.reconcile_revisioned(kind, name, complete=complete)

    def revisions(self, kind: str, name: str) -> list[JsonObject]:
        """The workload's ControllerRevisions, oldest revision number first."""
        uid = self.workload(kind, name)["metadata"]["uid"]
        owned = [cr for cr in self.server.objects(APPS, "ControllerRevision", namespace=self.namespace)
                 if any(ref["uid"] == uid for ref in cr["metadata"].get("ownerReferences", []))]
        return sorted(owned, key=lambda cr: int(cr["revision"]))

    def _revision_time(self) -> str:
        # creationTimestamp has whole seconds and real revisions are minutes apart; a test makes
        # several within one second, so each new one is written at least a second after the last.
        stamp = datetime.now(UTC).replace(microsecond=0)
        if self._last_revision_at is not None and stamp <= self._last_revision_at:
            stamp = self._last_revision_at + timedelta(seconds=1)
        self._last_revision_at = stamp
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _update_revision(self, kind: str, name: str) -> JsonObject:
        """The controller's history step (statefulset getStatefulSetRevisions, daemon constructHistory)."""
        obj = self.workload(kind, name)
        template = copy.deepcopy(obj["spec"]["template"])
        # getPatch: the template as encoded (metadata.creationTimestamp null) plus the directive
        template.setdefault("metadata", {})["creationTimestamp"] = None
        data = {"spec": {"template": {**template, "$patch": "replace"}}}
        revisions = self.revisions(kind, name)
        latest = max((int(cr["revision"]) for cr in revisions), default=0)
        equal = [cr for cr in revisions if cr["data"] == data]
        if equal:
            current = equal[-1]
            if int(current["revision"]) != latest:
                current["revision"] = latest + 1
                current = self.server.update(current)
        else:
            digest = controller_hash(data)
            current = self.server.create({
                "apiVersion": APPS, "kind": "ControllerRevision",
                "metadata": {"name": f"{name}-{digest}", "namespace": self.namespace,
                             "creationTimestamp": self._revision_time(),
                             "labels": {**template["metadata"].get("labels", {}), "controller-revision-hash": digest},
                             "ownerReferences": [_owner(obj)]},
                "data": data, "revision": latest + 1,
            })
        old = [cr for cr in self.revisions(kind, name) if cr["metadata"]["name"] != current["metadata"]["name"]]
        for cr in old[:max(0, len(old) - int(obj["spec"].get("revisionHistoryLimit", 10)))]:
            self.server.delete(APPS, "ControllerRevision", cr["metadata"]["name"], namespace=self.namespace)
        return current

    def reconcile_revisioned(self, kind: REVISIONED, name: str, *, complete: bool = True) -> JsonObject:
        """What the StatefulSet or DaemonSet controller does for the workload's current spec."""
        revision = self._update_revision(kind, name)["metadata"]["name"]
        obj = self.workload(kind, name)
        generation = obj["metadata"]["generation"]
        before = (obj.get("status") or {}).get("currentRevision", revision)
        if kind == "StatefulSet":
            replicas = int(obj["spec"]["replicas"])
            done = replicas if complete else 0
            obj["status"] = {"observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
                             "currentReplicas": replicas - done, "updatedReplicas": done,
                             "currentRevision": revision if complete else before, "updateRevision": revision}
        else:
            done = NODES if complete else 0
            obj["status"] = {"observedGeneration": generation, "desiredNumberScheduled": NODES,
                             "currentNumberScheduled": NODES, "numberReady": NODES, "numberAvailable": NODES,
                             "updatedNumberScheduled": done, "numberMisscheduled": 0}
        return self.server.update(obj)

    # -- events -------------------------------------------------------------------------------

    def warning(self, pod: str, reason: str, message: str, *, count: int = 1, kind: str = "Pod") -> str:
        """A kubelet-style core/v1 Warning event about ``pod``; returns the event's name."""
        name = f"{pod}.{random.getrandbits(60):x}"
        self.server.create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": kind, "name": pod, "namespace": self.namespace},
            "reason": reason, "message": message, "type": "Warning", "count": count,
            "firstTimestamp": now(), "lastTimestamp": now(),
            "source": {"component": "kubelet", "host": "node-1"}, "reportingComponent": "kubelet",
        })
        return name

    def repeat(self, event: str, count: int) -> None:
        """The event happened again: its count and lastTimestamp go up, as the kubelet writes it."""
        obj = self.server.get("v1", "Event", event, namespace=self.namespace)
        assert obj is not None
        obj["count"] = count
        obj["lastTimestamp"] = now()
        self.server.update(obj)
