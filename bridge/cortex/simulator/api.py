"""The Cortex endpoints of the simulator: catalog, deploys, custom events, custom data, metrics.

Each handler reads its request as Cortex does (JSON body, ``page``/``pageSize``, date-time
filters) and answers from the tenant's :class:`~bridge.cortex.simulator.store.SimStore`; refusals
are raised as :class:`~bridge.cortex.simulator.errors.SimError` and answered by the server's
gatekeeper.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from aiohttp import web

from bridge.cortex.simulator.audit import list_filters
from bridge.cortex.simulator.bodies import parse_date_time
from bridge.cortex.simulator.descriptors import create_or_patch
from bridge.cortex.simulator.errors import SimError, bad_request
from bridge.cortex.simulator.store import SimStore

#: Cortex's documented request body limit (docs/cortex-api.md §8).
MAX_BODY_BYTES = 2 * 1024 * 1024

#: Where handlers find the tenant's store.
STORE = web.AppKey("store", SimStore)
#: Request keys: the bearer token the gatekeeper accepted; the entity a write without a tag in
#: its path was about (for the audit log).
TOKEN = web.RequestKey("token", str)
AUDIT_TAG = web.RequestKey("audit_tag", str)
#: Tokens without the "View audit logs" permission.
AUDIT_DENIED = web.AppKey("audit_denied", frozenset)
ROUTES = web.RouteTableDef()


# Request helpers


async def json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise SimError(413, "Payload Too Large", f"request body exceeds {MAX_BODY_BYTES} bytes") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise bad_request(f"body: not valid JSON ({exc})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name}: not an integer: {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name}: must be between {low} and {high}")
    return value


def _time_query(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_date_time(raw)
    except ValueError as exc:
        raise bad_request(f"{name}: {exc}") from None


def _flag_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise bad_request(f"{name}: must be true or false, not {raw!r}")
    return raw == "true"


def _page_query(request: web.Request) -> tuple[int, int]:
    """``page`` (0-indexed) and ``pageSize`` (1..1000, default 250), as every Cortex list takes them."""
    return _int_query(request, "page", 0, 0, 2**31 - 1), _int_query(request, "pageSize", 250, 1, 1000)


def _page(request: web.Request, key: str, items: list[dict[str, Any]]) -> web.Response:
    """One page of ``items`` under ``key`` with Cortex's ``page``/``total``/``totalPages``."""
    page, size = _page_query(request)
    return web.json_response(
        {
            key: items[page * size : (page + 1) * size],
            "page": page,
            "total": len(items),
            "totalPages": math.ceil(len(items) / size),
        }
    )


# Catalog


@ROUTES.get("/api/v1/catalog")
async def _list_entities(request: web.Request) -> web.Response:
    repositories = {
        repository.strip().lower()
        for value in request.query.getall("gitRepositories", [])
        for repository in value.split(",")
        if repository.strip()
    }
    return _page(request, "entities", request.app[STORE].entities_in(repositories))


@ROUTES.patch("/api/v1/open-api")
async def _create_or_patch_entity(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("body: not UTF-8 text") from None
    status, body, tag = create_or_patch(request.app[STORE], text, dry_run=_flag_query(request, "dryRun"),
                                        fail_if_missing=_flag_query(request, "failIfEntityDoesNotExist"))
    if tag is not None:
        request[AUDIT_TAG] = tag
    return web.json_response(body, status=status)


@ROUTES.get("/api/v1/audit-logs")
async def _audit_logs(request: web.Request) -> web.Response:
    if request.get(TOKEN) in request.app[AUDIT_DENIED]:
        raise SimError(403, "Forbidden", "API key must have the `View audit logs` permission")
    entries = request.app[STORE].audit.query(
        list_filters(request.query), _time_query(request, "startTime"), _time_query(request, "endTime"))
    return _page(request, "logs", entries)


@ROUTES.get("/api/v1/catalog/{tag}")
async def _entity_details(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].entity_details(request.match_info["tag"]))


@ROUTES.post("/api/v1/catalog/{tag}/deploys")
async def _add_deploy(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(request.app[STORE].add_deploy(request.match_info["tag"], body))


@ROUTES.put("/api/v1/catalog/{tag}/deploys/{uuid}")
async def _update_deploy(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(
        request.app[STORE].update_deploy(request.match_info["tag"], request.match_info["uuid"], body))


@ROUTES.get("/api/v1/catalog/{tag}/deploys")
async def _list_deploys(request: web.Request) -> web.Response:
    return _page(request, "deployments", request.app[STORE].deploys_of(request.match_info["tag"]))


@ROUTES.post("/api/v1/catalog/{tag}/custom-events")
async def _add_event(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(request.app[STORE].add_event(request.match_info["tag"], body))


@ROUTES.put("/api/v1/catalog/{tag}/custom-events/{uuid}")
async def _update_event(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(
        request.app[STORE].update_event(request.match_info["tag"], request.match_info["uuid"], body))


@ROUTES.get("/api/v1/catalog/{tag}/custom-events")
async def _list_events(request: web.Request) -> web.Response:
    events = request.app[STORE].events_of(
        request.match_info["tag"],
        request.query.get("type"),
        _time_query(request, "startTime"),
        _time_query(request, "endTime"),
    )
    return _page(request, "events", events)


@ROUTES.put("/api/v1/catalog/custom-data")
async def _put_custom_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(request.app[STORE].put_custom_data(body))


@ROUTES.get("/api/v1/catalog/{tag}/custom-data")
async def _list_custom_data(request: web.Request) -> web.Response:
    # A bare array: "we do not return page, total, or totalPages" (docs/cortex-api.md).
    page, size = _page_query(request)
    items = request.app[STORE].custom_data_of(request.match_info["tag"])
    return web.json_response(items[page * size : (page + 1) * size])


@ROUTES.get("/api/v1/catalog/{tag}/custom-data/{key}")
async def _get_custom_data(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[STORE].custom_data_item(request.match_info["tag"], request.match_info["key"])
    )


# Eng Intelligence custom metrics


@ROUTES.get("/api/v1/eng-intel/custom-metrics")
async def _list_metric_definitions(request: web.Request) -> web.Response:
    definitions = request.app[STORE].metric_definitions
    return _page(request, "metrics", [definitions[key] for key in sorted(definitions)])


@ROUTES.post("/api/v1/eng-intel/custom-metrics")
async def _create_metric_definition(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(request.app[STORE].create_metric_definition(body))


@ROUTES.get("/api/v1/eng-intel/custom-metrics/{key}")
async def _get_metric_definition(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].metric_definition(request.match_info["key"]))


@ROUTES.post("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}")
async def _add_metric_point(request: web.Request) -> web.Response:
    body = await json_body(request)
    request.app[STORE].add_metric_points(request.match_info["key"], request.match_info["tag"], body, bulk=False)
    return web.Response()


@ROUTES.post("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}/bulk")
async def _add_metric_points(request: web.Request) -> web.Response:
    body = await json_body(request)
    request.app[STORE].add_metric_points(request.match_info["key"], request.match_info["tag"], body, bulk=True)
    return web.Response()


@ROUTES.get("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}")
async def _list_metric_points(request: web.Request) -> web.Response:
    points = request.app[STORE].metric_points_of(
        request.match_info["key"],
        request.match_info["tag"],
        _time_query(request, "startDate"),
        _time_query(request, "endDate"),
    )
    return _page(request, "data", points)
