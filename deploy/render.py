"""Render the Helm chart into plain manifests, and keep the chart's values schema in sync.

    python deploy/render.py          # rewrite deploy/manifests/*.yaml and values.schema.json's `config`
    python deploy/render.py --check  # change nothing; exit 1 naming every stale file

Rendering uses Helm v4's own engine through helm-python-sdk, offline, so the plain manifests
are exactly what ``helm install`` would create with the same values. One manifest file per
example in ``deploy/examples/`` (release and namespace ``cortex-bridge``), with the objects that
need the Prometheus Operator's CRDs split off into ``monitoring.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout, without installing the package
    sys.path.insert(0, str(ROOT))

from bridge.config_docs import settings_json_schema  # noqa: E402

CHART_DIR = ROOT / "helm" / "cortex-bridge"
SCHEMA_PATH = CHART_DIR / "values.schema.json"
EXAMPLES_DIR = ROOT / "deploy" / "examples"
MANIFESTS_DIR = ROOT / "deploy" / "manifests"

RELEASE = "cortex-bridge"
NAMESPACE = "cortex-bridge"
#: where the chart mounts the Secret (templates/_helpers.tpl, cortex-bridge.secretsDir)
SECRETS_DIR = "/etc/cortex-bridge/secrets"

#: Settings the chart sets itself; the values schema rejects them under `config`.
CHART_OWNED_SETTINGS = (
    "http.host",
    "http.port",
    "metrics.host",
    "metrics.port",
    "queue.path",
    "queue.backend",
    "queue.postgres.dsn",
    "queue.postgres.dsn_file",
    "cortex.token",
    "cortex.token_file",
    "ingest.token",
    "ingest.token_file",
)

MONITORING_GROUP = "monitoring.coreos.com/"

#: image.repository of the plain manifests: the chart requires one and no public image exists,
#: so the manifests name a placeholder (example.com is reserved) their header says to replace.
PLACEHOLDER_IMAGE = "registry.example.com/cortex-bridge"

#: Helm's install order (pkg/release/util/kind_sorter.go), so `kubectl apply -f` creates a
#: ServiceAccount before the pods that use it and a ConfigMap before the pods that mount it.
INSTALL_ORDER = (
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
    "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
)

_DOC_SEPARATOR = re.compile(r"^---\s*$", re.M)


# -- rendering --------------------------------------------------------------------------------


def render_chart(values: Mapping[str, Any] | None = None, *, name: str = RELEASE,
                 namespace: str = NAMESPACE) -> dict[str, str]:
    """Render the chart offline: template path -> rendered text (NOTES.txt included).

    Raises ``helm_python.HelmValuesError`` when the values break values.schema.json and
    ``helm_python.HelmRenderError`` when a template fails (e.g. a ``fail`` check).
    """
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(dict(values or {}), name=name, namespace=namespace)


def split_documents(rendered: Mapping[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every Kubernetes object of a render as (template path, its text, parsed), NOTES left out."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for text in _DOC_SEPARATOR.split(rendered[path]):
            parsed = yaml.safe_load(text)
            if parsed:
                out.append((path, text.strip("\n"), parsed))
    return out


def documents(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The parsed objects of a render."""
    return [doc for _, _, doc in split_documents(rendered)]


def example_paths() -> list[Path]:
    """The example values files, by name."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    """A values file as Helm reads it (an empty file is no values)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: values must be a mapping")
    return data


