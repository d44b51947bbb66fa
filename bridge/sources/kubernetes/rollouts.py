"""Rollouts turned into deploys: classification against memory, and the records.

When a rollout counts as complete is :mod:`bridge.sources.kubernetes.progress`.

A rollout of a Deployment, StatefulSet or DaemonSet is reported once it completes (observed
generation current, all replicas updated and available; the rules of ``kubectl rollout status``)
and classified against what this workload looked like at its previous completed rollout:

* pod template changed to a template never seen before -> ``DEPLOY``;
* pod template changed to one an earlier revision had -> ``ROLLBACK``, and so is undoing a
  rollout that never completed (back to the template that ran before it);
* only ``kubectl.kubernetes.io/restartedAt`` changed -> ``RESTART``;
* only ``spec.replicas`` changed -> ``SCALE``.

Templates are compared by :func:`bridge.sources.kubernetes.templates.template_hash` (a restart is not a
new template; a ReplicaSet's or ControllerRevision's template hashes like its workload's). "An
earlier revision had it" means: the template was the completed one at an earlier rollout this
bridge saw, or the workload's own history says so, which lets a bridge whose memory is younger
than the revision (fresh install, new volume) recognize the rollback too:

* Deployments: the ReplicaSet with this template was current before - the deployment controller
  reuses that ReplicaSet and records its former revisions in
  ``deployment.kubernetes.io/revision-history``;
* StatefulSets and DaemonSets: a ControllerRevision of this template was created before a
  ControllerRevision of another template. Their controllers create a ControllerRevision when the
  workload gets a template no ControllerRevision holds, and on a return to a template one holds
  they reuse it (``revision`` goes up to the newest, ``creationTimestamp`` stays). A revision of
  another template created later means the workload had that other template after it had this
  one, so having this one again is a return. The usual witness is the revision of the template
  that ran before this rollout; any other does as well, so a rollback is still recognized when
  that one was pruned (``revisionHistoryLimit``) or is unknown. Not recognized (reported as
  ``DEPLOY``): a return to a template whose revision was pruned (the controller creates a new
  one), to a template whose revision is newer than every revision of another template still
  kept (A, B, back to A, then back to B: B's revision is the newest), and returns within the
  second (``creationTimestamp`` has whole seconds).

A rollout whose Progressing condition says ``ProgressDeadlineExceeded`` is reported once per
generation as a custom event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.records import (
    Deployer,
    DeployRecord,
    DeployType,
    EventRecord,
    Provenance,
    Record,
    record_id,
    utc_now,
)
from bridge.sources.kubernetes.progress import as_int, condition, desired_replicas, rollout_progress
from bridge.sources.kubernetes.templates import (
    check_value_sources,
    containers,
    pod_template,
    resolve_value,
    restarted_at,
    template_hash,
)
from bridge.sources.kubernetes.watch import JsonObject, meta
from bridge.sources.kubernetes.workloads import (
    REVISIONED_KINDS,
    WORKLOAD_RESOURCES,
    Revision,
    WorkloadKind,
    annotations_of,
)
from bridge.sources.lineage import OCI_REVISION

ALL_DEPLOY_TYPES: tuple[DeployType, ...] = ("DEPLOY", "ROLLBACK", "SCALE", "RESTART")
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
#: Earlier templates remembered per workload.
HISTORY_LIMIT = 25


_TITLE_FIELDS = ("type", "kind", "namespace", "name", "version", "image", "replicas", "previous_replicas",
                 "cluster", "environment", "revision", "summary")


def check_placeholders(value: str, fields: tuple[str, ...]) -> str:
    """``value`` if it is a format string over ``fields`` only, else :class:`ValueError`."""
    try:
        value.format(**dict.fromkeys(fields, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"unknown or malformed placeholder ({exc}); known: {', '.join(fields)}") from None
    return value


# -- settings -----------------------------------------------------------------------------------


class RolloutSettings(BaseModel):
    """``rollouts:`` of a kubernetes source."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Report completed rollouts as deploys.")
    kinds: list[WorkloadKind] = Field(
        default_factory=lambda: list(WORKLOAD_RESOURCES.values()), description="Workload kinds to report."
    )
    types: list[DeployType] = Field(
        default_factory=lambda: list(ALL_DEPLOY_TYPES),
        description="Deploy types to send (e.g. leave SCALE out when an autoscaler scales all day).",
    )
    title: str = Field("{summary}", description=f"Deploy title; placeholders: {', '.join(_TITLE_FIELDS)}.")
    sha: list[str] = Field(
        default_factory=lambda: ["annotation:cortex.io/git-sha", f"annotation:{OCI_REVISION}"],
        description="Where the git sha comes from (then: the commit its first image was built from, if learned)."
    )
    version: list[str] = Field(
        default_factory=lambda: ["label:app.kubernetes.io/version", "image_tag"],
        description="Where the version (title, customData) comes from.",
    )
    deployer: list[str] = Field(
        default_factory=lambda: ["annotation:cortex.io/deployer"], description="Where the deployer comes from."
    )
    report_failed: bool = Field(True, description="Report ProgressDeadlineExceeded as a custom event.")
    failed_event_type: str = Field("ROLLOUT_FAILED", min_length=1, description="Custom event type of a failure.")

    @field_validator("sha", "version", "deployer")
    @classmethod
    def _sources_valid(cls, value: list[str]) -> list[str]:
        return check_value_sources(value)

    @field_validator("title")
    @classmethod
    def _title_fields(cls, value: str) -> str:
        return check_placeholders(value, _TITLE_FIELDS)


