"""State of the Cortex simulator: the tenant's entities and metric definitions, and all that was written.

Nothing here knows HTTP. Handlers in :mod:`bridge.cortex.simulator.server` pass decoded JSON bodies to
:class:`SimStore`, which validates them against the request schemas of Cortex's API
(``tests/fixtures/cortex/openapi.json``, docs/cortex-api.md), applies them
and returns the response objects Cortex would. A refused request raises :class:`SimError`, which
the HTTP layer renders as Cortex's ``ErrorResponse``.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.cortex.simulator.audit import AuditLog
from bridge.cortex.simulator.bodies import (
    BulkPointsBody,
    CustomDataBody,
    DeployBody,
    Deployer,
    EventBody,
    MetricDefinitionBody,
    PointBody,
    SeriesPoint,
    validate,
)
from bridge.cortex.simulator.errors import SimError
from bridge.cortex.simulator.graph import CatalogGraph

#: Metric points older than this are answered 200 and dropped (docs/cortex-api.md, ticket CET-19691).
METRIC_MAX_AGE = timedelta(days=183)

#: How many requests ``/_sim/requests`` remembers; bounds memory of a long-running ``sim``.
REQUEST_LOG_LIMIT = 1_000_000


def format_timestamp(ts: datetime) -> str:
    """How Cortex writes a date-time in its answers: UTC, millisecond precision, ``Z``.

    The simulator's own, not the bridge's: it models Cortex independently, so that the bridge
    agreeing with it is evidence, not construction.
    """
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class SimEntity(BaseModel):
    """A catalog entity of the simulated tenant; writes to any other tag are answered 404."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str = Field(min_length=1)
    name: str | None = None
    type: str = "service"
    git_repository: str | None = Field(default=None, description="owner/name, e.g. acme/checkout-service")
    git_provider: str = Field(default="github", description="github, gitlab, bitbucket or azure")

    @property
    def id(self) -> str:
        """The 18-character CID (``en`` + 16 hex digits), derived from the tag so it is stable."""
        return "en" + hashlib.sha256(self.tag.encode()).hexdigest()[:16]

    @property
    def service_id(self) -> int:
        """The numeric id Cortex reports as ``serviceId`` on deploys."""
        return int(hashlib.sha256(self.tag.encode()).hexdigest()[16:28], 16)


def _metric_definition(key: str, name: str | None = None) -> dict[str, Any]:
    return {"key": key, "name": name or key, "type": "PUBLIC_API", "isDraft": False}


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    # Absent optional fields are left out of responses rather than sent as null.
    return {key: value for key, value in fields.items() if value is not None}


