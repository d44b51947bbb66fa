"""A Cortex API simulator that behaves as docs/cortex-api.md describes Cortex.

It serves the endpoints the bridge writes to and reads from, under ``/api/v1``, with Cortex's
bearer auth, error bodies, 2 MB body limit and 1000/min rate limit (a sliding 60 s window, answered
``429`` + ``Retry-After``). Faults can be injected, and changed at run time: latency, random 503s,
429 storms, writes that are stored but never answered, and outages that refuse connections.

``/_sim/`` is for tests and benchmarks (no auth, no rate limit, no faults): ``state`` (all that
was stored), ``requests`` (every ``/api/`` request with its status; 0 = no answer), ``reset``,
``faults`` and ``healthz``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.cortex.simulator.store import SimEntity, SimError, SimStore, bad_request, parse_date_time

__all__ = [
    "EXAMPLE_CONFIG",
    "SimEntity",
    "SimFaults",
    "SimStore",
    "SimulatorConfig",
    "SimulatorServer",
    "create_app",
    "serve",
]

logger = logging.getLogger(__name__)

#: The example tenant shipped with the package (also what ``cortex-bridge demo`` runs against).
EXAMPLE_CONFIG = Path(__file__).with_name("example.yaml")

#: Cortex's documented request body limit (docs/cortex-api.md).
MAX_BODY_BYTES = 2 * 1024 * 1024

_WINDOW_SECONDS = 60.0
_WRITE_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_PUT})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimFaults(BaseModel):
    """Faults injected into ``/api/`` requests; replace ``SimulatorServer.config.faults`` to change them."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, description="Added to every /api/ response.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction of /api/ requests answered 503.")
    seed: int = Field(default=0, description="Seed of the error_rate draws, so a run can be repeated.")
    drop_after_commit_every: int = Field(
        default=0,
        ge=0,
        description="Every Nth successful POST/PUT is stored, then its connection closed unanswered.",
    )
    retry_after_seconds: int | None = Field(
        default=None, ge=0, description="Retry-After of every 429 instead of computed."
    )
    commit_delay_ms: float = Field(
        default=0,
        ge=0,
        description="Every write is held this long, then stored and answered, even when the client "
        "has given up meanwhile (a slow backend behind a gateway that outlives the client's timeout).",
    )
    force_429_every: int = Field(
        default=0, ge=0, description="Every Nth /api/ request is answered 429 and not applied."
    )
    reject_bodies_containing: str | None = Field(
        default=None,
        description="A write whose body contains this text is answered 400 and not applied "
        "(Cortex rejecting a body for a reason the client could not foresee).",
    )


class SimulatorConfig(BaseModel):
    """The simulated tenant: who may call, which entities and metrics exist, limits and faults."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[str] = ["sim-token"]
    forbidden_tokens: list[str] = Field(default=[], description="Known tokens that get 403 on every call.")
    entities: list[SimEntity] = []
    metric_keys: list[str] = Field(
        default=[], description="Custom metric definitions (type PUBLIC_API) that exist."
    )
    rate_limit_per_minute: int = Field(
        default=1000, ge=0, description="Admitted requests per sliding 60 s; 0 = no limit."
    )
    rate_limit_window_seconds: float = Field(
        default=_WINDOW_SECONDS, gt=0,
        description="Length of the sliding window (Cortex: 60 s; shorter only to test quotas quickly).",
    )
    faults: SimFaults = SimFaults()

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatorConfig:
        """Load a config from YAML with the same keys as this model."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


class SlidingWindow:
    """Arrival times of admitted requests in the last window (60 s): the rate limit Cortex enforces."""

    def __init__(self) -> None:
        self._admitted: deque[float] = deque()

    def admit(self, now: float, limit: int, window: float = _WINDOW_SECONDS) -> int | None:
        """Admit a request arriving at ``now`` (None), or return the whole seconds until one would be."""
        if limit <= 0:
            return None
        while self._admitted and self._admitted[0] <= now - window:
            self._admitted.popleft()
        if len(self._admitted) < limit:
            self._admitted.append(now)
            return None
        # The window admits again once this entry, and all older ones, have left it.
        blocking = self._admitted[len(self._admitted) - limit]
        return max(1, math.ceil(blocking + window - now))

    def clear(self) -> None:
        """Forget all admitted requests."""
        self._admitted.clear()


