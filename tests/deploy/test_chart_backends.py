"""The chart per queue backend (SQLite: a StatefulSet; PostgreSQL: a Deployment), and its image."""

from __future__ import annotations

import json
import re
import shutil
import string
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from _deploy_support import (
    CASES,
    K8S_VERSION,
    POSTGRES_MINIMAL,
    ROOT,
    config,
    config_text,
    container,
    docs,
    find,
    is_postgres,
    mount_path,
    one,
    pod_spec,
    render,
    render_with,
    rendered,
    workload,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

POSTGRES_CASES = sorted(c for c in CASES if is_postgres(c))
SQLITE_CASES = sorted(c for c in CASES if not is_postgres(c))


def test_both_backends_are_covered() -> None:
    assert POSTGRES_CASES == ["postgres", "postgres-minimal"]
    assert "default" in SQLITE_CASES and "everything" in SQLITE_CASES


def notes(values: dict[str, Any]) -> str:
    """NOTES.txt as an install with ``values`` prints it."""
    text: str = next(text for path, text in render_with(values).items() if path.endswith("NOTES.txt"))
    return text


# -- PostgreSQL: a Deployment, no volume ------------------------------------------------------


@pytest.mark.parametrize("case", POSTGRES_CASES)
def test_postgres_runs_a_deployment_without_volumes(case: str) -> None:
    kinds = {d["kind"] for d in docs(case)}
    assert "Deployment" in kinds
    assert not kinds & {"StatefulSet", "PersistentVolumeClaim"}
    deployment = workload(case)
    assert "volumeClaimTemplates" not in deployment["spec"]
    volumes = pod_spec(case)["volumes"]
    assert not [v for v in volumes if "persistentVolumeClaim" in v or v["name"] == "queue"]
    assert "queue" not in [m["name"] for m in container(case)["volumeMounts"]]
    # A rollout adds a pod before it removes one: ingest never runs below replicaCount.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert config(case)["queue"]["backend"] == "postgres"
    assert "path" not in config(case)["queue"], "a queue file path on PostgreSQL would point at no volume"


def test_postgres_defaults_to_two_replicas_and_follows_replica_count() -> None:
    assert workload("postgres-minimal")["spec"]["replicas"] == 2
    assert workload("postgres")["spec"]["replicas"] == CASES["postgres"]["replicaCount"] == 3
    one_pod = render.documents(render_with({**POSTGRES_MINIMAL, "replicaCount": 1}))
    assert next(d for d in one_pod if d["kind"] == "Deployment")["spec"]["replicas"] == 1
    assert "nothing takes webhooks while that pod restarts" in notes({**POSTGRES_MINIMAL, "replicaCount": 1})
    assert "nothing takes webhooks" not in notes(POSTGRES_MINIMAL)


@pytest.mark.parametrize("replicas", [None, 2, 5])
def test_postgres_disruption_budget(replicas: int | None) -> None:
    """maxUnavailable 1 whatever the replica count (it follows `kubectl scale`), and pods that
    are not ready (all of them while the database is down) do not block a node drain."""
    objects = render.documents(render_with({**POSTGRES_MINIMAL, "replicaCount": replicas}))
    pdb = next(d for d in objects if d["kind"] == "PodDisruptionBudget")
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", POSTGRES_CASES)
def test_dsn_is_a_mounted_file_and_nothing_else(case: str) -> None:
    values = CASES[case]["queue"]["postgres"]
    volume = next(v for v in pod_spec(case)["volumes"] if v["name"] == "postgres")
    assert volume["secret"] == {"secretName": values["existingSecret"], "defaultMode": 0o440,
                                "items": [{"key": values.get("key", "uri"), "path": "dsn"}]}
    mount = next(m for m in container(case)["volumeMounts"] if m["name"] == "postgres")
    assert mount["readOnly"] is True and "subPath" not in mount, "a subPath mount is never refreshed"
    assert config(case)["queue"]["postgres"]["dsn_file"] == f"{mount_path(case, 'postgres')}/dsn"
    assert "dsn" not in config(case)["queue"]["postgres"]
    # Not an environment variable, not in the ConfigMap, not a Secret the chart writes.
    c = container(case)
    assert "envFrom" not in c
    assert not [e for e in c.get("env", []) if "valueFrom" in e or "POSTGRES" in e["name"]]
    assert "postgresql://" not in config_text(case)
    assert not [s for s in find(case, "Secret") if s["metadata"]["name"] == values["existingSecret"]]


SECRET_NAMES = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
SECRET_KEYS = st.text(alphabet=string.ascii_letters + string.digits + "-._", min_size=1, max_size=30).filter(
    lambda k: k not in (".", ".."))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=SECRET_NAMES, key=SECRET_KEYS)