class SimStore:
    """Everything the simulated tenant holds. Only the event loop touches it, so no locking."""

    def __init__(self, entities: list[SimEntity], metric_keys: list[str]) -> None:
        #: By tag. Tests may add entities at run time; they are then found by tag and by id.
        self.entities: dict[str, SimEntity] = {entity.tag: entity for entity in entities}
        self._configured_metric_keys = list(metric_keys)
        self._ids = itertools.count(1)
        self._loaded_at = format_timestamp(datetime.now(UTC))
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self.deploys: dict[str, list[dict[str, Any]]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.metric_points: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.custom_data: dict[str, dict[str, dict[str, Any]]] = {}
        self.metric_definitions: dict[str, dict[str, Any]] = {}
        self.discarded_old_points = 0
        self.audit = AuditLog()
        self.graph = CatalogGraph()
        self.clear()

    def clear(self) -> None:
        """Forget all writes and the request log; entities and configured metric keys remain."""
        self.requests.clear()
        self.audit.clear()
        self.graph.clear()
        self.deploys.clear()
        self.events.clear()
        self.metric_points.clear()
        self.custom_data.clear()
        self.metric_definitions = {key: _metric_definition(key) for key in self._configured_metric_keys}
        self.discarded_old_points = 0

    def log_request(self, arrived: float, method: str, path: str) -> dict[str, Any]:
        """Append a request to the log; the caller sets ``status`` once it is answered (0 = never)."""
        entry: dict[str, Any] = {"t": arrived, "method": method, "path": path, "status": 0}
        self.requests.append(entry)
        return entry

    # Entities

    def entity(self, tag_or_id: str) -> SimEntity:
        """The entity with this tag or CID; 404 otherwise."""
        entity = self.entities.get(tag_or_id)
        if entity is None:
            entity = next((e for e in self.entities.values() if e.id == tag_or_id), None)
        if entity is None:
            raise SimError(404, "Entity not found", f"no entity with tag or id {tag_or_id!r}")
        return entity

    def entity_summary(self, entity: SimEntity) -> dict[str, Any]:
        """``EntityDetailsSummary``, as listed by ``GET /api/v1/catalog``."""
        summary: dict[str, Any] = {
            "id": entity.id,
            "tag": entity.tag,
            "name": entity.name or entity.tag,
            "type": entity.type,
            "isArchived": False,
            "lastUpdated": self._loaded_at,
            "groups": [],
            "hierarchy": {"parents": [], "children": []},
            "links": [],
            "slackChannels": [],
        }
        if entity.git_repository:
            summary["git"] = {
                "provider": entity.git_provider,
                "repository": entity.git_repository,
                "repositoryUrl": f"https://{entity.git_provider}.com/{entity.git_repository}",
            }
        return summary

    def entity_details(self, tag_or_id: str) -> dict[str, Any]:
        """``DetailsResponse`` of ``GET /api/v1/catalog/{tagOrId}``."""
        entity = self.entity(tag_or_id)
        data = self.custom_data.get(entity.tag, {})
        return {
            **self.entity_summary(entity),
            "metadata": [{"key": key, "value": item["value"]} for key, item in data.items()],
            "ownership": {"emails": [], "groups": [], "slackChannels": []},
        }

    def entities_in(self, git_repositories: set[str]) -> list[dict[str, Any]]:
        """Summaries of all entities, or of those whose repository is in the (lower-cased) set."""
        return [
            self.entity_summary(entity)
            for entity in self.entities.values()
            if not git_repositories or (entity.git_repository or "").lower() in git_repositories
        ]

    # Deploys

    def add_deploy(self, tag_or_id: str, body: Any) -> dict[str, Any]:
        """Store a new deploy (a resend is a new deploy: Cortex has no dedup) and return CustomDeploy."""
        request = validate(DeployBody, body)
        entity = self.entity(tag_or_id)
        deploy = {"uuid": str(uuid.uuid4()), "id": next(self._ids), "serviceId": entity.service_id,
                  **deploy_fields(request)}
        self.deploys.setdefault(entity.tag, []).append(deploy)
        return deploy

    def update_deploy(self, tag_or_id: str, deploy_uuid: str, body: Any) -> dict[str, Any]:
        """*Update deployment by UUID*: replace the deploy's fields, keep its uuid and ids; 404 if unknown."""
        request = validate(DeployBody, body)
        deploys = self.deploys.get(self.entity(tag_or_id).tag, [])
        index = _index_of(deploys, deploy_uuid, "Deployment not found")
        kept = {key: deploys[index][key] for key in ("uuid", "id", "serviceId")}
        deploys[index] = {**kept, **deploy_fields(request)}
        return deploys[index]

    def deploys_of(self, tag_or_id: str) -> list[dict[str, Any]]:
        """An entity's deploys as ``CustomDeploy1`` list items, newest first."""
        entity = self.entity(tag_or_id)
        listed = []
        for deploy in reversed(self.deploys.get(entity.tag, [])):
            item = {key: value for key, value in deploy.items() if key not in ("id", "serviceId")}
            deployer = _present({"name": deploy.get("deployerName"), "email": deploy.get("deployerEmail")})
            if deployer:
                item["deployer"] = deployer
            listed.append(item)
        return listed

    # Custom events

    def add_event(self, tag_or_id: str, body: Any) -> dict[str, Any]:
        """Store a new custom event and return ``CustomEventResponse``."""
        request = validate(EventBody, body)
        entity = self.entity(tag_or_id)
        event = {"uuid": str(uuid.uuid4()), **event_fields(request)}
        self.events.setdefault(entity.tag, []).append(event)
        return event

    def update_event(self, tag_or_id: str, event_uuid: str, body: Any) -> dict[str, Any]:
        """*Update custom event by UUID*: replace the event's fields, keep its uuid; 404 if unknown."""
        request = validate(EventBody, body)
        events = self.events.get(self.entity(tag_or_id).tag, [])
        index = _index_of(events, event_uuid, "Custom event not found")
        events[index] = {"uuid": events[index]["uuid"], **event_fields(request)}
        return events[index]

    def events_of(
        self, tag_or_id: str, type_: str | None, start: datetime | None, end: datetime | None
    ) -> list[dict[str, Any]]:
        """An entity's custom events, newest first, filtered by type and an inclusive time range."""
        entity = self.entity(tag_or_id)
        return [
            event
            for event in reversed(self.events.get(entity.tag, []))
            if (type_ is None or event["type"] == type_) and _within(event["timestamp"], start, end)
        ]

    # Custom metrics

    def metric_definition(self, key: str) -> dict[str, Any]:
        """A metric definition; 404 as Cortex words it when the key is unknown."""
        definition = self.metric_definitions.get(key)
        if definition is None:
            raise SimError(404, "Not Found", "CustomMetricKey not found")
        return definition

    def create_metric_definition(self, body: Any) -> dict[str, Any]:
        """Define a ``PUBLIC_API`` metric; 409 if the key exists."""
        request = validate(MetricDefinitionBody, body)
        if request.key in self.metric_definitions:
            raise SimError(409, "Conflict", f"custom metric {request.key!r} already exists")
        definition = {
            **_metric_definition(request.key, request.name),
            **_present(
                {"valence": request.valence, "category": request.category, "description": request.description}
            ),
            "isDraft": request.isDraft,
        }
        self.metric_definitions[request.key] = definition
        return definition

    def add_metric_points(self, key: str, tag_or_id: str, body: Any, *, bulk: bool) -> None:
        """Store points of the bulk (``{"series": [...]}``) or single-point body; drop too-old ones."""
        points: list[SeriesPoint] | list[PointBody]
        points = validate(BulkPointsBody, body).series if bulk else [validate(PointBody, body)]
        self.metric_definition(key)
        entity = self.entity(tag_or_id)
        now = datetime.now(UTC)
        series = self.metric_points.setdefault(key, {}).setdefault(entity.tag, [])
        for point in points:
            timestamp = point.timestamp or now
            if timestamp < now - METRIC_MAX_AGE:
                self.discarded_old_points += 1
            else:
                series.append({"timestamp": format_timestamp(timestamp), "value": point.value})

    def metric_points_of(
        self, key: str, tag_or_id: str, start: datetime | None, end: datetime | None
    ) -> list[dict[str, Any]]:
        """Points of one metric and entity in the inclusive time range, oldest first.

        Cortex's default ``startDate`` (6 months ago) needs no code: older points are never stored.
        """
        self.metric_definition(key)
        entity = self.entity(tag_or_id)
        points = self.metric_points.get(key, {}).get(entity.tag, [])
        return sorted(
            (p for p in points if _within(p["timestamp"], start, end)), key=lambda p: p["timestamp"]
        )

    # Custom data

    def put_custom_data(self, body: Any) -> dict[str, Any]:
        """Bulk upsert (last write wins per tag and key); unknown tags are reported, not fatal."""
        request = validate(CustomDataBody, body)
        now = format_timestamp(datetime.now(UTC))
        values: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for tag, items in request.values.items():
            try:
                entity = self.entity(tag)
            except SimError:
                errors[tag] = "NOT_FOUND"
                continue
            stored = self.custom_data.setdefault(entity.tag, {})
            for item in items:
                previous = stored.get(item.key)
                stored[item.key] = {
                    "id": previous["id"] if previous else next(self._ids),
                    "key": item.key,
                    "value": item.value,
                    "source": "API",
                    "dateUpdated": now,
                    **_present({"description": item.description}),
                }
                values.append(stored[item.key])
        return {"values": values, "errors": errors}

    def custom_data_of(self, tag_or_id: str) -> list[dict[str, Any]]:
        """An entity's ``CustomData`` items."""
        return list(self.custom_data.get(self.entity(tag_or_id).tag, {}).values())

    def custom_data_item(self, tag_or_id: str, key: str) -> dict[str, Any]:
        """One ``CustomData`` item; 404 if the entity has no such key."""
        item = self.custom_data.get(self.entity(tag_or_id).tag, {}).get(key)
        if item is None:
            raise SimError(404, "Custom data not found for given entity and key", f"key {key!r}")
        return item

    # Inspection

    def snapshot(self) -> dict[str, Any]:
        """The ``/_sim/state`` document: all stored records, oldest first, and their counts."""
        custom_data = {
            tag: {
                key: {"value": item["value"], "description": item.get("description")}
                for key, item in data.items()
            }
            for tag, data in self.custom_data.items()
        }
        return {
            "deploys": self.deploys,
            "events": self.events,
            "metrics": self.metric_points,
            "custom_data": custom_data,
            "counts": {
                "deploys": sum(map(len, self.deploys.values())),
                "events": sum(map(len, self.events.values())),
                "metric_points": sum(
                    len(s) for by_tag in self.metric_points.values() for s in by_tag.values()
                ),
                "custom_data": sum(map(len, self.custom_data.values())),
            },
            "discarded_old_points": self.discarded_old_points,
            **self.graph.snapshot(),
        }


def deploy_fields(request: DeployBody) -> dict[str, Any]:
    """What a ``CustomDeploy`` answer carries of its request (all but uuid and ids)."""
    deployer = request.deployer or Deployer()
    return {
        "title": request.title,
        "timestamp": format_timestamp(request.timestamp),
        "type": request.type,
        **_present({"sha": request.sha, "environment": request.environment, "url": request.url,
                    "customData": request.customData, "deployerName": deployer.name,
                    "deployerEmail": deployer.email}),
    }


def event_fields(request: EventBody) -> dict[str, Any]:
    """What a ``CustomEventResponse`` carries of its request (all but the uuid)."""
    return {
        "title": request.title,
        "type": request.type,
        "timestamp": format_timestamp(request.timestamp),
        **_present({"description": request.description, "url": request.url, "customData": request.customData}),
    }


def _index_of(items: list[dict[str, Any]], item_uuid: str, missing: str) -> int:
    # The path parameter is ``format: uuid``: Spring refuses anything else before the lookup.
    try:
        wanted = str(uuid.UUID(item_uuid))
    except ValueError:
        raise SimError(400, "Bad Request", f"uuid: not a UUID: {item_uuid!r}") from None
    for index, item in enumerate(items):
        if item["uuid"] == wanted:
            return index
    raise SimError(404, missing, f"no item with uuid {item_uuid!r} on this entity")


def _within(timestamp: str, start: datetime | None, end: datetime | None) -> bool:
    moment = datetime.fromisoformat(timestamp)
    return (start is None or moment >= start) and (end is None or moment <= end)
