"""The Grafana dashboard and the alerts query only metrics and labels the daemon exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from _deploy_support import ROOT, one
from prometheus_client.metrics import MetricWrapperBase

from bridge import metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "cortex-bridge.json"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Labels Prometheus adds to every series it scrapes through the chart's ServiceMonitor.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}

_METRIC = re.compile(r"\b(cortex_bridge_[a-z0-9_]+)")
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name the daemon exposes -> (type, label names), from bridge/metrics.py."""
    out: dict[str, tuple[str, set[str]]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind, labels = str(value._name), str(value._type), set(value._labelnames)
        if kind == "counter":
            out[name + "_total"] = (kind, labels)
        elif kind == "histogram":
            out[name + "_bucket"] = (kind, labels | {"le"})
            out[name + "_sum"] = (kind, labels)
            out[name + "_count"] = (kind, labels)
        else:
            out[name] = (kind, labels)
    return out


EXPORTED = exported()


def check_expression(expr: str) -> list[str]:
    """Problems of one PromQL expression: unknown series or labels, counters without rate, syntax."""
    problems = []
    names = _METRIC.findall(expr)
    if not names:
        problems.append("queries no cortex_bridge_ metric")
    labels: set[str] = set(TARGET_LABELS)
    for name in names:
        if name not in EXPORTED:
            stem = re.sub(r"_(total|bucket|sum|count)$", "", name)
            hint = [n for n in EXPORTED if n.startswith(stem)]
            problems.append(f"{name} is not exported (exported: {hint or 'nothing similar'})")
            continue
        kind, metric_labels = EXPORTED[name]
        labels |= metric_labels
        if kind in ("counter", "histogram") and not re.search(rf"(rate|increase)\(\s*{name}\b", expr):
            problems.append(f"{name} is a {kind}: query it through rate() or increase()")
    used = set()
    for selector in _SELECTOR.findall(expr):
        used |= {m[0] for m in _MATCHER.findall(selector)}
    for grouping in _GROUPING.findall(expr):
        used |= {label.strip() for label in grouping.split(",") if label.strip()}
    problems.extend(f"label {label!r} exists on none of {names}" for label in sorted(used - labels))
    for open_, close in ("()", "[]", "{}"):
        if expr.count(open_) != expr.count(close):
            problems.append(f"unbalanced {open_}{close}")
    if expr.count('"') % 2:
        problems.append("unbalanced quotes")
    return problems


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_the_check_finds_wrong_names_and_labels() -> None:
    assert check_expression("sum(rate(cortex_bridge_records_delivered_total[5m]))") == []
    assert check_expression("cortex_bridge_records_delivered") != []  # counter without _total
    assert check_expression("rate(cortex_bridge_records_deliverd_total[5m])") != []
    assert check_expression("sum by (colour) (rate(cortex_bridge_records_delivered_total[5m]))") != []
    assert check_expression("cortex_bridge_records_delivered_total") != []  # a counter's raw value
    assert check_expression('cortex_bridge_queue_depth{namespace="x"') != []


@pytest.mark.parametrize(("title", "target"), list(dashboard_targets()), ids=[t for t, _ in dashboard_targets()])
def test_dashboard_queries_exported_metrics(title: str, target: dict[str, Any]) -> None:
    expr = target["expr"].replace("$__rate_interval", "5m")
    assert check_expression(expr) == [], title
    by_labels = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
    for label in _LEGEND.findall(target.get("legendFormat", "")):
        assert label in by_labels, f"{title}: legend {{{{{label}}}}} is not kept by the query"


def test_dashboard_covers_what_operators_look_at() -> None:
    queries = "\n".join(t["expr"] for _, t in dashboard_targets())
    for needle in (
        "sum by (source) (rate(cortex_bridge_records_received_total",  # ingest rate by source
        "cortex_bridge_queue_depth",
        "cortex_bridge_queue_oldest_age_seconds",
        "rate(cortex_bridge_records_delivered_total",  # delivery rate
        "cortex_bridge_time_to_deliver_seconds_bucket",  # delivery latency
        "sum by (status) (rate(cortex_bridge_cortex_requests_total",  # Cortex status codes
        "cortex_bridge_rate_limit_pauses_total",  # bucket pauses
        "cortex_bridge_records_dead_lettered_total",
        "cortex_bridge_dead_letters",
    ):
        assert needle in queries, needle


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("namespace", "pod"):
        assert check_expression(variables[name]["query"]["query"].removeprefix("label_values(")[:-1]
                                .rsplit(",", 1)[0]) == []
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert 'namespace=~"$namespace", pod=~"$pod"' in target["expr"], panel["title"]


def alert_rules() -> list[dict[str, Any]]:
    rule = one("everything", "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.mark.parametrize("rule", alert_rules(), ids=[r["alert"] for r in alert_rules()])
def test_alerts_query_exported_metrics(rule: dict[str, Any]) -> None:
    assert "{{" not in rule["expr"], "template left in the expression"
    assert check_expression(rule["expr"]) == []
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    anchor = rule["alert"].lower()
    assert rule["annotations"]["runbook_url"].endswith(f"docs/operations.md#{anchor}")


def test_the_alerts_the_issue_asks_for_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert "cortex_bridge_queue_oldest_age_seconds" in exprs["CortexBridgeBacklogOld"]
    assert "cortex_bridge_records_dead_lettered_total" in exprs["CortexBridgeDeadLetters"]
    assert "cortex_bridge_cortex_auth_failed" in exprs["CortexBridgeCortexAuthRejected"]
    assert 'status="429"' in exprs["CortexBridgeRateLimited"]
    assert "cortex_bridge_last_delivery_timestamp_seconds" in exprs["CortexBridgeNoDelivery"]


def test_every_alert_has_a_runbook_entry() -> None:
    doc = OPERATIONS.read_text()
    headings = set(re.findall(r"^#{2,4} (\S+)\s*$", doc, re.M))
    for rule in alert_rules():
        assert rule["alert"] in headings, f"docs/operations.md has no runbook heading for {rule['alert']}"


def test_alerts_can_be_switched_off() -> None:
    from _deploy_support import render, render_with

    values = {"metrics": {"prometheusRule": {"enabled": True, "disabled": ["CortexBridgeNotReady"]}}}
    objects = render.documents(render_with(values))
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "CortexBridgeNotReady" not in names and len(names) == len(alert_rules()) - 1
