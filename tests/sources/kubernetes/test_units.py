"""Settings, client configuration and the pure parts (templates, progress, events) on real objects."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.sources.base import SourceConfigError
from bridge.sources.kubernetes.events import normalize_event
from bridge.sources.kubernetes.progress import rollout_progress
from bridge.sources.kubernetes.rollouts import WorkloadState, observe_workload
from bridge.sources.kubernetes.settings import KubernetesSourceSettings, load_client_configuration
from bridge.sources.kubernetes.source import create
from bridge.sources.kubernetes.templates import resolve_value, template_hash
from bridge.sources.kubernetes.workloads import Revision, WorkloadCache
from tests.support.apiserver import FIXTURES_DIR, FakeApiServer, load_manifests

KSPAN = FIXTURES_DIR / "k8s-real" / "kspan"


def kspan(name: str) -> dict[str, Any]:
    [obj] = load_manifests(KSPAN / name)
    return obj


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollouts": {"version": ["image_digest"]}}, "use annotation:<key>"),
        ({"rollouts": {"title": "{nope}"}}, "unknown or malformed placeholder"),
        ({"events": {"title": "{reason} {oops}"}}, "unknown or malformed placeholder"),
        ({"leader_election": {"retry_period_seconds": 5, "renew_deadline_seconds": 4}}, "retry_period_seconds <"),
        ({"kubeconfig": "/nonexistent/kubeconfig"}, "does not exist"),
        ({"rollouts": {"enabled": False}, "events": {"enabled": False}}, "enable rollouts, events or both"),
        ({"entity": {"static": {"shop/a": "has space"}}}, "not a Cortex tag"),
        ({"events": {"count_metric": "bad key!"}}, "count_metric"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict[str, Any], message: str) -> None:
    config = {"name": "k8s", "type": "kubernetes", **overrides}
    with pytest.raises(SourceConfigError) as info:
        create(config, ctx=None)  # type: ignore[arg-type]  # validation fails before ctx is used
    assert "source 'k8s'" in str(info.value) and message in str(info.value)


def test_the_charts_example_source_is_valid() -> None:
    # deploy/examples/kubernetes-events.yaml uses the entity_annotation shorthand.
    settings = KubernetesSourceSettings.model_validate(
        {"name": "cluster", "type": "kubernetes", "entity_annotation": "cortex.io/tag",
         "environment": "production", "namespaces": []})
    assert settings.entity.keys == ["cortex.io/tag"]
    assert settings.leader_election.enabled and settings.rollouts.enabled and settings.events.enabled
    with pytest.raises(ValueError, match="not both"):
        KubernetesSourceSettings.model_validate({"name": "c", "entity_annotation": "a", "entity": {"keys": ["b"]}})


async def test_in_cluster_configuration_uses_the_service_account(tmp_path: Path) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token-1")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = KubernetesSourceSettings(name="k8s")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    configuration = await load_client_configuration(settings, environ=environ, token_file=str(token),
                                                    ca_file=str(ca))
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.ssl_ca_cert == str(ca)
    assert configuration.api_key["BearerToken"] == "Bearer sa-token-1"
    assert configuration.refresh_api_key_hook is not None  # re-reads rotated tokens


async def test_kubeconfig_wins_over_the_service_account(tmp_path: Path) -> None:
    async with FakeApiServer(token="kube-token") as server:
        path = server.write_kubeconfig(tmp_path / "config")
        settings = KubernetesSourceSettings(name="k8s", kubeconfig=path)
        configuration = await load_client_configuration(settings, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                                                           "KUBERNETES_SERVICE_PORT": "443"})
        assert configuration.host == server.url
        assert configuration.api_key["BearerToken"] == "Bearer kube-token"


def test_template_hash_ignores_restarts_and_the_controllers_label() -> None:
    deployment = kspan("apps.v1.Deployment.hello-world.with-status.yaml")
    template = deployment["spec"]["template"]
    restarted = copy.deepcopy(template)
    restarted["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z"}
    labelled = copy.deepcopy(template)
    labelled["metadata"]["labels"]["pod-template-hash"] = "6b9d85fbd6"
    assert template_hash(template) == template_hash(restarted) == template_hash(labelled)
    other = copy.deepcopy(template)
    other["spec"]["containers"][0]["image"] = "nginx:1.19.3-alpine"
    assert template_hash(other) != template_hash(template)


def controller_revision(workload: dict[str, Any], *, name: str, created: str, revision: int,
                        owner_kind: str = "StatefulSet") -> dict[str, Any]:
    """A ControllerRevision as the StatefulSet/DaemonSet controller writes it (getPatch, newRevision)."""
    template = copy.deepcopy(workload["spec"]["template"])
    template.setdefault("metadata", {})["creationTimestamp"] = None
    return {
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                     "labels": {"controller-revision-hash": name.rsplit("-", 1)[-1]},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": "web",
                                          "uid": workload["metadata"]["uid"], "controller": True}]},
        "data": {"spec": {"template": {**template, "$patch": "replace"}}},
        "revision": revision,
    }


def test_a_controller_revisions_template_hashes_like_its_workloads() -> None:
    deployment = kspan("apps.v1.Deployment.hello-world.with-status.yaml")
    data = controller_revision(deployment, name="web-5d8f7c9b4", created="2024-03-01T10:00:00Z", revision=1)["data"]
    assert data["spec"]["template"]["$patch"] == "replace"
    assert template_hash(data["spec"]["template"]) == template_hash(deployment["spec"]["template"])
    changed = copy.deepcopy(data)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.19.3-alpine"
    assert template_hash(changed["spec"]["template"]) != template_hash(deployment["spec"]["template"])


def test_the_cache_keeps_only_the_digest_and_age_of_revisions_of_statefulsets_and_daemonsets() -> None:
    deployment = kspan("apps.v1.Deployment.hello-world.with-status.yaml")
    uid = deployment["metadata"]["uid"]
    cache = WorkloadCache()
    first = controller_revision(deployment, name="web-1", created="2024-03-01T10:00:00Z", revision=1)
    cache.put("ControllerRevision", first)
    cache.put("ControllerRevision", controller_revision(deployment, name="vm-1", created="2024-03-01T10:00:00Z",
                                                       revision=1, owner_kind="VirtualMachine"))
    assert cache.owned_revisions(uid) == [
        Revision(template_hash(deployment["spec"]["template"]), datetime(2024, 3, 1, 10, tzinfo=UTC))]
    # Orphaned (owner deleted with propagation=orphan): no longer the workload's history.
    orphan = copy.deepcopy(first)
    orphan["metadata"]["ownerReferences"] = []
    cache.put("ControllerRevision", orphan)
    assert cache.owned_revisions(uid) == []
    cache.put("ControllerRevision", first)
    cache.remove("ControllerRevision", {"metadata": {"namespace": "default", "name": "web-1"}})
    assert cache.owned_revisions(uid) == []


def test_progress_of_real_objects() -> None:
    deployment = kspan("apps.v1.Deployment.hello-world.with-status.yaml")
    assert rollout_progress("Deployment", deployment) == "progressing"  # generation 4, observed 3
    deployment["status"]["observedGeneration"] = 4
    assert rollout_progress("Deployment", deployment) == "complete"
    deployment["status"]["conditions"][1].update(status="False", reason="ProgressDeadlineExceeded")
    assert rollout_progress("Deployment", deployment) == "failed"
    sts: dict[str, Any] = {"metadata": {"generation": 2}, "spec": {"replicas": 3},
           "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
                      "currentRevision": "db-5d8", "updateRevision": "db-7f9"}}
    assert rollout_progress("StatefulSet", sts) == "progressing"
    sts["status"]["currentRevision"] = "db-7f9"
    assert rollout_progress("StatefulSet", sts) == "complete"
    ds = {"metadata": {"generation": 5}, "spec": {},
          "status": {"observedGeneration": 5, "desiredNumberScheduled": 4, "updatedNumberScheduled": 4,
                     "numberAvailable": 3}}
    assert rollout_progress("DaemonSet", ds) == "progressing"
    ds["status"]["numberAvailable"] = 4
    assert rollout_progress("DaemonSet", ds) == "complete"


def test_baseline_of_a_rollout_in_progress_remembers_the_replicaset_that_ran_before() -> None:
    deployment = kspan("apps.v1.Deployment.hello-world.with-status.yaml")
    replicasets = [kspan("apps.v1.ReplicaSet.new.yaml"), kspan("apps.v1.ReplicaSet.old.yaml")]
    baseline = observe_workload("Deployment", deployment, None, replicasets, baseline=True)
    assert baseline.report is None
    # The running ReplicaSet (revision 3, nginx:1.19.3) is what the rollout started from.
    assert baseline.state.hash == template_hash(replicasets[0]["spec"]["template"])
    assert baseline.state.generation == 0
    deployment["status"]["observedGeneration"] = 4
    done = observe_workload("Deployment", deployment, baseline.state, replicasets, baseline=False)
    assert done.report == "ROLLBACK"
    again = observe_workload("Deployment", deployment, done.state, replicasets, baseline=False)
    assert again.report is None and again.state == done.state
    assert WorkloadState.from_json(done.state.to_json()) == done.state


def test_value_sources() -> None:
    obj = {"metadata": {"annotations": {"cortex.io/git-sha": "abc1234"}, "labels": {"team": "pay"}},
           "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/version": "9.9"}},
                                 "spec": {"containers": [
                                     {"name": "app", "image": "registry.local:5000/shop/app:1.2.3@sha256:ffee"},
                                     {"name": "proxy", "image": "envoyproxy/envoy"}]}}}}
    assert resolve_value(["annotation:cortex.io/git-sha"], obj) == "abc1234"
    assert resolve_value(["label:missing", "label:app.kubernetes.io/version"], obj) == "9.9"
    assert resolve_value(["template_label:team", "label:team"], obj) == "pay"
    assert resolve_value(["image_tag"], obj) == "1.2.3"
    assert resolve_value(["image_tag:proxy"], obj) is None
    assert resolve_value(["image:proxy"], obj) == "envoyproxy/envoy"


def test_both_event_shapes_from_real_fixtures() -> None:
    core = normalize_event(kspan("deployment-rollout.core.v1.Event.00.yaml"))
    assert core is not None
    assert (core.uid, core.type, core.reason, core.count) == (
        "44f4b5cd-9bce-49da-8d14-4a8334e5eca2", "Normal", "ScalingReplicaSet", 2)
    assert (core.regarding.kind, core.regarding.name) == ("Deployment", "hello-world")
    assert core.last_seen is not None and core.last_seen.isoformat() == "2020-11-27T12:04:05+00:00"
    v1 = json.loads((FIXTURES_DIR / "k8s-api-roundtrip" / "events.k8s.io.v1.Event.roundtrip-fixture.json").read_text())
    event = normalize_event(v1)
    assert event is not None
    assert event.count == max(v1["series"]["count"], v1["deprecatedCount"], 1)
    assert event.note == v1["note"] and event.regarding.kind == v1["regarding"]["kind"]
    assert event.controller == v1["reportingController"]


def _statefulset(image: str, generation: int, restarted: str | None = None) -> dict[str, Any]:
    annotations = {"kubectl.kubernetes.io/restartedAt": restarted} if restarted else {}
    return {
        "metadata": {"uid": "sts-1", "generation": generation},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "db"}, "annotations": annotations},
                                             "spec": {"containers": [{"name": "db", "image": image}]}}},
        "status": {"observedGeneration": generation, "readyReplicas": 2, "updatedReplicas": 2,
                   "currentRevision": f"db-{generation}", "updateRevision": f"db-{generation}"},
    }


def test_statefulset_history_comes_from_memory() -> None:
    state = observe_workload("StatefulSet", _statefulset("postgres:15", 1), None, [], baseline=True).state
    reports = []
    for obj in (_statefulset("postgres:16", 2), _statefulset("postgres:16", 3, restarted="2024-01-01T00:00:00Z"),
                _statefulset("postgres:15", 4, restarted="2024-01-01T00:00:00Z")):
        observation = observe_workload("StatefulSet", obj, state, [], baseline=False)
        reports.append(observation.report)
        state = observation.state
    assert reports == ["DEPLOY", "RESTART", "ROLLBACK"]


def _revision(image: str, created: str) -> Revision:
    return Revision(template_hash(_statefulset(image, 1)["spec"]["template"]),
                    datetime.fromisoformat(created.replace("Z", "+00:00")))


@pytest.mark.parametrize(
    ("revisions", "report"),
    [
        # 15 ran, then 16 (the baseline); back to 15 reused 15's revision: a rollback
        ([("postgres:15", "2024-01-01T00:00:00Z"), ("postgres:16", "2024-02-01T00:00:00Z")], "ROLLBACK"),
        # 16's revision is gone; 14's, created after 15's, still says 15 is a return
        ([("postgres:15", "2024-01-01T00:00:00Z"), ("postgres:14", "2024-01-15T00:00:00Z")], "ROLLBACK"),
        # 15 is new: its revision is the newest
        ([("postgres:16", "2024-02-01T00:00:00Z"), ("postgres:15", "2024-03-01T00:00:00Z")], "DEPLOY"),
        # created within the same second: which came first is unknown
        ([("postgres:15", "2024-01-01T00:00:00Z"), ("postgres:16", "2024-01-01T00:00:00Z")], "DEPLOY"),
        # no revision of 15 (pruned): nothing says it ran before
        ([("postgres:16", "2024-02-01T00:00:00Z")], "DEPLOY"),
    ],
)
def test_statefulset_rollback_from_controller_revisions(revisions: list[tuple[str, str]], report: str) -> None:
    state = observe_workload("StatefulSet", _statefulset("postgres:16", 1), None, [], baseline=True).state
    rolled = observe_workload("StatefulSet", _statefulset("postgres:15", 2), state, [], baseline=False,
                              revisions=[_revision(image, created) for image, created in revisions])
    assert rolled.report == report


def test_deployments_do_not_read_controller_revisions() -> None:
    state = observe_workload("Deployment", _statefulset("app:2", 1), None, [], baseline=True).state
    revisions = [_revision("app:1", "2024-01-01T00:00:00Z"), _revision("app:2", "2024-02-01T00:00:00Z")]
    done = _statefulset("app:1", 2)
    done["status"].update(updatedReplicas=2, availableReplicas=2, replicas=2)
    assert observe_workload("Deployment", done, state, [], baseline=False, revisions=revisions).report == "DEPLOY"