class _FaultClock:
    """Counters and random draws for one :class:`SimFaults` value; rebuilt when the value changes."""

    def __init__(self, faults: SimFaults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._requests = 0
        self._committed_writes = 0

    def next_request(self) -> tuple[bool, bool]:
        """Whether the next /api/ request is forced to 429, and whether it fails with 503.

        Both are decided at arrival for every request, so the k-th request's fate depends only on
        the faults and k, never on timing or the rate limit.
        """
        self._requests += 1
        every = self.faults.force_429_every
        forced_429 = every > 0 and self._requests % every == 0
        fails = self.faults.error_rate > 0 and self._random.random() < self.faults.error_rate
        return forced_429, fails

    def drop_committed_write(self) -> bool:
        """Whether the write just stored is the Nth one, whose answer is to be lost."""
        every = self.faults.drop_after_commit_every
        if every <= 0:
            return False
        self._committed_writes += 1
        return self._committed_writes % every == 0


class SimulatorServer:
    """A Cortex simulator on a real TCP port; use ``async with`` or ``start()``/``stop()``."""

    def __init__(self, config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.store = SimStore(config.entities, config.metric_keys)
        self._window = SlidingWindow()
        self._clock = _FaultClock(config.faults)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._reopen: asyncio.Task[None] | None = None
        self._held: set[asyncio.Future[web.StreamResponse]] = set()  # writes held by commit_delay_ms

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; afterwards ``port`` is the bound port (useful with port 0)."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # No access log: it would cost more than the simulated work at thousands of requests/s.
        self._runner = web.AppRunner(create_app(self), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def stop(self) -> None:
        """Stop serving and close all connections."""
        self._cancel_reopen()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def outage(self, seconds: float | None) -> None:
        """Refuse connections for ``seconds`` (None: until :meth:`resume`), as a host that is down."""
        runner = self._running()
        self._cancel_reopen()
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
            # A pooled client would otherwise keep using its open keep-alive connections.
            if runner.server is not None:
                for connection in runner.server.connections:
                    connection.force_close()
        if seconds is not None:
            self._reopen = asyncio.create_task(self._resume_after(seconds))

    async def resume(self) -> None:
        """End an outage now: listen again on the same port."""
        self._running()
        self._cancel_reopen()
        if self._site is None:
            await self._listen()

    def reset(self) -> None:
        """Forget all writes, the request log, the rate window and fault counters."""
        self.store.clear()
        self._window.clear()
        self._clock = _FaultClock(self.config.faults)

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _running(self) -> web.AppRunner:
        if self._runner is None:
            raise RuntimeError("simulator is not running")
        return self._runner

    async def _listen(self) -> None:
        # reuse_address: rebinding right after an outage must not fail on sockets in TIME_WAIT.
        site = web.TCPSite(self._running(), self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = site.port

    async def _resume_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._reopen = None
        await self._listen()

    def _cancel_reopen(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None

    def _fault_clock(self) -> _FaultClock:
        # ``config.faults`` may be replaced at any time; a new value starts counting afresh.
        if self._clock.faults is not self.config.faults:
            self._clock = _FaultClock(self.config.faults)
        return self._clock


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Run a simulator until cancelled (``cortex-bridge sim``)."""
    async with SimulatorServer(config, host, port) as server:
        logger.info("Cortex simulator listening on %s", server.url)
        await asyncio.Event().wait()


_SERVER = web.AppKey("server", SimulatorServer)
_routes = web.RouteTableDef()


def create_app(server: SimulatorServer) -> web.Application:
    """The aiohttp application of ``server`` (its store, config and fault state)."""
    app = web.Application(middlewares=[_gatekeeper], client_max_size=MAX_BODY_BYTES)
    app[_SERVER] = server
    app.add_routes(_routes)
    return app


# Responses


def _error(exc: SimError) -> web.Response:
    body: dict[str, Any] = {"message": exc.message, "type": exc.type, "httpStatus": exc.status}
    if exc.details:
        body["details"] = exc.details
    return web.json_response(body, status=exc.status)


def _too_many_requests(retry_after: int) -> web.Response:
    body = {"type": "about:blank", "title": "Too Many Requests", "status": 429, "retryAfter": retry_after}
    return web.json_response(
        body,
        status=429,
        content_type="application/problem+json",
        headers={hdrs.RETRY_AFTER: str(retry_after)},
    )


@web.middleware
async def _gatekeeper(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What Cortex's edge does before a handler runs: rate limit, faults, auth; logs /api/ calls."""
    if not request.path.startswith("/api/"):
        try:
            return await handler(request)
        except SimError as exc:
            return _error(exc)

    server = request.app[_SERVER]
    arrived = time.time()
    entry = server.store.log_request(arrived, request.method, request.path)
    clock = server._fault_clock()
    faults = clock.faults
    forced_429, fails = clock.next_request()
    # Whatever is answered other than 429 (401 and 503 too) counts against the window, so the
    # request log is an exact audit of the limit.
    retry_after = 1 if forced_429 else server._window.admit(
        arrived, server.config.rate_limit_per_minute, server.config.rate_limit_window_seconds)
    if retry_after is not None and faults.retry_after_seconds is not None:
        retry_after = faults.retry_after_seconds
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000)

    response: web.StreamResponse
    if retry_after is not None:
        response = _too_many_requests(retry_after)
    elif fails:
        response = _error(SimError(503, "Service Unavailable", "injected fault (error_rate)"))
    elif faults.commit_delay_ms > 0 and request.method in _WRITE_METHODS:
        # Shielded and read up front: a client that disconnects does not stop the commit.
        await request.read()
        held = asyncio.ensure_future(_held_write(server, request, handler, faults.commit_delay_ms / 1000))
        server._held.add(held)
        held.add_done_callback(server._held.discard)
        response = await asyncio.shield(held)
    else:
        response = await _authorized(server.config, request, handler)
        if request.method in _WRITE_METHODS and 200 <= response.status < 300 and clock.drop_committed_write():
            # Stored, but the client never learns it: as when a proxy dies before the answer.
            # Writing to the closed transport then fails quietly inside aiohttp.
            if request.transport is not None:
                request.transport.close()
            return response
    entry["status"] = response.status
    return response


async def _held_write(server: SimulatorServer, request: web.Request, handler: Handler,
                      delay: float) -> web.StreamResponse:
    await asyncio.sleep(delay)
    return await _authorized(server.config, request, handler)


async def _authorized(config: SimulatorConfig, request: web.Request, handler: Handler) -> web.StreamResponse:
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or (token not in config.tokens and token not in config.forbidden_tokens):
        return _error(SimError(401, "Unauthorized", "missing or unknown bearer token", "UNAUTHORIZED"))
    if token in config.forbidden_tokens:
        return _error(SimError(403, "Forbidden", "this token is not permitted to call the API"))
    poison = request.app[_SERVER].config.faults.reject_bodies_containing
    small = request.content_length is not None and request.content_length <= MAX_BODY_BYTES
    if poison and small and request.method in _WRITE_METHODS and poison.encode() in await request.read():
        return _error(bad_request(f"body: rejected by injected fault (contains {poison!r})"))
    try:
        return await handler(request)
    except SimError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        # The router's refusals: no such path (404) or method (405).
        return _error(SimError(exc.status, exc.reason, f"no endpoint {request.method} {request.path}"))
    except Exception:
        logger.exception("simulator handler failed for %s %s", request.method, request.path)
        return _error(SimError(500, "Internal Server Error", type_="UNHANDLED_EXCEPTION"))


# Request helpers


def _store(request: web.Request) -> SimStore:
    return request.app[_SERVER].store


async def _json_body(request: web.Request) -> Any:
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


@_routes.get("/api/v1/catalog")
async def _list_entities(request: web.Request) -> web.Response:
    repositories = {
        repository.strip().lower()
        for value in request.query.getall("gitRepositories", [])
        for repository in value.split(",")
        if repository.strip()
    }
    return _page(request, "entities", _store(request).entities_in(repositories))


@_routes.get("/api/v1/catalog/{tag}")
async def _entity_details(request: web.Request) -> web.Response:
    return web.json_response(_store(request).entity_details(request.match_info["tag"]))


@_routes.post("/api/v1/catalog/{tag}/deploys")
async def _add_deploy(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return web.json_response(_store(request).add_deploy(request.match_info["tag"], body))


@_routes.get("/api/v1/catalog/{tag}/deploys")
async def _list_deploys(request: web.Request) -> web.Response:
    return _page(request, "deployments", _store(request).deploys_of(request.match_info["tag"]))


@_routes.post("/api/v1/catalog/{tag}/custom-events")
async def _add_event(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return web.json_response(_store(request).add_event(request.match_info["tag"], body))


@_routes.get("/api/v1/catalog/{tag}/custom-events")
async def _list_events(request: web.Request) -> web.Response:
    events = _store(request).events_of(
        request.match_info["tag"],
        request.query.get("type"),
        _time_query(request, "startTime"),
        _time_query(request, "endTime"),
    )
    return _page(request, "events", events)


@_routes.put("/api/v1/catalog/custom-data")
async def _put_custom_data(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return web.json_response(_store(request).put_custom_data(body))


@_routes.get("/api/v1/catalog/{tag}/custom-data")
async def _list_custom_data(request: web.Request) -> web.Response:
    # A bare array: "we do not return page, total, or totalPages" (docs/cortex-api.md).
    page, size = _page_query(request)
    items = _store(request).custom_data_of(request.match_info["tag"])
    return web.json_response(items[page * size : (page + 1) * size])


@_routes.get("/api/v1/catalog/{tag}/custom-data/{key}")
async def _get_custom_data(request: web.Request) -> web.Response:
    return web.json_response(
        _store(request).custom_data_item(request.match_info["tag"], request.match_info["key"])
    )


# Eng Intelligence custom metrics


@_routes.get("/api/v1/eng-intel/custom-metrics")
async def _list_metric_definitions(request: web.Request) -> web.Response:
    definitions = _store(request).metric_definitions
    return _page(request, "metrics", [definitions[key] for key in sorted(definitions)])


@_routes.post("/api/v1/eng-intel/custom-metrics")
async def _create_metric_definition(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return web.json_response(_store(request).create_metric_definition(body))


@_routes.get("/api/v1/eng-intel/custom-metrics/{key}")
async def _get_metric_definition(request: web.Request) -> web.Response:
    return web.json_response(_store(request).metric_definition(request.match_info["key"]))


@_routes.post("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}")
async def _add_metric_point(request: web.Request) -> web.Response:
    body = await _json_body(request)
    _store(request).add_metric_points(request.match_info["key"], request.match_info["tag"], body, bulk=False)
    return web.Response()


@_routes.post("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}/bulk")
async def _add_metric_points(request: web.Request) -> web.Response:
    body = await _json_body(request)
    _store(request).add_metric_points(request.match_info["key"], request.match_info["tag"], body, bulk=True)
    return web.Response()


@_routes.get("/api/v1/eng-intel/custom-metrics/{key}/entity/{tag}")
async def _list_metric_points(request: web.Request) -> web.Response:
    points = _store(request).metric_points_of(
        request.match_info["key"],
        request.match_info["tag"],
        _time_query(request, "startDate"),
        _time_query(request, "endDate"),
    )
    return _page(request, "data", points)


# Inspection


@_routes.get("/_sim/state")
async def _state(request: web.Request) -> web.Response:
    return web.json_response(_store(request).snapshot())


@_routes.get("/_sim/requests")
async def _requests(request: web.Request) -> web.Response:
    return web.json_response(list(_store(request).requests))


@_routes.post("/_sim/reset")
async def _reset(request: web.Request) -> web.Response:
    request.app[_SERVER].reset()
    return web.json_response({"reset": True})


@_routes.post("/_sim/faults")
async def _set_faults(request: web.Request) -> web.Response:
    try:
        faults = SimFaults.model_validate(await _json_body(request))
    except ValidationError as exc:
        raise bad_request(str(exc)) from None
    request.app[_SERVER].config.faults = faults
    return web.json_response(faults.model_dump())


@_routes.get("/_sim/healthz")
async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
