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
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from aiohttp import hdrs, web
from pydantic import ValidationError

from bridge.cortex.simulator.api import (
    AUDIT_DENIED,
    AUDIT_TAG,
    MAX_BODY_BYTES,
    ROUTES,
    STORE,
    TOKEN,
    json_body,
)
from bridge.cortex.simulator.config import QUOTA_WINDOW_SECONDS, SimFaults, SimulatorConfig
from bridge.cortex.simulator.errors import SimError, bad_request
from bridge.cortex.simulator.graph_api import GRAPH_ROUTES
from bridge.cortex.simulator.store import SimStore
from bridge.cortex.simulator.tokens import expired

logger = logging.getLogger(__name__)

_WRITE_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SlidingWindow:
    """Arrival times of admitted requests in the last window (60 s): the rate limit Cortex enforces."""

    def __init__(self) -> None:
        self._admitted: deque[float] = deque()

    def admit(self, now: float, limit: int, window: float = QUOTA_WINDOW_SECONDS) -> int | None:
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


async def serve(config: SimulatorConfig, host: str, port: int,
                on_listening: Callable[[SimulatorServer], None] | None = None) -> None:
    """Run a simulator until cancelled (``cortex-bridge sim``); ``on_listening`` once it is bound."""
    async with SimulatorServer(config, host, port) as server:
        logger.info("Cortex simulator listening on %s", server.url)
        if on_listening is not None:
            on_listening(server)
        await asyncio.Event().wait()


_SERVER = web.AppKey("server", SimulatorServer)
_routes = web.RouteTableDef()


def create_app(server: SimulatorServer) -> web.Application:
    """The aiohttp application of ``server`` (its store, config and fault state)."""
    app = web.Application(middlewares=[_gatekeeper], client_max_size=MAX_BODY_BYTES)
    app[_SERVER] = server
    app[STORE] = server.store
    app[AUDIT_DENIED] = frozenset(server.config.audit_log_denied_tokens)
    app.add_routes(ROUTES)
    app.add_routes(GRAPH_ROUTES)
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
    if expired(token):
        return _error(SimError(401, "Unauthorized", "the token has expired", "UNAUTHORIZED"))
    if token in config.forbidden_tokens:
        return _error(SimError(403, "Forbidden", "this token is not permitted to call the API"))
    request[TOKEN] = token
    poison = request.app[_SERVER].config.faults.reject_bodies_containing
    small = request.content_length is not None and request.content_length <= MAX_BODY_BYTES
    if poison and small and request.method in _WRITE_METHODS and poison.encode() in await request.read():
        return _error(bad_request(f"body: rejected by injected fault (contains {poison!r})"))
    try:
        response = await handler(request)
    except SimError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        # The router's refusals: no such path (404) or method (405).
        return _error(SimError(exc.status, exc.reason, f"no endpoint {request.method} {request.path}"))
    except Exception:
        logger.exception("simulator handler failed for %s %s", request.method, request.path)
        return _error(SimError(500, "Internal Server Error", type_="UNHANDLED_EXCEPTION"))
    if 200 <= response.status < 300 and request.query.get("dryRun", "").lower() != "true":
        request.app[STORE].audit.record(method=request.method, path=request.path, actor=config.key_identifier(token),
                                        tag=request.get(AUDIT_TAG) or request.match_info.get("tag"),
                                        ip=request.remote)
    return response


# Inspection


@_routes.get("/_sim/state")
async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].snapshot())


@_routes.get("/_sim/requests")
async def _requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STORE].requests))


@_routes.post("/_sim/reset")
async def _reset(request: web.Request) -> web.Response:
    request.app[_SERVER].reset()
    return web.json_response({"reset": True})


@_routes.post("/_sim/faults")
async def _set_faults(request: web.Request) -> web.Response:
    try:
        faults = SimFaults.model_validate(await json_body(request))
    except ValidationError as exc:
        raise bad_request(str(exc)) from None
    request.app[_SERVER].config.faults = faults
    return web.json_response(faults.model_dump())


@_routes.get("/_sim/healthz")
async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
