"""The Cortex endpoints the bridge uses: paths, metric labels, request bodies, what answers mean.

This is the only module that knows the wire format (docs/cortex-api.md; the schemas are those
of ``tests/fixtures/cortex/openapi.json``). Each record kind maps onto one write endpoint:

* ``deploy``      -> ``POST /api/v1/catalog/{entity}/deploys``; a later report of the same
  deploy (coalesced, bridge/sender/coalesce.py) -> ``PUT /api/v1/catalog/{entity}/deploys/{uuid}``
* ``event``       -> ``POST /api/v1/catalog/{entity}/custom-events``
* ``metric``      -> ``POST /api/v1/eng-intel/custom-metrics/{key}/entity/{entity}/bulk``
* ``custom_data`` -> ``PUT /api/v1/catalog/custom-data`` (a map of entity -> items)
* ``dependency``  -> ``PUT /api/v1/catalog/dependencies`` (a map of caller -> callees; an upsert)
* ``docs``        -> ``PUT /api/v1/catalog/{entity}/documentation/openapi`` (the newest document)

Which records share one request is the sender's business; here a write is built from records
already grouped, and a read-back is described as a :class:`ListRequest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from bridge.records import (
    BRIDGE_ID_KEY,
    CustomDataRecord,
    DependencyRecord,
    DeployRecord,
    DocsRecord,
    EventRecord,
    MetricRecord,
    format_timestamp,
    parse_timestamp,
)

#: Cortex's documented body limit is 2 MB; keep headroom for JSON framing of the bulk map.
CUSTOM_DATA_MAX_BYTES = 1_900_000
#: The bulk metric endpoint takes at most 100 points per request.
METRIC_POINTS_PER_REQUEST = 100
#: Dependencies per bulk request: Cortex documents no limit; the body limit bounds it too.
DEPENDENCIES_PER_REQUEST = 1000


@dataclass(frozen=True)
class WriteRequest:
    """One write to Cortex; ``endpoint`` labels metrics and carries no ids."""

    method: str
    path: str
    endpoint: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ListRequest:
    """One paginated read: the items are under ``key`` in each page's body."""

    path: str
    key: str
    endpoint: str
    params: dict[str, str] = field(default_factory=dict)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _naive_utc(ts: datetime) -> str:
    """Cortex documents list time filters as date-times without a zone (UTC)."""
    return str(parse_timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])


# -- writes ------------------------------------------------------------------------------------


def deploy_or_event_body(record: DeployRecord | EventRecord) -> dict[str, Any]:
    """Request body for a deploy or custom event, with the bridge id in ``customData``."""
    custom = dict(record.custom_data or {})
    custom[BRIDGE_ID_KEY] = record.id
    body: dict[str, Any] = {
        "title": record.title,
        "timestamp": format_timestamp(record.timestamp),
        "type": record.type,
    }
    if isinstance(record, DeployRecord):
        for name in ("sha", "environment", "url"):
            value = getattr(record, name)
            if value is not None:
                body[name] = value
        if record.deployer is not None:
            body["deployer"] = record.deployer.model_dump(exclude_none=True)
    else:
        if record.description is not None:
            body["description"] = record.description
        if record.url is not None:
            body["url"] = record.url
    body["customData"] = custom
    return body


def metric_point(record: MetricRecord) -> dict[str, Any]:
    """One item of a bulk metric request's ``series``."""
    return {"timestamp": format_timestamp(record.timestamp), "value": record.value}


def custom_data_item(record: CustomDataRecord) -> dict[str, Any]:
    """One item of an entity's list in a custom-data bulk request."""
    item: dict[str, Any] = {"key": record.key, "value": record.value}
    if record.description is not None:
        item["description"] = record.description
    return item


def create_deploy_or_event(record: DeployRecord | EventRecord) -> WriteRequest:
    """``POST`` one deploy or custom event (neither has a bulk endpoint)."""
    suffix, endpoint = ("deploys", "deploys.create") if record.kind == "deploy" else (
        "custom-events", "custom_events.create")
    return WriteRequest("POST", f"/api/v1/catalog/{_segment(record.entity)}/{suffix}", endpoint,
                        deploy_or_event_body(record))


def update_deploy(entity: str, deploy_uuid: str, body: dict[str, Any]) -> WriteRequest:
    """*Update deployment by UUID*: ``PUT`` replaces every field, so ``body`` is the whole deploy."""
    return WriteRequest("PUT", f"/api/v1/catalog/{_segment(entity)}/deploys/{_segment(deploy_uuid)}",
                        "deploys.update", body)


def update_event(entity: str, event_uuid: str, body: dict[str, Any]) -> WriteRequest:
    """*Update custom event by UUID*: ``PUT`` replaces every field, so ``body`` is the whole event."""
    return WriteRequest("PUT", f"/api/v1/catalog/{_segment(entity)}/custom-events/{_segment(event_uuid)}",
                        "custom_events.update", body)


