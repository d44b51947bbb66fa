"""Every request body the sender emits validates against Cortex's official request schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft4Validator

from bridge.cortex.endpoints import delete_dependencies, deploy_or_event_body, update_deploy, update_event
from bridge.queue import QueuedRecord
from bridge.records import RECORD_ADAPTER, DeployRecord, EventRecord, Record
from bridge.sender.requests import build_request
from tests.support.paths import FIXTURES

SPECS = FIXTURES / "cortex"
CURRENT = json.loads((SPECS / "openapi.json").read_text())
# Only the 2025-10 spec still has the custom-data request schemas (docs/cortex-api.md).
OLDER = json.loads((SPECS / "openapi-2025-10.json").read_text())


def _loosen(schema: Any) -> Any:
    """Undo the spec's generator artifacts documented in docs/cortex-api.md ("Reading the spec"):
    customData values and custom-data ``value`` are any JSON, not objects."""
    if isinstance(schema, dict):
        out = {k: _loosen(v) for k, v in schema.items()}
        extra = out.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("type") == "object" and "properties" not in extra:
            out["additionalProperties"] = {}
        if out.get("$ref") == "#/components/schemas/CustomDataType":
            return {}
        return out
    if isinstance(schema, list):
        return [_loosen(v) for v in schema]
    return schema


def _validator(spec: dict[str, Any], path: str, method: str) -> Draft4Validator:
    ref = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    root = {"$ref": ref["$ref"], "components": _loosen(spec["components"])}
    return Draft4Validator(root)


def _queued(records: list[dict[str, Any]]) -> list[QueuedRecord]:
    out = []
    for i, fields in enumerate(records):
        rec: Record = RECORD_ADAPTER.validate_python({"id": f"r{i}", "provenance": {"source": "t"}, **fields})
        out.append(QueuedRecord(i, rec, 0, None, 0.0))
    return out


CASES = [
    ("/api/v1/catalog/{tagOrId}/deploys", "post", CURRENT,
     [{"kind": "deploy", "entity": "svc", "title": "Deploy", "timestamp": "2026-01-01T00:00:00Z", "type": "ROLLBACK",
       "sha": "9f1c", "environment": "prod", "url": "https://ci/1", "deployer": {"name": "a", "email": "a@b.c"},
       "customData": {"n": 678, "s": "x", "nested": {"a": [1]}}}]),
    ("/api/v1/catalog/{tagOrId}/deploys", "post", CURRENT,
     [{"kind": "deploy", "entity": "svc", "title": "Minimal", "timestamp": 0}]),
    ("/api/v1/catalog/{tagOrId}/custom-events", "post", CURRENT,
     [{"kind": "event", "entity": "svc", "type": "DEPLOY_FAILED", "title": "t", "timestamp": "2026-01-01T00:00:00Z",
       "description": "d", "url": "https://x", "customData": {"test3": 678}}]),
    ("/api/v1/eng-intel/custom-metrics/{customMetricKey}/entity/{tagOrId}/bulk", "post", CURRENT,
     [{"kind": "metric", "entity": "svc", "key": "lead-time", "timestamp": i, "value": i * 1.5} for i in range(100)]),
    ("/api/v1/catalog/custom-data", "put", OLDER,
     [{"kind": "custom_data", "entity": "svc", "key": "k", "value": 100},
      {"kind": "custom_data", "entity": "svc", "key": "k2", "value": "Hello", "description": "d"},
      {"kind": "custom_data", "entity": "other", "key": "k", "value": {"nested": "object"}}]),
    ("/api/v1/catalog/dependencies", "put", CURRENT,
     [{"kind": "dependency", "entity": "svc", "callee": "db", "method": "GET", "path": "/api/v1/x",
       "description": "d", "metadata": {"k": "v"}},
      {"kind": "dependency", "entity": "svc", "callee": "cache"},
      {"kind": "dependency", "entity": "other", "callee": "svc", "method": "POST", "path": "/orders"}]),
    ("/api/v1/catalog/{tagOrId}/documentation/openapi", "put", CURRENT,
     [{"kind": "docs", "entity": "svc",
       "spec": "openapi: 3.0.1\ninfo: {title: Orders, version: '1.0'}\npaths: {/orders: {get: {responses: {'200': {description: ok}}}}}\n"}]),
]


@pytest.mark.parametrize(("path", "method", "spec", "records"), CASES)
def test_body_validates_against_official_schema(path: str, method: str, spec: dict[str, Any],
                                                records: list[dict[str, Any]]) -> None:
    request = build_request(_queued(records))
    assert request.write.method == method.upper()
    errors = list(_validator(spec, path, method).iter_errors(request.write.body))
    assert not errors, [e.message for e in errors]


def test_validator_catches_a_bad_body() -> None:
    """The check above can fail: a deploy without its required title is rejected."""
    errors = list(_validator(CURRENT, "/api/v1/catalog/{tagOrId}/deploys", "post").iter_errors(
        {"timestamp": "2026-01-01T00:00:00Z", "type": "DEPLOY"}))
    assert errors


def test_metric_batches_never_exceed_100_points() -> None:
    request = build_request(_queued(
        [{"kind": "metric", "entity": "svc", "key": "lead-time", "timestamp": i, "value": 1} for i in range(100)]))
    assert len(request.write.body["series"]) == 100


def test_custom_data_keeps_latest_value_per_key() -> None:
    request = build_request(_queued([
        {"kind": "custom_data", "entity": "svc", "key": "k", "value": 1},
        {"kind": "custom_data", "entity": "svc", "key": "k", "value": 2},
    ]))
    assert request.write.body == {"values": {"svc": [{"key": "k", "value": 2}]}}
    assert [q.seq for q in request.superseded] == [0]


def test_dependencies_keep_the_latest_value_per_edge_and_group_by_caller() -> None:
    request = build_request(_queued([
        {"kind": "dependency", "entity": "svc", "callee": "db", "description": "old"},
        {"kind": "dependency", "entity": "svc", "callee": "db", "method": "GET", "path": "/x"},  # another edge
        {"kind": "dependency", "entity": "svc", "callee": "db", "description": "new"},
        {"kind": "dependency", "entity": "web", "callee": "svc"},
    ]))
    assert request.write.body == {"values": {
        "svc": [{"tag": "db", "description": "new"}, {"tag": "db", "method": "GET", "path": "/x"}],
        "web": [{"tag": "svc"}]}}
    assert [q.seq for q in request.superseded] == [0]
    assert request.several_targets


def test_only_the_newest_document_of_a_batch_is_sent() -> None:
    specs = [f'{{"openapi": "3.1.0", "info": {{"title": "v{i}", "version": "{i}"}}}}' for i in range(3)]
    request = build_request(_queued([{"kind": "docs", "entity": "svc", "spec": spec} for spec in specs]))
    assert json.loads(request.write.body["spec"])["info"]["title"] == "v2"
    assert [q.seq for q in request.superseded] == [0, 1]
    assert [q.seq for q in request.entities["svc"]] == [2]


def test_the_dependency_delete_body_validates_against_the_official_schema() -> None:
    request = delete_dependencies([("svc", "db", None, None), ("svc", "api", "GET", "/x"), ("web", "svc", None, None)])
    assert (request.method, request.path) == ("DELETE", "/api/v1/catalog/dependencies")
    assert request.body == {"values": {"svc": [{"tag": "db"}, {"tag": "api", "method": "GET", "path": "/x"}],
                                       "web": [{"tag": "svc"}]}}
    errors = list(_validator(CURRENT, "/api/v1/catalog/dependencies", "delete").iter_errors(request.body))
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize(("path", "kind"), [("/api/v1/catalog/{tagOrId}/deploys/{uuid}", "deploy"),
                                            ("/api/v1/catalog/{tagOrId}/custom-events/{uuid}", "event")])
def test_update_by_uuid_bodies_validate_against_official_schema(path: str, kind: str) -> None:
    """The PUT of a coalesced deploy (and of an event) takes the same body as its POST."""
    fields: dict[str, Any] = {"kind": kind, "entity": "svc", "title": "Deploy", "timestamp": "2026-01-01T00:00:00Z",
                              "url": "https://ci/1", "customData": {"n": 678}}
    fields |= {"sha": "9f1c", "environment": "prod", "deployer": {"name": "a"}} if kind == "deploy" else {
        "type": "ALERT", "description": "d"}
    (queued,) = _queued([fields])
    assert isinstance(queued.record, DeployRecord | EventRecord)
    body = deploy_or_event_body(queued.record)
    body["customData"]["sources"] = [{"source": "github", "id": "r0"}, {"source": "argocd", "id": "r1"}]
    write = (update_deploy if kind == "deploy" else update_event)("svc a", "0b8e4f6e-5d1a-4c1e-9f5e-2a7d3c9b8e11", body)
    suffix = "deploys" if kind == "deploy" else "custom-events"
    assert (write.method, write.path) == ("PUT", f"/api/v1/catalog/svc%20a/{suffix}/0b8e4f6e-5d1a-4c1e-9f5e-2a7d3c9b8e11")
    errors = list(_validator(CURRENT, path, "put").iter_errors(write.body))
    assert not errors, [e.message for e in errors]
    del body["title"]
    assert list(_validator(CURRENT, path, "put").iter_errors(body))
