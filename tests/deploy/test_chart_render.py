"""The Helm chart, rendered by Helm's own engine, against Kubernetes' schemas and the daemon itself."""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from _deploy_support import (
    CASES,
    K8S_VERSION,
    NAMESPACE,
    config,
    config_text,
    container,
    container_port,
    docs,
    find,
    is_postgres,
    mount_path,
    one,
    pod_spec,
    render,
    render_with,
    rendered,
    secret_data,
    workload,
)

from bridge.app import Bridge
from bridge.config import QueueSettings, Settings, load_settings
from bridge.queue import DurableQueue
from bridge.sources.base import SourceContext
from bridge.sources.registry import SOURCE_TYPES, build_sources

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace", "PriorityClass", "StorageClass"}

# The Prometheus Operator's CRDs are not in kubernetes-validate: the fields the chart uses,
# with the types and patterns of monitoring.coreos.com/v1 (prometheus-operator's CRD schemas).
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRMAP}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": _STRMAP}},
                    "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                        "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                       "interval": _DURATION, "scrapeTimeout": _DURATION,
                                       "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}}}},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
                "type": "array", "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1}, "interval": _DURATION, "rules": {
                        "type": "array", "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                           "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                                           "keep_firing_for": _DURATION, "labels": _STRMAP,
                                           "annotations": _STRMAP},
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}}}}}},
        },
    },
}

case_names = pytest.mark.parametrize("case", sorted(CASES))

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion): manifests must be valid there too.
OLDEST_K8S_VERSION = "1.30.0"