def test_any_secret_name_and_key_mount_as_the_dsn_file(name: str, key: str) -> None:
    values = {"queue": {"backend": "postgres", "postgres": {"existingSecret": name, "key": key}}}
    objects = render.documents(render_with(values))
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "postgres")
    assert volume["secret"]["secretName"] == name
    assert volume["secret"]["items"] == [{"key": key, "path": "dsn"}]
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_postgres_without_a_dsn_secret_is_refused() -> None:
    for values in ({"queue": {"backend": "postgres"}},
                   {"queue": {"backend": "postgres", "postgres": {"existingSecret": "", "key": "uri"}}}):
        with pytest.raises(helm_python.HelmRenderError,
                           match=re.escape("queue.backend postgres needs queue.postgres.existingSecret")):
            render_with(values)


@pytest.mark.parametrize(("values", "where"), [
    ({"queue": {"backend": "mysql"}}, "/queue/backend"),
    ({"queue": {"backend": "postgres", "postgres": {"existingSecret": "pg", "key": ""}}}, "/queue/postgres/key"),
    ({"queue": {"backend": "postgres", "postgres": {"existingSecret": "Not A Name"}}}, "/queue/postgres/existingSecret"),
    ({"queue": {"postgres": {"dsn": "postgresql://u:p@h/db"}}}, "/queue/postgres"),
    # The DSN and the backend belong to the chart: a DSN in `config` would land in the ConfigMap.
    ({"config": {"queue": {"postgres": {"dsn": "postgresql://u:p@h/db"}}}}, "/config/queue/postgres"),
    ({"config": {"queue": {"postgres": {"dsn_file": "/x"}}}}, "/config/queue/postgres"),
    ({"config": {"queue": {"backend": "postgres"}}}, "/config/queue"),
])
def test_bad_backend_values_are_refused(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render_with(values)
    assert where in str(raised.value)


def test_postgres_tuning_reaches_the_config() -> None:
    values = {**POSTGRES_MINIMAL, "config": {"queue": {"postgres": {"pool_size": 4, "statement_timeout_seconds": 2.5}}}}
    cfg = next(yaml.safe_load(d["data"]["config.yaml"]) for d in render.documents(render_with(values))
               if d["kind"] == "ConfigMap")
    assert cfg["queue"]["postgres"] == {"pool_size": 4, "statement_timeout_seconds": 2.5,
                                        "dsn_file": "/etc/cortex-bridge/postgres/dsn"}


# -- SQLite stays a StatefulSet ----------------------------------------------------------------


@pytest.mark.parametrize("case", SQLITE_CASES)
def test_sqlite_keeps_the_statefulset(case: str) -> None:
    kinds = [d["kind"] for d in docs(case)]
    assert kinds.count("StatefulSet") == 1 and "Deployment" not in kinds
    assert "postgres" not in [v["name"] for v in pod_spec(case)["volumes"]]
    assert "backend" not in config(case)["queue"] and "postgres" not in config(case)["queue"]
    assert find(case, "Service", "-headless")
    pdb = one(case, "PodDisruptionBudget")
    assert "unhealthyPodEvictionPolicy" not in pdb["spec"]


def test_sqlite_defaults_to_one_replica() -> None:
    assert workload("default")["spec"]["replicas"] == 1
    assert workload("everything")["spec"]["replicas"] == 3


def test_rate_limit_note_is_for_sqlite_replicas_only() -> None:
    """N SQLite replicas each have their own budget; PostgreSQL replicas share one."""
    note = "more than Cortex's default tenant limit of 1000/minute"
    assert note in notes({"replicaCount": 2})
    assert note not in notes({"replicaCount": 2, "config": {"cortex": {"rate_limit_per_minute": 500}}})
    assert note not in notes({**POSTGRES_MINIMAL, "replicaCount": 3})
    assert note not in notes({**POSTGRES_MINIMAL, "replicaCount": 3, "config": {"cortex": {"rate_limit_per_minute": 1000}}})


def test_notes_name_the_workload_of_the_backend() -> None:
    sqlite, postgres = notes({}), notes(POSTGRES_MINIMAL)
    assert "installed as StatefulSet cortex-bridge/cortex-bridge (1 replica(s), queue on SQLite)" in sqlite
    assert "rollout status statefulset/cortex-bridge" in sqlite and "exec cortex-bridge-0 --" in sqlite
    assert "installed as Deployment cortex-bridge/cortex-bridge (2 replica(s), queue on PostgreSQL)" in postgres
    assert "rollout status deployment/cortex-bridge" in postgres and "exec deploy/cortex-bridge --" in postgres
    assert "persistence.enabled=false" not in notes({**POSTGRES_MINIMAL, "persistence": {"enabled": False}})


# -- image.repository is required --------------------------------------------------------------


def test_image_repository_has_no_default_and_is_required() -> None:
    defaults = yaml.safe_load((render.CHART_DIR / "values.yaml").read_text())
    assert "repository" not in defaults["image"]
    schema = json.loads(render.SCHEMA_PATH.read_text())
    assert "repository" in schema["properties"]["image"]["required"]
    assert "image" in schema["required"]
    for values in ({}, {"image": {"tag": "0.1.0"}}):
        with pytest.raises(helm_python.HelmValuesError, match=re.escape("at '/image': missing property 'repository'")):
            render.render_chart(values)
    with pytest.raises(helm_python.HelmValuesError, match=re.escape("/image/repository")):
        render.render_chart({"image": {"repository": ""}})


def test_without_the_schema_the_template_still_requires_the_image(tmp_path: Path) -> None:
    """As with `helm install --skip-schema-validation`: the template's own message."""
    chart_dir = tmp_path / "cortex-bridge"
    shutil.copytree(render.CHART_DIR, chart_dir)
    (chart_dir / "values.schema.json").unlink()
    with helm_python.Chart.load(chart_dir) as chart, pytest.raises(
        helm_python.HelmRenderError, match=re.escape("image.repository is required: no public image exists")
    ):
        chart.render({}, name="cortex-bridge", namespace="cortex-bridge")


def test_notes_say_how_to_build_and_push_the_image() -> None:
    text = notes({"image": {"repository": "registry.example.org/team/cortex-bridge", "tag": "1.2.3"}})
    assert "Image: registry.example.org/team/cortex-bridge:1.2.3" in text
    assert "docker build -t registry.example.org/team/cortex-bridge:1.2.3 ." in text
    assert "docker push registry.example.org/team/cortex-bridge:1.2.3" in text
    assert (ROOT / "Dockerfile").exists(), "NOTES point at the repository's Dockerfile"


def test_placeholder_image_never_replaces_a_given_one() -> None:
    given = {"image": {"repository": "r.example.org/cb", "tag": "9"}}
    assert render.with_placeholder_image(given) == given
    assert render.with_placeholder_image({})["image"] == {"repository": render.PLACEHOLDER_IMAGE}
    assert given == {"image": {"repository": "r.example.org/cb", "tag": "9"}}, "the input was changed"


# -- examples and plain manifests ----------------------------------------------------------------


@pytest.mark.parametrize("example", [p.stem for p in render.example_paths()])
def test_examples_run_one_sqlite_replica_with_a_kubernetes_source(example: str) -> None:
    """A kubernetes source on SQLite remembers what it reported per replica (docs/kubernetes.md)."""
    kinds = {s["type"] for s in CASES[example].get("config", {}).get("sources", [])}
    if "kubernetes" in kinds and not is_postgres(example):
        assert workload(example)["spec"]["replicas"] == 1
    assert rendered(example)  # every example renders (validity: test_chart_render.py)


def test_kubernetes_events_example_is_one_replica() -> None:
    assert CASES["kubernetes-events"]["replicaCount"] == 1
    assert workload("kubernetes-events")["spec"]["replicas"] == 1


@pytest.mark.parametrize("manifest", [p.name for p in render.example_paths()])
def test_manifest_headers_say_how_to_build_push_and_name_the_image(manifest: str) -> None:
    text = (render.MANIFESTS_DIR / manifest).read_text()
    header = text.split("\n---\n", 1)[0]
    assert "docker build -t REGISTRY/cortex-bridge:0.1.0 ." in header
    assert "docker push REGISTRY/cortex-bridge:0.1.0" in header
    assert f"sed -i 's#{render.PLACEHOLDER_IMAGE}:#REGISTRY/cortex-bridge:#' deploy/manifests/{manifest}" in header
    images = {c["image"] for d in yaml.safe_load_all(text) if d and d["kind"] in ("StatefulSet", "Deployment")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{render.PLACEHOLDER_IMAGE}:0.1.0"}, "the sed line must reach every image"


def test_postgres_manifest_header_creates_the_dsn_secret() -> None:
    header = (render.MANIFESTS_DIR / "postgres.yaml").read_text().split("\n---\n", 1)[0]
    assert ("kubectl -n cortex-bridge create secret generic cortex-bridge-postgres "
            "--from-literal=uri='postgresql://USER:PASSWORD@HOST:5432/DBNAME'") in header
    assert "cortex-bridge-postgres" not in (render.MANIFESTS_DIR / "webhooks-only.yaml").read_text()



def test_operations_doc_explains_the_backends() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    headings = re.findall(r"^#+ (.+)$", doc, re.M)
    assert "Choosing a queue backend" in headings and "PostgreSQL backend" in headings