def with_placeholder_image(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with image.repository set to the placeholder unless it is set already."""
    out = copy.deepcopy(dict(values))
    image = out.setdefault("image", {})
    image.setdefault("repository", PLACEHOLDER_IMAGE)
    return out


# -- values schema ----------------------------------------------------------------------------


def config_schema() -> dict[str, Any]:
    """The `config` part of values.schema.json: the settings model minus what the chart owns."""
    schema = settings_json_schema(CHART_OWNED_SETTINGS)
    schema["description"] = (
        "The bridge's config file (docs/configuration.md). Generated from bridge/config.py by "
        "deploy/render.py. http/metrics host and port, queue.path and the token settings are "
        "set by the chart from `ports` and `secrets`."
    )
    sources = schema["properties"]["sources"]
    sources["items"] = {
        "type": "object",
        "required": ["name", "type"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][-A-Za-z0-9_.]*$",
                     "description": "Unique; webhook sources are served at POST /webhooks/<name>."},
            "type": {"type": "string", "minLength": 1},
        },
    }
    return schema


def values_schema_text() -> str:
    """values.schema.json as it should be: the file on disk with `config` regenerated."""
    schema = json.loads(SCHEMA_PATH.read_text())
    schema["properties"]["config"] = config_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# -- plain manifests --------------------------------------------------------------------------


def _secret_keys(values: Mapping[str, Any]) -> list[str]:
    """Keys the Secret must hold for these values: the token keys and every referenced file."""
    secrets = values.get("secrets", {})
    keys = [secrets.get("cortexTokenKey", "cortex-token")]
    if secrets.get("ingestTokenKey"):
        keys.append(secrets["ingestTokenKey"])

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)
        elif isinstance(node, str) and node.startswith(SECRETS_DIR + "/"):
            yield node[len(SECRETS_DIR) + 1:]

    keys.extend(k for k in walk(values.get("config", {})) if k not in keys)
    return keys


def _order(item: tuple[str, str, dict[str, Any]]) -> tuple[int, str]:
    kind = item[2].get("kind", "")
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    return rank, item[0]


def _manifest_text(header: str, items: list[tuple[str, str, dict[str, Any]]]) -> str:
    parts = [f"---\n# Source: {path}\n{text}\n" for path, text, _ in sorted(items, key=_order)]
    return header + "".join(parts)


def _workload_image(items: list[tuple[str, str, dict[str, Any]]]) -> str:
    """The bridge container's image in a render (the StatefulSet's or the Deployment's)."""
    for _, _, doc in items:
        if doc.get("kind") in ("StatefulSet", "Deployment"):
            image: str = doc["spec"]["template"]["spec"]["containers"][0]["image"]
            return image
    raise ValueError("the render has no StatefulSet or Deployment")


def _manifest_header(example: Path, values: Mapping[str, Any], image: str) -> str:
    """How to apply one plain manifest: the image to build and push, the Secrets to create."""
    secret = values.get("secrets", {}).get("existingSecret")
    if not secret:
        raise ValueError(f"{example}: plain manifests need secrets.existingSecret (no secrets in git)")
    literals = " ".join(f"--from-literal={k}=..." for k in _secret_keys(values))
    tag = image.rsplit(":", 1)[1]
    lines = [
        f"# Generated by deploy/render.py from helm/cortex-bridge with {example.relative_to(ROOT)}",
        f"# (release {RELEASE!r}, namespace {NAMESPACE!r}). Do not edit: change the chart or the",
        "# example and run `python deploy/render.py`.",
        "#",
        "# The image: there is no public one. Build it from the repository's Dockerfile (BuildKit,",
        "# Docker's default builder), push it to a registry the cluster pulls from, and put its name",
        f"# in place of the placeholder {PLACEHOLDER_IMAGE}:",
        f"#   docker build -t REGISTRY/cortex-bridge:{tag} .",
        f"#   docker push REGISTRY/cortex-bridge:{tag}",
        f"#   sed -i 's#{PLACEHOLDER_IMAGE}:#REGISTRY/cortex-bridge:#' deploy/manifests/{example.name}",
        "#",
        "# Create the namespace and the Secret the bridge reads its tokens from, then apply:",
        f"#   kubectl create namespace {NAMESPACE}",
        f"#   kubectl -n {NAMESPACE} create secret generic {secret} {literals}",
    ]
    queue = values.get("queue", {})
    if queue.get("backend") == "postgres":
        postgres = queue["postgres"]
        lines[-3] = ("# Create the namespace, the Secret the bridge reads its tokens from and the one holding the\n"
                     "# PostgreSQL DSN (or use one your operator manages, e.g. CloudNativePG's <cluster>-app), then apply:")
        lines.append(f"#   kubectl -n {NAMESPACE} create secret generic {postgres['existingSecret']} "
                     f"--from-literal={postgres.get('key', 'uri')}='postgresql://USER:PASSWORD@HOST:5432/DBNAME'")
    lines += [
        f"#   kubectl apply -f deploy/manifests/{example.name}",
        "# With the Prometheus Operator, also apply monitoring.yaml (ServiceMonitor, alerts).",
    ]
    return "\n".join(lines) + "\n"


def plain_manifests() -> dict[Path, str]:
    """deploy/manifests/*.yaml as they should be."""
    out: dict[Path, str] = {}
    for example in example_paths():
        values = with_placeholder_image(load_values(example))
        items = [i for i in split_documents(render_chart(values)) if not i[2]["apiVersion"].startswith(MONITORING_GROUP)]
        header = _manifest_header(example, values, _workload_image(items))
        out[MANIFESTS_DIR / example.name] = _manifest_text(header, items)
    monitoring_values = with_placeholder_image(load_values(EXAMPLES_DIR / "webhooks-only.yaml"))
    metrics = monitoring_values.setdefault("metrics", {})
    metrics.setdefault("serviceMonitor", {})["enabled"] = True
    metrics.setdefault("prometheusRule", {})["enabled"] = True
    items = [i for i in split_documents(render_chart(monitoring_values)) if i[2]["apiVersion"].startswith(MONITORING_GROUP)]
    header = (
        "# Generated by deploy/render.py from helm/cortex-bridge (release 'cortex-bridge', namespace\n"
        "# 'cortex-bridge'). Do not edit: change the chart and run `python deploy/render.py`.\n"
        "#\n"
        "# Needs the Prometheus Operator's CRDs: a ServiceMonitor for the metrics Service and the\n"
        "# alerts described in docs/operations.md. kubectl apply -f deploy/manifests/monitoring.yaml\n"
    )
    out[MANIFESTS_DIR / "monitoring.yaml"] = _manifest_text(header, items)
    return out


def expected_files() -> dict[Path, str]:
    """Every file this script owns, with the content it should have."""
    files = {SCHEMA_PATH: values_schema_text()}
    files.update(plain_manifests())
    return files


def stale_files() -> list[Path]:
    """Files whose content differs from what this script would write, plus manifests it would delete."""
    expected = expected_files()
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text() != text]
    stale.extend(p for p in sorted(MANIFESTS_DIR.glob("*.yaml")) if p not in expected)
    return stale


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the generated files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if any generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python deploy/render.py)", file=sys.stderr)
        return 1 if stale else 0
    # The schema first: the manifests are rendered against it.
    SCHEMA_PATH.write_text(values_schema_text())
    expected = plain_manifests()
    MANIFESTS_DIR.mkdir(parents=True, exist_ok=True)
    for path in MANIFESTS_DIR.glob("*.yaml"):
        if path not in expected:
            path.unlink()
    for path, text in expected.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