# -- rollout state and classification -----------------------------------------------------------


@dataclass
class WorkloadState:
    """What the bridge remembers of one workload (persisted as JSON)."""

    uid: str
    generation: int
    hash: str | None
    restarted: str | None
    replicas: int | None
    history: list[str] = field(default_factory=list)
    failed: int | None = None
    #: template of a rollout that started but has not completed (undone -> ROLLBACK)
    attempt: str | None = None

    def to_json(self) -> str:
        """The persisted form."""
        return json.dumps({"uid": self.uid, "gen": self.generation, "hash": self.hash, "restarted": self.restarted,
                           "replicas": self.replicas, "hist": self.history, "failed": self.failed,
                           "attempt": self.attempt}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkloadState:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(str(data["uid"]), int(data["gen"]), data.get("hash"), data.get("restarted"),
                   data.get("replicas"), list(data.get("hist") or []), data.get("failed"), data.get("attempt"))


@dataclass(frozen=True)
class Observation:
    """What one look at a workload found: a report (or none) and the state to remember."""

    report: DeployType | Literal["FAILED"] | None
    state: WorkloadState
    previous: WorkloadState | None


def _revision(obj: JsonObject) -> int:
    return as_int(annotations_of(obj).get(REVISION))


def _previous_template(current: str, replicasets: list[JsonObject]) -> JsonObject | None:
    """The most recent ReplicaSet with another template: what was running before this rollout."""
    others = [rs for rs in replicasets if template_hash(pod_template(rs)) != current]
    return max(others, key=_revision) if others else None


def _was_current_before(obj: JsonObject, current: str, replicasets: list[JsonObject]) -> bool:
    """Whether the ReplicaSet of the current template had been the current one before (reused)."""
    revision = annotations_of(obj).get(REVISION)
    return any(
        annotations_of(rs).get(REVISION_HISTORY)
        and (template_hash(pod_template(rs)) == current or (revision and annotations_of(rs).get(REVISION) == revision))
        for rs in replicasets
    )


def _returned_to(current: str, revisions: Sequence[Revision]) -> bool:
    """Whether a ControllerRevision of another template was created after the first of ``current``."""
    mine = [r.created for r in revisions if r.template == current]
    return bool(mine) and any(r.template != current and r.created > min(mine) for r in revisions)


def _remember(history: list[str], template: str | None, current: str) -> list[str]:
    if template is None or template == current:
        return history
    return ([h for h in history if h != template] + [template])[-HISTORY_LIMIT:]


def observe_workload(
    kind: str,
    obj: JsonObject,
    previous: WorkloadState | None,
    replicasets: list[JsonObject],
    *,
    baseline: bool,
    revisions: Sequence[Revision] = (),
) -> Observation:
    """Classify a look at a workload against what was remembered of it (see the module docstring).

    ``replicasets``: a Deployment's ReplicaSets; ``revisions``: a StatefulSet's or DaemonSet's
    ControllerRevisions.

    ``baseline``: take the workload as it is as already reported (first start, hand-over). A
    rollout still running then is reported when it completes, against the ReplicaSet that ran
    before it (Deployments) or as a DEPLOY (no earlier template known) unless the
    ControllerRevisions show a return (StatefulSets, DaemonSets).
    """
    m = meta(obj)
    uid = str(m.get("uid") or "")
    generation = as_int(m.get("generation"))
    current = template_hash(pod_template(obj))
    restarted = restarted_at(obj)
    replicas = desired_replicas(kind, obj)
    progress = rollout_progress(kind, obj)
    if previous is not None and previous.uid != uid:
        previous = None  # deleted and re-created under the same name: a new workload
    if baseline:
        history = list(previous.history) if previous else []
        if progress == "complete":
            state = WorkloadState(uid, generation, current, restarted, replicas, history)
        else:
            before = _previous_template(current, replicasets) if kind == "Deployment" else None
            prior = template_hash(pod_template(before)) if before is not None else None
            state = WorkloadState(uid, 0, prior, restarted_at(before) if before is not None else None, replicas,
                                  _remember(history, prior, current))
            state.failed = generation if progress == "failed" else None
            state.attempt = current if prior is not None else None
        return Observation(None, state, previous)
    base = previous or WorkloadState(uid, 0, None, None, None)
    state = WorkloadState(base.uid, base.generation, base.hash, base.restarted, base.replicas, list(base.history),
                          base.failed, base.attempt)
    if progress != "complete" and base.hash is not None and current != base.hash:
        state.attempt = current
    if progress == "failed":
        if base.failed == generation:
            return Observation(None, state, previous)
        state.failed = generation
        return Observation("FAILED", state, previous)
    if progress != "complete" or generation <= base.generation:
        return Observation(None, state, previous)
    report: DeployType | None
    if base.hash is None or current != base.hash:
        seen = (current in base.history
                or (kind == "Deployment" and _was_current_before(obj, current, replicasets))
                or (kind in REVISIONED_KINDS and _returned_to(current, revisions)))
        report = "ROLLBACK" if seen else "DEPLOY"
    elif base.attempt is not None and base.attempt != current:
        report = "ROLLBACK"  # a rollout that never completed was undone: back to what ran before
    elif restarted != base.restarted:
        report = "RESTART"
    elif replicas != base.replicas:
        report = "SCALE"
    else:
        report = None  # a metadata-only change of the spec: nothing ran differently
    state = WorkloadState(uid, generation, current, restarted, replicas, _remember(base.history, base.hash, current))
    return Observation(report, state, previous)


# -- records ------------------------------------------------------------------------------------


def _completed_at(kind: str, obj: JsonObject) -> datetime:
    progressing = condition(obj, "Progressing")
    stamp = (progressing or {}).get("lastUpdateTime") if kind == "Deployment" else None
    if stamp and (progressing or {}).get("reason") == "NewReplicaSetAvailable":
        try:
            return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            pass
    return utc_now()


def _summary(report: DeployType, ns: str, name: str, version: str | None, replicas: int | None,
             previous_replicas: int | None) -> str:
    target = f"{ns}/{name}"
    if report == "DEPLOY":
        return f"Deploy {target}" + (f" {version}" if version else "")
    if report == "ROLLBACK":
        return f"Rollback {target}" + (f" to {version}" if version else "")
    if report == "SCALE":
        return f"Scale {target} from {previous_replicas} to {replicas} replicas"
    return f"Restart {target}"


def deploy_record(
    settings: RolloutSettings,
    observation: Observation,
    kind: str,
    obj: JsonObject,
    *,
    source: str,
    cluster: str,
    entity: str,
    environment: str | None,
) -> Record | None:
    """The record reporting ``observation`` (None when it reports nothing or its type is off)."""
    report = observation.report
    m = meta(obj)
    ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
    state = observation.state
    ident = (kind, ns, name, state.uid, as_int(m.get("generation")))
    provenance = Provenance(source=source, delivery_id=f"{kind}/{ns}/{name}@{ident[-1]}")
    images = {str(c.get("name")): str(c.get("image")) for c in containers(obj)}
    custom: dict[str, Any] = {"cluster": cluster, "namespace": ns, "kind": kind, "name": name,
                              "generation": ident[-1]}
    if report == "FAILED":
        if not settings.report_failed:
            return None
        cond = condition(obj, "Progressing") or {}
        stamp = cond.get("lastUpdateTime")
        return EventRecord(
            id=record_id("k8s", cluster, "rollout-failed", *ident), entity=entity, provenance=provenance,
            type=settings.failed_event_type, title=f"Rollout of {kind} {ns}/{name} failed",
            timestamp=stamp or utc_now(), description=str(cond.get("message") or "ProgressDeadlineExceeded"),
            custom_data={**custom, "reason": str(cond.get("reason") or ""), "images": images},
        )
    if report is None or report not in settings.types:
        return None
    version = resolve_value(settings.version, obj)
    previous_replicas = observation.previous.replicas if observation.previous else None
    summary = _summary(report, ns, name, version, state.replicas, previous_replicas)
    revision = annotations_of(obj).get(REVISION)
    first_image = next(iter(images.values()), "")
    title = settings.title.format(
        type=report, kind=kind, namespace=ns, name=name, version=version or "", image=first_image,
        replicas="" if state.replicas is None else state.replicas,
        previous_replicas="" if previous_replicas is None else previous_replicas,
        cluster=cluster, environment=environment or "", revision=revision or "", summary=summary,
    ).strip() or summary
    deployer = resolve_value(settings.deployer, obj)
    custom.update({"images": images, "templateHash": state.hash})
    for key, value in (("version", version), ("revision", revision), ("replicas", state.replicas),
                       ("previousReplicas", previous_replicas)):
        if value is not None:
            custom[key] = value
    return DeployRecord(
        id=record_id("k8s", cluster, *ident), entity=entity, provenance=provenance, title=title,
        timestamp=_completed_at(kind, obj), type=report, sha=resolve_value(settings.sha, obj),
        environment=environment,
        deployer=None if not deployer else (Deployer(email=deployer) if "@" in deployer else Deployer(name=deployer)),
        custom_data=custom,
    )
