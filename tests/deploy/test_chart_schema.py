"""values.schema.json: bad values fail at install time, with a message naming the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from _deploy_support import CASES, render

from bridge.config import ConfigError, load_settings

# (values, a fragment the error must contain)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"unknownTopLevel": 1}, "unknownTopLevel"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"ports": {"ingest": 70000}}, "/ports/ingest"),
    ({"persistence": {"size": "2 GB"}}, "/persistence/size"),
    ({"persistence": {"accessModes": ["ReadWriteSometimes"]}}, "/persistence/accessModes"),
    ({"persistence": {"retentionPolicy": {"whenDeleted": "Keep"}}}, "/persistence/retentionPolicy/whenDeleted"),
    ({"secrets": {"data": {"cortex-token": 12345}}}, "/secrets/data/cortex-token"),
    ({"secrets": {"data": {"cortex token": "x"}}}, "/secrets/data"),
    ({"secrets": {"cortexTokenKey": ""}}, "/secrets/cortexTokenKey"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
    ({"metrics": {"prometheusRule": {"disabled": ["NoSuchAlert"]}}}, "/metrics/prometheusRule/disabled/0"),
    ({"metrics": {"prometheusRule": {"thresholds": {"noDeliveryMinutes": 0}}}}, "noDeliveryMinutes"),
    ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
    ({"preStopSleepSeconds": -5}, "/preStopSleepSeconds"),
    ({"terminationGracePeriodSeconds": "long"}, "/terminationGracePeriodSeconds"),
    ({"ingress": {"paths": ["webhooks"]}}, "/ingress/paths/0"),
    ({"ingress": {"hosts": ["Hooks Example"]}}, "/ingress/hosts/0"),
    ({"service": {"ingest": {"type": "ExternalName"}}}, "/service/ingest/type"),
    ({"rbac": {"create": "yes"}}, "/rbac/create"),
    ({"rbac": {"namespaces": ["Team_A"]}}, "/rbac/namespaces/0"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget/maxUnavailable"),
    ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "/topologySpreadConstraints/0"),
    # The chart owns these: they come from `ports`, the volume and `secrets`.
    ({"config": {"http": {"port": 8081}}}, "/config/http"),
    ({"config": {"metrics": {"host": "127.0.0.1"}}}, "/config/metrics"),
    ({"config": {"queue": {"path": "/data/q.db"}}}, "/config/queue"),
    ({"config": {"cortex": {"token": "inline-secret"}}}, "/config/cortex"),
    ({"config": {"ingest": {"token_file": "/x"}}}, "/config/ingest"),
    ({"config": {"sources": [{"type": "github"}]}}, "/config/sources/0"),
    ({"config": {"sources": [{"name": "has space", "type": "github"}]}}, "/config/sources/0/name"),
]

# Settings the daemon itself refuses: the schema refuses them first, at install time.
BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"cortex": {"rate_limit_per_minute": 0}}, "/config/cortex/rate_limit_per_minute"),
    ({"cortex": {"max_concurrency": 1000}}, "/config/cortex/max_concurrency"),
    ({"cortex": {"request_timeout_seconds": 0}}, "/config/cortex/request_timeout_seconds"),
    ({"cortex": {"url": 42}}, "/config/cortex/url"),
    ({"log": {"level": "verbose"}}, "/config/log/level"),
    ({"log": {"format": "xml"}}, "/config/log/format"),
    ({"drain": {"deadline_seconds": -1}}, "/config/drain/deadline_seconds"),
    ({"queue": {"max_bytes": 10}}, "/config/queue/max_bytes"),
    ({"retry": {"max_age_seconds": 0}}, "/config/retry/max_age_seconds"),
    ({"typo": {}}, "typo"),
    ({"cortex": {"burts": 10}}, "burts"),
    ({"sources": "github"}, "/config/sources"),
]


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm_python.Chart.load(render.CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_values_are_rejected(chart: Any, values: dict[str, Any], where: str) -> None:
    # With the one required value set, so that only the bad value can be the reason.
    values = render.with_placeholder_image(values)
    with pytest.raises(helm_python.HelmValuesError) as raised:
        chart.validate_schema(chart.merge_values(values))
    assert where in str(raised.value)
    # An install renders with the same check.
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name="cortex-bridge", namespace="cortex-bridge")


@pytest.mark.parametrize(("settings", "where"), BAD_SETTINGS, ids=[w for _, w in BAD_SETTINGS])
def test_settings_the_daemon_refuses_are_refused_at_install(
    chart: Any, settings: dict[str, Any], where: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError):
        load_settings(path)
    with pytest.raises(helm_python.HelmValuesError) as raised:
        chart.validate_schema(chart.merge_values(render.with_placeholder_image({"config": settings})))
    assert where in str(raised.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_good_values_pass(chart: Any, case: str) -> None:
    chart.validate_schema(chart.merge_values(CASES[case]))


def test_every_default_value_is_described_by_the_schema(chart: Any) -> None:
    schema = json.loads(render.SCHEMA_PATH.read_text())

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            assert key in node["properties"], f"{path}.{key} is in values.yaml but not in values.schema.json"
            walk(value, node["properties"][key], f"{path}.{key}")

    walk(yaml.safe_load((render.CHART_DIR / "values.yaml").read_text()), schema, "")