def test_oldest_supported_version_is_the_charts() -> None:
    chart = yaml.safe_load((render.CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_K8S_VERSION}-0"


@case_names
def test_helm_lint_is_clean(case: str) -> None:
    report = helm_python.lint(render.CHART_DIR, CASES[case], strict=True, namespace=NAMESPACE,
                              kube_version=f"v{OLDEST_K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational (e.g. "icon is recommended"); 2 and up are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_cases_cover_every_example() -> None:
    assert {"webhooks-only", "webhooks-kafka", "kubernetes-events", "postgres"} <= set(CASES)


@case_names
def test_every_manifest_is_valid_kubernetes(case: str) -> None:
    objects = docs(case)
    assert objects, f"{case}: nothing rendered"
    for obj in objects:
        kind = obj["kind"]
        if kind in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[kind])
        else:
            for version in (OLDEST_K8S_VERSION, K8S_VERSION):
                kubernetes_validate.validate(obj, version, strict=True)
        if kind not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") in {NAMESPACE, *rbac_namespaces(case)}, f"{kind} not namespaced"
    names = Counter((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects)
    assert not [k for k, n in names.items() if n > 1], "two objects with the same kind and name"


def rbac_namespaces(case: str) -> list[str]:
    rbac = CASES[case].get("rbac", {})
    return list(rbac.get("namespaces", []))


def test_a_broken_manifest_is_caught() -> None:
    """The validator is strict: a typo in a field name fails (so the test above can fail)."""
    statefulset = one("default", "StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
    rule = one("everything", "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"])


@case_names
def test_rendered_config_is_accepted_by_the_daemon(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("BRIDGE_")]:
        monkeypatch.delenv(var)
    path = tmp_path / "config.yaml"
    path.write_text(config_text(case))
    settings = load_settings(path)
    # What the chart promises about its own keys, as the daemon reads them.
    assert settings.http.port == container_port(case, "http")
    assert settings.metrics.port == container_port(case, "metrics")
    assert settings.http.host == settings.metrics.host == "0.0.0.0"
    if is_postgres(case):
        assert settings.queue.backend == "postgres"
        assert str(settings.queue.postgres.dsn_file) == f"{mount_path(case, 'postgres')}/dsn"
        assert settings.queue.postgres.dsn is None
    else:
        assert settings.queue.backend == "sqlite"
        assert str(settings.queue.path.parent) == mount_path(case, "queue")
        assert settings.queue.path == QueueSettings().path, "the chart moved the queue off the image's volume"
    user_config = CASES[case].get("config", {})
    for section, values in user_config.items():
        if section == "sources":
            assert settings.sources == values
            continue
        assert_kept(getattr(settings, section), values, f"config.{section}")


def assert_kept(settings: Any, values: dict[str, Any], where: str) -> None:
    """Every value of a config section (nested sections too) reached the daemon's settings."""
    for key, value in values.items():
        if isinstance(value, dict):
            assert_kept(getattr(settings, key), value, f"{where}.{key}")
        else:
            assert getattr(settings, key) == value, f"{where}.{key} lost"


@case_names
def test_sources_of_registered_types_build(case: str, tmp_path: Path) -> None:
    """Sources whose adapter has landed must accept the rendered settings, as `check-config` does."""
    settings = load_settings(_write(tmp_path, config_text(case)))
    registered = [s for s in settings.sources if s.get("type") in SOURCE_TYPES]

    async def build() -> int:
        queue = await DurableQueue.open(tmp_path / "check.db")
        try:
            return len(build_sources(registered, SourceContext(settings=settings, queue=queue)))
        finally:
            await queue.close()

    assert asyncio.run(build()) == len(registered)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@case_names
def test_secret_files_are_where_the_config_points(case: str) -> None:
    cfg = config(case)
    values = CASES[case]
    secrets = values.get("secrets", {})
    created = secret_data(case)
    referenced = [v for v in _strings(cfg) if v.startswith(render.SECRETS_DIR + "/")]
    if not secrets.get("existingSecret") and not secrets.get("data"):
        assert not referenced and "token_file" not in cfg.get("cortex", {})
        assert "secrets" not in [m["name"] for m in container(case)["volumeMounts"]]
        return
    assert mount_path(case, "secrets") == render.SECRETS_DIR
    volume = next(v for v in pod_spec(case)["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == (secrets.get("existingSecret") or one(case, "Secret")["metadata"]["name"])
    assert cfg["cortex"]["token_file"] == f"{render.SECRETS_DIR}/{secrets.get('cortexTokenKey', 'cortex-token')}"
    if secrets.get("ingestTokenKey"):
        assert cfg["ingest"]["token_file"] == f"{render.SECRETS_DIR}/{secrets['ingestTokenKey']}"
    if created:
        assert created == {k: str(v) for k, v in secrets["data"].items()}
        for path in referenced:
            assert path.rsplit("/", 1)[1] in created, f"{path} is not a key of the Secret"


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


@case_names
def test_secrets_never_reach_env_or_configmap(case: str) -> None:
    c = container(case)
    for env in c.get("env", []):
        assert "secretKeyRef" not in env.get("valueFrom", {}), env
    assert "envFrom" not in c
    values = secret_data(case).values()
    everything_public = config_text(case) + yaml.safe_dump(c.get("env", []))
    for value in values:
        assert value not in everything_public
    cfg = config(case)
    assert "token" not in cfg.get("cortex", {}) and "token" not in cfg.get("ingest", {})


@case_names
def test_env_vars_are_read_by_the_daemon(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRIDGE_CONFIG points at the mounted ConfigMap key; every other BRIDGE_* variable is a setting."""
    env = {e["name"]: e.get("value") for e in container(case).get("env", [])}
    configmap = one(case, "ConfigMap")
    assert env["BRIDGE_CONFIG"] == f"{mount_path(case, 'config')}/config.yaml"
    assert "config.yaml" in configmap["data"]
    volume = next(v for v in pod_spec(case)["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert env["TMPDIR"] == mount_path(case, "tmp")
    assert "emptyDir" in next(v for v in pod_spec(case)["volumes"] if v["name"] == "tmp")

    for var in [v for v in os.environ if v.startswith("BRIDGE_")]:
        monkeypatch.delenv(var)
    config_file = _write(tmp_path, config_text(case))
    monkeypatch.setenv("BRIDGE_CONFIG", str(config_file))
    overrides = {k: v for k, v in env.items() if k.startswith("BRIDGE_") and k != "BRIDGE_CONFIG"}
    for name, value in overrides.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()  # as the daemon does: the file from BRIDGE_CONFIG, then the variables
    for name, value in overrides.items():
        assert str(setting_for_env(settings, name)) == value, f"{name} did not change its setting"


def setting_for_env(settings: Settings, name: str) -> Any:
    """The value of the setting a BRIDGE_* variable names; AssertionError when it names none."""
    node: Any = settings
    for part in name.removeprefix("BRIDGE_").lower().split("__"):
        assert part in type(node).model_fields, f"{name} is not a setting the daemon reads"
        node = getattr(node, part)
    return node


def test_env_check_catches_variables_the_daemon_ignores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_write(tmp_path, config_text("default")))
    assert setting_for_env(settings, "BRIDGE_LOG__LEVEL") == "info"
    # One underscore instead of two: pydantic-settings silently ignores it, this check does not.
    with pytest.raises(AssertionError, match="BRIDGE_LOG_LEVEL"):
        setting_for_env(settings, "BRIDGE_LOG_LEVEL")


def test_probes_and_ports_match_the_daemon_routes(tmp_path: Path) -> None:
    settings = load_settings(None, queue={"path": tmp_path / "q.db"}, http={"port": 0}, metrics={"port": 0},
                             ingest={"allow_unauthenticated": True})

    async def routes() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        bridge = await Bridge.create(settings)
        try:
            def table(app: Any) -> set[tuple[str, str]]:
                return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
            return table(bridge.ingest_app()), table(bridge.metrics_app())
        finally:
            await bridge.queue.close()
            await bridge.client.close()

    ingest, metrics_routes = asyncio.run(routes())
    for case in CASES:
        c = container(case)
        port_names = {p["name"] for p in c["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert ("GET", get["path"]) in ingest, f"{case}: {probe} {get['path']} is not served"
            assert get["port"] == "http" and "http" in port_names
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for monitor in find(case, "ServiceMonitor"):
            for endpoint in monitor["spec"]["endpoints"]:
                assert ("GET", endpoint["path"]) in metrics_routes
        for ingress in find(case, "Ingress"):
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    prefix = path["path"]
                    # /v1/records is the native endpoint; /webhooks/<name> are the webhook sources.
                    # /webhooks/{name} routes come from the configured webhook sources.
                    assert prefix == "/webhooks" or any(
                        p == prefix or p.startswith(prefix.rstrip("/") + "/") for _, p in ingest
                    ), f"{case}: ingress path {prefix} reaches no route"
    assert ("POST", "/v1/records") in ingest


@case_names
def test_services_and_selectors_reach_the_pods(case: str) -> None:
    pods = workload(case)
    pod_labels = pods["spec"]["template"]["metadata"]["labels"]
    selector = pods["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(case)["ports"]}
    services = {s["metadata"]["name"]: s for s in find(case, "Service")}
    if is_postgres(case):
        # Pods of a Deployment have no stable names, so there is no governing Service either.
        assert not [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    else:
        assert pods["spec"]["serviceName"] in services
        assert services[pods["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    for ingress in find(case, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                target = services[backend["name"]]
                assert backend["port"]["number"] in [p["port"] for p in target["spec"]["ports"]]
                assert [p["targetPort"] for p in target["spec"]["ports"]] == ["http"]
    for monitor in find(case, "ServiceMonitor"):
        matched = [s for s in services.values()
                   if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, "the ServiceMonitor must select exactly the metrics Service"
        assert [p["name"] for p in matched[0]["spec"]["ports"]] == [e["port"] for e in monitor["spec"]["endpoints"]]
        assert matched[0]["spec"]["ports"][0]["targetPort"] == "metrics"
    for pdb in find(case, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@case_names
def test_pod_security(case: str) -> None:
    pod = pod_spec(case)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"].get("runAsUser", 10001) != 0
    sc = container(case)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "limits" in container(case)["resources"] and "requests" in container(case)["resources"]
    # The only writable paths: the queue volume (SQLite only), /tmp, nothing else of the image.
    writable = {m["mountPath"] for m in container(case)["volumeMounts"] if not m.get("readOnly")}
    assert writable == ({"/tmp"} if is_postgres(case) else {"/var/lib/cortex-bridge", "/tmp"})


@case_names
def test_grace_period_outlasts_the_drain(case: str) -> None:
    pod = pod_spec(case)
    deadline = load_settings_from_text(config_text(case)).drain.deadline_seconds
    pre_stop = container(case).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > pre_stop + deadline


def load_settings_from_text(text: str) -> Settings:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_settings(_write(Path(tmp), text))


def test_queue_survives_restarts_on_a_claim() -> None:
    statefulset = one("default", "StatefulSet")
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["queue"]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "queue" not in [v["name"] for v in pod_spec("default")["volumes"]]
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Without persistence the same mount is an emptyDir.
    assert "volumeClaimTemplates" not in one("everything", "StatefulSet")["spec"]
    assert {"name": "queue", "emptyDir": {}} in pod_spec("everything")["volumes"]


def test_rbac_only_for_the_kubernetes_source() -> None:
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not find("default", kind) and not find("webhooks-only", kind) and not find("webhooks-kafka", kind)
    assert pod_spec("default")["automountServiceAccountToken"] is False
    assert pod_spec("kubernetes-events")["automountServiceAccountToken"] is True

    sa = one("kubernetes-events", "ServiceAccount")["metadata"]["name"]
    assert pod_spec("kubernetes-events")["serviceAccountName"] == sa
    watch = one("kubernetes-events", "ClusterRole")["rules"]
    granted = {(g, r, v) for rule in watch for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = {("apps", r, v) for r in ("deployments", "statefulsets", "daemonsets", "replicasets", "controllerrevisions")
              for v in ("get", "list", "watch")}
    needed |= {("", r, v) for r in ("pods", "events") for v in ("get", "list", "watch")}
    needed |= {("events.k8s.io", "events", v) for v in ("get", "list", "watch")}
    assert needed <= granted
    assert not {v for _, _, v in granted} - {"get", "list", "watch"}, "the watch role must be read-only"
    lease = one("kubernetes-events", "Role", "leader-election")
    assert lease["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                               "verbs": ["get", "create", "update"]}]
    for binding in find("kubernetes-events", "ClusterRoleBinding") + find("kubernetes-events", "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]

    # Namespaced: one read-only Role per listed namespace, the Lease role in the release namespace.
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find("everything", "Role")}
    assert {ns for ns, name in roles if name.endswith("-watch")} == {"team-a", "team-b"}
    assert (NAMESPACE, "cortex-bridge-leader-election") in roles
    assert not find("everything", "ClusterRole")


def test_rbac_can_be_forced_off_with_a_kubernetes_source() -> None:
    values = {**CASES["kubernetes-events"], "rbac": {"create": False}}
    objects = render.documents(render_with(values))
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")]


def test_template_checks_fail_with_a_clear_message() -> None:
    bad = [
        ({"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds"),
        ({"secrets": {"data": {"cortex-token": "x"}, "ingestTokenKey": "ingest-token"}}, "ingestTokenKey"),
        ({"config": {"sources": [{"name": "a", "type": "github"}, {"name": "a", "type": "gitlab"}]}}, "used twice"),
        ({"ports": {"ingest": 9090, "metrics": 9090}}, "two different ports"),
    ]
    for values, message in bad:
        with pytest.raises(helm_python.HelmError, match=re.escape(message)):
            render_with(values)


def test_config_changes_roll_the_pods() -> None:
    base = one("default", "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    changed = render.documents(render_with({"config": {"log": {"level": "debug"}}}))
    statefulset = next(o for o in changed if o["kind"] == "StatefulSet")
    assert statefulset["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != base


@case_names
def test_notes_render(case: str) -> None:
    notes = next(text for path, text in rendered(case).items() if path.endswith("NOTES.txt"))
    assert "cortex-bridge queue stats" in notes
    for source in CASES[case].get("config", {}).get("sources", []):
        if source["type"] not in ("kafka", "kubernetes"):
            assert f"POST /webhooks/{source['name']}" in notes
    has_token = bool(CASES[case].get("secrets", {}).get("existingSecret") or secret_data(case))
    assert ("no Cortex API token is configured" in notes) is not has_token


# -- /v1/records credentials and the NetworkPolicy (issue 9) ---------------------------------


def test_ingress_refuses_to_route_records_without_a_token() -> None:
    for paths in (["/webhooks", "/v1/records"], ["/"], ["/v1/"]):
        with pytest.raises(helm_python.HelmError, match=re.escape("routes POST /v1/records, which takes no token")):
            render_with({"ingress": {"enabled": True, "paths": paths}})
    # Webhooks alone, or /v1/records with a token, render.
    webhooks_only = render.documents(render_with({"ingress": {"enabled": True, "paths": ["/webhooks"]}}))
    assert [o for o in webhooks_only if o["kind"] == "Ingress"]
    with_token = {"ingress": {"enabled": True}, "secrets": {"data": {"ingest-token": "t"}, "ingestTokenKey": "ingest-token"}}
    ingress = next(o for o in render.documents(render_with(with_token)) if o["kind"] == "Ingress")
    assert "/v1/records" in [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]


def test_ingest_needs_a_token_or_the_explicit_opt_out() -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape("POST /v1/records has no credentials")):
        render_with({"config": {"ingest": {"allow_unauthenticated": False}}})
    assert config("default")["ingest"] == {"allow_unauthenticated": True}
    # With a token key the opt-out is dropped: the token is required (the daemon refuses both).
    assert config("everything")["ingest"] == {"token_file": f"{render.SECRETS_DIR}/ingest-token"}


@case_names
def test_network_policy_admits_only_the_configured_peers(case: str) -> None:
    policy = one(case, "NetworkPolicy")
    pod_labels = workload(case)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    port_names = {p["name"] for p in container(case)["ports"]}
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "metrics"} <= port_names
    def names(*values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(values)}]}

    assert rules["http"] == [{"namespaceSelector": names("ingress-nginx")}]
    assert rules["metrics"] == [{"namespaceSelector": names("monitoring")}]


def test_network_policy_values() -> None:
    values = {"networkPolicy": {"ingest": {
        "ingressControllerNamespaces": ["traefik", "traefik-internal"],
        "ingressControllerPodSelector": {"matchLabels": {"app": "traefik"}},
        "ciCidrs": ["192.0.2.0/24", "2001:db8::/32"],
        "extraFrom": [{"podSelector": {"matchLabels": {"app": "producer"}}}]}}}
    objects = render.documents(render_with(values))
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    for version in (OLDEST_K8S_VERSION, K8S_VERSION):
        kubernetes_validate.validate(policy, version, strict=True)
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers == [
        {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                     "values": ["traefik", "traefik-internal"]}]},
         "podSelector": {"matchLabels": {"app": "traefik"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}},
        {"ipBlock": {"cidr": "2001:db8::/32"}},
        {"podSelector": {"matchLabels": {"app": "producer"}}},
    ]
    cidrs_only = render.documents(render_with(
        {"networkPolicy": {"ingest": {"ingressControllerNamespaces": [], "ciCidrs": ["10.0.0.0/8"]}}}))
    policy = next(o for o in cidrs_only if o["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    closed = render.documents(render_with({"networkPolicy": {"ingest": {"ingressControllerNamespaces": []}}}))
    policy = next(o for o in closed if o["kind"] == "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["metrics"], "no peers must mean nobody"
    off = render.documents(render_with({"networkPolicy": {"enabled": False}}))
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]
