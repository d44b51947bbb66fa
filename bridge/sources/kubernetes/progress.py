"""Where a workload's rollout stands: the rules of ``kubectl rollout status``.

A Deployment is complete once its observed generation is current and every replica is updated
and available (``ProgressDeadlineExceeded`` is a failure); a StatefulSet once its replicas are
ready and its update revision is current (or its partition reached); a DaemonSet once every
scheduled pod is updated and available.
"""

from __future__ import annotations

from typing import Any, Literal

from bridge.sources.kubernetes.watch import JsonObject, meta


def as_int(value: Any) -> int:
    """An integer field of an API object (0 when unset or malformed)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def desired_replicas(kind: str, obj: JsonObject) -> int | None:
    """``spec.replicas`` (1 when unset, as defaulted); ``None`` for DaemonSets."""
    if kind == "DaemonSet":
        return None
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else as_int(value)


def condition(obj: JsonObject, kind: str) -> JsonObject | None:
    """The status condition of type ``kind``, if the object has one."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == kind:
            return cond
    return None


Progress = Literal["complete", "progressing", "failed"]


def rollout_progress(kind: str, obj: JsonObject) -> Progress:
    """Where the workload's rollout stands (the rules of ``kubectl rollout status``)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    generation = as_int(meta(obj).get("generation"))
    observed = as_int(status.get("observedGeneration"))
    if observed < generation or observed == 0:
        return "progressing"
    if kind == "Deployment":
        progressing = condition(obj, "Progressing")
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return "failed"
        replicas = desired_replicas(kind, obj) or 0
        updated = as_int(status.get("updatedReplicas"))
        if updated < replicas or as_int(status.get("replicas")) > updated or as_int(status.get("availableReplicas")) < updated:
            return "progressing"
        return "complete"
    if kind == "StatefulSet":
        replicas = desired_replicas(kind, obj) or 0
        if as_int(status.get("readyReplicas")) < replicas:
            return "progressing"
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return "complete"  # OnDelete: pods change only when deleted; nothing more to wait for
        partition = (strategy.get("rollingUpdate") or {}).get("partition")
        if partition is not None:
            return "complete" if as_int(status.get("updatedReplicas")) >= replicas - as_int(partition) else "progressing"
        if status.get("updateRevision") and status.get("updateRevision") != status.get("currentRevision"):
            return "progressing"
        return "complete"
    desired = as_int(status.get("desiredNumberScheduled"))
    if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate" and (
        as_int(status.get("updatedNumberScheduled")) < desired
    ):
        return "progressing"
    return "complete" if as_int(status.get("numberAvailable")) >= desired else "progressing"