def add_metric_points(points: Sequence[MetricRecord]) -> WriteRequest:
    """Bulk-add points that share one entity and metric key (at most :data:`METRIC_POINTS_PER_REQUEST`)."""
    first = points[0]
    return WriteRequest(
        "POST",
        f"/api/v1/eng-intel/custom-metrics/{_segment(first.key)}/entity/{_segment(first.entity)}/bulk",
        "custom_metrics.bulk",
        {"series": [metric_point(p) for p in points]},
    )


def put_custom_data(items: Sequence[CustomDataRecord]) -> WriteRequest:
    """Bulk-put custom-data items of any entities; a later item for the same key overwrites."""
    values: dict[str, list[dict[str, Any]]] = {}
    for record in items:
        values.setdefault(record.entity, []).append(custom_data_item(record))
    return WriteRequest("PUT", "/api/v1/catalog/custom-data", "custom_data.bulk", {"values": values})


def dependency_item(record: DependencyRecord) -> dict[str, Any]:
    """One callee of a caller's list in a bulk dependency request."""
    item: dict[str, Any] = {"tag": record.callee}
    for name in ("method", "path", "description", "metadata"):
        value = getattr(record, name)
        if value is not None:
            item[name] = value
    return item


def put_dependencies(items: Sequence[DependencyRecord]) -> WriteRequest:
    """Bulk create-or-update dependencies of any callers (*Create or update dependencies in bulk*)."""
    values: dict[str, list[dict[str, Any]]] = {}
    for record in items:
        values.setdefault(record.entity, []).append(dependency_item(record))
    return WriteRequest("PUT", "/api/v1/catalog/dependencies", "dependencies.bulk", {"values": values})


#: A dependency as Cortex keys it: (caller, callee, method, path).
Edge = tuple[str, str, str | None, str | None]


def delete_dependencies(edges: Sequence[Edge]) -> WriteRequest:
    """Remove these dependencies (*Delete dependencies in bulk*: the upsert's body, keys only)."""
    values: dict[str, list[dict[str, Any]]] = {}
    for caller, callee, method, path in edges:
        item: dict[str, Any] = {"tag": callee}
        if method is not None and path is not None:
            item.update(method=method, path=path)
        values.setdefault(caller, []).append(item)
    return WriteRequest("DELETE", "/api/v1/catalog/dependencies", "dependencies.delete", {"values": values})


def put_openapi_docs(record: DocsRecord) -> WriteRequest:
    """Replace an entity's OpenAPI docs (*Update OpenAPI docs for entity*): the spec as JSON text."""
    return WriteRequest("PUT", f"/api/v1/catalog/{_segment(record.entity)}/documentation/openapi",
                        "docs.openapi", {"spec": record.spec})


# -- answers to writes ---------------------------------------------------------------------------


def created_uuid(body: Any) -> str | None:
    """The uuid Cortex gave a created deploy or event, when the answer carries one."""
    value = body.get("uuid") if isinstance(body, dict) else None
    return str(value) if value else None


def entities_not_found(body: Any) -> frozenset[str]:
    """Entities a custom-data bulk answer (200) reports as ``NOT_FOUND`` in its ``errors`` map.

    Cortex applies the other entities' items and answers 200 all the same.
    """
    errors = body.get("errors") if isinstance(body, dict) else None
    return frozenset(tag for tag, err in (errors or {}).items() if str(err).upper() == "NOT_FOUND")


# -- reads -----------------------------------------------------------------------------------------


def list_deploys(entity: str) -> ListRequest:
    """Every deploy of ``entity``."""
    return ListRequest(f"/api/v1/catalog/{_segment(entity)}/deploys", "deployments", "deploys.list")


def list_custom_events(entity: str, event_type: str, start: datetime, end: datetime) -> ListRequest:
    """Custom events of one type on ``entity`` between ``start`` and ``end``."""
    return ListRequest(
        f"/api/v1/catalog/{_segment(entity)}/custom-events", "events", "custom_events.list",
        {"type": event_type, "startTime": _naive_utc(start), "endTime": _naive_utc(end)},
    )


def list_metric_points(key: str, entity: str, start: datetime, end: datetime) -> ListRequest:
    """Points of metric ``key`` on ``entity`` between ``start`` and ``end``."""
    return ListRequest(
        f"/api/v1/eng-intel/custom-metrics/{_segment(key)}/entity/{_segment(entity)}", "data",
        "custom_metrics.list", {"startDate": _naive_utc(start), "endDate": _naive_utc(end)},
    )


def list_entities_of_repository(repository: str) -> ListRequest:
    """Catalog entities linked to git repository ``org/repo``."""
    return ListRequest("/api/v1/catalog", "entities", "catalog.list", {"gitRepositories": repository})


#: The official CLI's auth check: the first page of one catalog entity.
TOKEN_CHECK = ListRequest("/api/v1/catalog", "entities", "catalog.list", {"pageSize": "1"})


def bridge_id_of(item: dict[str, Any]) -> Any:
    """The bridge id a read-back deploy or event carries in its ``customData`` (None if none)."""
    return (item.get("customData") or {}).get(BRIDGE_ID_KEY)
