"""Shared by the deployment tests: the chart renders under test, and what they are checked against."""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

#: The Kubernetes schema version manifests are validated against (the version Helm's offline
#: render reports as .Capabilities.KubeVersion, shipped by kubernetes-validate).
K8S_VERSION = "1.36.0"

RELEASE = "cortex-bridge"
NAMESPACE = "cortex-bridge"


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cortex_bridge_deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: deploy/render.py, the renderer the plain manifests come from.
render = _load_render()

#: Values that switch on every optional part of the chart, each in its less common form.
EVERYTHING: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/platform/cortex-bridge", "digest": "sha256:" + "ab" * 32},
    "config": {
        "cortex": {"rate_limit_per_minute": 300, "burst": 10},
        "log": {"level": "debug"},
        "drain": {"deadline_seconds": 12.5},
        "queue": {"max_records": 50_000, "max_bytes": 268_435_456},
        "sources": [
            {"name": "github", "type": "github",
             "secret_files": ["/etc/cortex-bridge/secrets/github-webhook-secret"]},
            {"name": "cluster", "type": "kubernetes"},
        ],
    },
    "secrets": {
        "data": {"cortex-token": "cortex-tok-123", "ingest-token": "ingest-tok-456", "github-webhook-secret": "gh-789"},
        "ingestTokenKey": "ingest-token",
    },
    "extraEnv": [{"name": "BRIDGE_LOG__FORMAT", "value": "console"}],
    "extraVolumes": [{"name": "kafka-ca", "configMap": {"name": "kafka-ca"}}],
    "extraVolumeMounts": [{"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True}],
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "5m"},
        "hosts": ["hooks.example.com", "cortex-bridge.internal.example.com"],
        "tls": [{"secretName": "hooks-tls", "hosts": ["hooks.example.com"]}],
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}, "interval": "15s"},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "runbookBaseUrl": "https://git.example.com/platform/cortex-bridge/blob/main/docs/operations.md",
        },
    },
    "rbac": {"clusterWide": False, "namespaces": ["team-a", "team-b"]},
    "persistence": {"enabled": False},
    "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
    "terminationGracePeriodSeconds": 60,
    "preStopSleepSeconds": 0,
    "podDisruptionBudget": {"maxUnavailable": "50%"},
    "priorityClassName": "platform-high",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [
            {"key": "node-role.kubernetes.io/platform", "operator": "Exists"}]}}]}},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"team": "platform"},
    "service": {"ingest": {"type": "LoadBalancer", "port": 443}},
}


#: The least a PostgreSQL install needs: the backend and the Secret holding the DSN.
POSTGRES_MINIMAL: dict[str, Any] = {
    "image": {"repository": render.PLACEHOLDER_IMAGE},
    "queue": {"backend": "postgres", "postgres": {"existingSecret": "cortex-bridge-postgres"}},
}


def render_cases() -> dict[str, dict[str, Any]]:
    """Every values set the chart is tested with: the least each backend needs (image.repository
    has no default), each example as render.py renders it, everything switched on."""
    cases: dict[str, dict[str, Any]] = {"default": render.with_placeholder_image({})}
    for path in render.example_paths():
        cases[path.stem] = render.with_placeholder_image(render.load_values(path))
    cases["postgres-minimal"] = POSTGRES_MINIMAL
    cases["everything"] = EVERYTHING
    return cases


CASES = render_cases()


def render_with(values: dict[str, Any]) -> dict[str, str]:
    """The chart rendered with ``values`` plus the placeholder image (the one value it requires)."""
    result: dict[str, str] = render.render_chart(render.with_placeholder_image(values))
    return result


def is_postgres(case: str) -> bool:
    """Whether a case runs the queue on PostgreSQL (a Deployment) rather than SQLite (a StatefulSet)."""
    return bool(CASES[case].get("queue", {}).get("backend") == "postgres")


@functools.cache
def rendered(case: str) -> dict[str, str]:
    """The chart rendered with a case's values (template path -> text)."""
    result: dict[str, str] = render.render_chart(CASES[case])
    return result


@functools.cache
def _parsed(case: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = render.documents(rendered(case))
    return out


def docs(case: str) -> list[dict[str, Any]]:
    """The parsed objects of a case (a copy the caller may change)."""
    return copy.deepcopy(_parsed(case))


def find(case: str, kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    """Objects of ``kind`` whose name ends with ``name_suffix``."""
    return [d for d in docs(case) if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(case: str, kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` (and name suffix); fails the test if there is not exactly one."""
    found = find(case, kind, name_suffix)
    assert len(found) == 1, f"{case}: expected one {kind}*{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(case: str) -> dict[str, Any]:
    """The object that runs the pods: the Deployment on PostgreSQL, the StatefulSet on SQLite."""
    return one(case, "Deployment" if is_postgres(case) else "StatefulSet")


def pod_spec(case: str) -> dict[str, Any]:
    spec: dict[str, Any] = workload(case)["spec"]["template"]["spec"]
    return spec


def container(case: str) -> dict[str, Any]:
    containers = pod_spec(case)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def config_text(case: str) -> str:
    text: str = one(case, "ConfigMap")["data"]["config.yaml"]
    return text


def config(case: str) -> dict[str, Any]:
    """The bridge config file the chart renders."""
    data: dict[str, Any] = yaml.safe_load(config_text(case))
    return data


def secret_data(case: str) -> dict[str, str]:
    """Decoded data of the Secret the chart creates ({} when it creates none)."""
    secrets = find(case, "Secret")
    if not secrets:
        return {}
    return {k: base64.b64decode(v).decode() for k, v in secrets[0].get("data", {}).items()}


def container_port(case: str, name: str) -> int:
    for port in container(case)["ports"]:
        if port["name"] == name:
            return int(port["containerPort"])
    raise AssertionError(f"{case}: no container port named {name}")


def mount_path(case: str, volume: str) -> str:
    for mount in container(case)["volumeMounts"]:
        if mount["name"] == volume:
            return str(mount["mountPath"])
    raise AssertionError(f"{case}: volume {volume} is not mounted")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
