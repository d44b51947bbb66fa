"""Wiring: settings -> queue, request budget, Cortex client, sender, sources, HTTP servers.

Also owns the process lifecycle, including the SIGTERM drain contract (docs/operations.md):
readiness goes false at once, new input gets 503 + Retry-After, sources stop, in-flight Cortex
requests finish or stay recorded as ambiguous, the queue is checkpointed, exit 0 within the
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from bridge import __version__, metrics
from bridge.config import ConfigError, Settings, redact_url
from bridge.cortex.budget import WINDOW_SECONDS, budget_from_settings
from bridge.cortex.catalog import RepositoryCatalog
from bridge.cortex.circuit import CircuitState
from bridge.cortex.client import CortexClient, client_from_settings
from bridge.cortex.token import token_expiry
from bridge.queue import DurableQueue, QueueBackend
from bridge.queue.open import open_queue
from bridge.queue.spend import QueueSpendLog
from bridge.secrets import SecretUnavailable
from bridge.sender.sender import Sender
from bridge.sources.admit import error_response
from bridge.sources.base import Source, SourceContext
from bridge.sources.edge import BodyBudget, EdgeRunner
from bridge.sources.native import NativeEndpoint, serve_schema
from bridge.sources.registry import build_sources
from bridge.sources.webhooks.source import UNKNOWN_SOURCE_ROUTE, WebhookSource
from bridge.tasks import cancel_and_wait

log = structlog.get_logger("bridge.app")

TOKEN_EXPIRY_WARNING_SECONDS = 7 * 86400


@dataclass
class Bridge:
    """A running bridge: build with :meth:`create`, then :meth:`start` / :meth:`stop`."""

    settings: Settings
    queue: QueueBackend
    client: CortexClient
    sender: Sender
    sources: list[Source]
    draining: bool = False
    started: bool = False
    ingest_port: int = 0
    metrics_port: int = 0
    #: memory of request bodies read before authentication, shared by every HTTP input
    body_budget: BodyBudget = field(default_factory=lambda: BodyBudget(32 * 1024 * 1024))
    _runners: list[web.AppRunner] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def create(cls, settings: Settings) -> Bridge:
        """Open the queue and build client, sender and sources; raises ``ConfigError`` or
        ``SourceConfigError`` for settings that cannot work (a secret file that cannot be read)."""
        queue = await open_queue(settings.queue, settle_seconds=settings.cortex.reconcile_settle_seconds,
                                 deploys=settings.deploys)
        cortex = settings.cortex
        # What earlier processes sent in the current window is in the queue database: a
        # restart inside a minute must not start with a fresh budget (bridge/cortex/budget.py).
        spend_log = QueueSpendLog(queue, keep_seconds=WINDOW_SECONDS + cortex.request_timeout_seconds + 60)
        client = client_from_settings(cortex, budget_from_settings(cortex, spend_log))
        # A replica that becomes the sender counts what its predecessor spent in the quota window.
        queue.on_sender_takeover(client.bucket.reload)
        sender = Sender(queue, client, settings.cortex, settings.retry, settings.deploys,
                        dependencies=settings.dependencies)
        bridge = cls(settings, queue, client, sender, [],
                     body_budget=BodyBudget(settings.http.unauthenticated_body_bytes))
        ctx = SourceContext(
            settings=settings,
            queue=queue,
            lookup_repository=RepositoryCatalog(client).lookup,
            draining=lambda: bridge.draining,
            body_budget=bridge.body_budget,
        )
        try:
            bridge.sources = build_sources(settings.sources, ctx)
            check_secret_files(settings, bridge.sources)
        except Exception:
            await queue.close()
            await client.close()
            raise
        return bridge

    # -- HTTP ----------------------------------------------------------------------------------

    def ingest_app(self) -> web.Application:
        http = self.settings.http
        app = web.Application(client_max_size=http.max_body_bytes, middlewares=[self._drain_middleware])
        native = NativeEndpoint(
            self.queue,
            ingest=self.settings.ingest,
            max_body_bytes=http.max_body_bytes,
            retry_after=self.settings.queue.retry_after_seconds,
            body_timeout=http.body_timeout_seconds,
            budget=self.body_budget,
        )
        app.router.add_post("/v1/records", native.handle)
        app.router.add_get("/v1/schema", serve_schema)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz/delivery", self._healthz_delivery)
        for source in self.sources:
            app.router.add_routes(source.routes())
        app.router.add_routes([UNKNOWN_SOURCE_ROUTE])  # after the sources' routes, which match first
        return app

    @web.middleware
    async def _drain_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.draining and request.method == "POST":
            return error_response(503, "bridge is shutting down; retry on another replica", source="drain",
                                  headers={"Retry-After": str(self.settings.queue.retry_after_seconds)})
        response: web.StreamResponse = await handler(request)
        return response

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready means: input is accepted and made durable.

        Cortex's health is not part of it (see :meth:`delivery_health`): a pod that can queue must
        keep receiving webhooks while Cortex rejects the token or is down, or CI systems get
        connection errors for input the bridge could have kept.
        """
        reasons = []
        if not self.started:
            reasons.append("starting")
        if self.draining:
            reasons.append("draining")
        if not self.queue.writable:
            reasons.append(self.queue.unwritable_reason)
        return not reasons, reasons

    def delivery_health(self) -> tuple[bool, list[str]]:
        """Whether records can reach Cortex now: the token is accepted and the circuit is closed."""
        reasons = []
        auth = self.sender.auth
        if auth.failed:
            reasons.append(f"Cortex rejected the token ({auth.status}): {auth.message}")
        circuit = self.client.circuit.state
        if circuit is not CircuitState.CLOSED:
            reasons.append(f"Cortex circuit breaker is {circuit.name.lower().replace('_', '-')}"
                           " (Cortex unreachable or failing)")
        return not reasons, reasons

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self.readiness()
        metrics.READY.set(1 if ready else 0)
        return web.json_response({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    async def _healthz_delivery(self, request: web.Request) -> web.Response:
        # For people and alerts, not for a probe: delivery stopping must not take the pod out of
        # the Service (input is still accepted and queued).
        healthy, reasons = self.delivery_health()
        body = {"delivering": healthy, "reasons": reasons, "queue_depth": self.queue.depth,
                "cortex_url": redact_url(self.settings.cortex.url)}
        return web.json_response(body, status=200 if healthy else 503)

    @staticmethod
    async def _metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve ingest and metrics, start the sender and the sources."""
        http, met = self.settings.http, self.settings.metrics
        # Readiness must not claim a durable queue before a write went through (a restart on a
        # full disk would otherwise be "ready" until the first append failed).
        if not await self.queue.probe_writable():
            log.error("queue_not_writable_at_start", queue=str(self.settings.queue.path),
                      hint="input is refused with 503 and /readyz fails until a write succeeds")
        self.ingest_port = await self._serve(self.ingest_app(), http.host, http.port,
                                             header_timeout=http.header_timeout_seconds)
        self.metrics_port = await self._serve(self.metrics_app(), met.host, met.port,
                                              header_timeout=http.header_timeout_seconds)
        self._check_token_expiry()
        self._warn_unauthenticated()
        if self.settings.cortex.verify_token_on_start:
            resp = await self.sender.verify_token()
            if resp is not None and resp.status in (401, 403):
                log.error("cortex_token_invalid_at_start", status=resp.status,
                          hint="records are accepted and kept until a valid token is configured")
        await self.sender.start()
        for source in self.sources:
            await source.start()
        self._tasks.append(asyncio.create_task(self._maintenance(), name="maintenance"))
        self.started = True
        metrics.READY.set(1 if self.readiness()[0] else 0)
        log.info("bridge_started", version=__version__, ingest_port=self.ingest_port, metrics_port=self.metrics_port,
                 cortex_url=redact_url(self.settings.cortex.url), queue=str(self.settings.queue.path),
                 sources=[s.name for s in self.sources])

    def _warn_unauthenticated(self) -> None:
        """One warning per input that takes anything from anyone who reaches the port."""
        http = self.settings.http
        where = f"{http.host}:{self.ingest_port}"
        if self.settings.ingest.allow_unauthenticated:
            log.warning("unauthenticated_input", input="POST /v1/records", listen=where,
                        hint="set ingest.token_file (or ingest.token) to require a bearer token")
        for source in self.sources:
            settings = getattr(getattr(source, "adapter", None), "settings", None)
            if getattr(settings, "allow_unauthenticated", False):
                log.warning("unauthenticated_input", input=f"POST /webhooks/{source.name}", listen=where,
                            hint=f"set secrets or secret_files on source {source.name}")

    async def _serve(self, app: web.Application, host: str, port: int, *, header_timeout: float) -> int:
        runner = EdgeRunner(app, header_timeout=header_timeout, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _check_token_expiry(self) -> None:
        token = self.settings.cortex.token_value()
        exp = token_expiry(token) if token else None
        metrics.CORTEX_TOKEN_EXPIRY.set(exp or 0)
        if exp is not None:
            left = exp - time.time()
            if left <= 0:
                log.error("cortex_token_expired", expired_seconds_ago=int(-left))
            elif left < TOKEN_EXPIRY_WARNING_SECONDS:
                log.warning("cortex_token_expires_soon", expires_in_hours=round(left / 3600, 1))

    async def _maintenance(self) -> None:
        last_prune = last_gauges = 0.0
        while True:
            with contextlib.suppress(Exception):
                if not self.queue.writable:
                    # Nothing else writes while we refuse input: probe, or readiness never returns.
                    await self.queue.probe_writable()
                if time.monotonic() - last_gauges >= 5:
                    await self.queue.refresh_gauges()
                    last_gauges = time.monotonic()
                metrics.READY.set(1 if self.readiness()[0] else 0)
                if time.monotonic() - last_prune > 300:  # chunked, so often and small
                    await self.queue.prune_history()
                    last_prune = time.monotonic()
            await asyncio.sleep(1)

    async def stop(self, deadline: float | None = None) -> None:
        """Drain: refuse input, stop sources, finish or record in-flight sends, close the queue."""
        deadline = self.settings.drain.deadline_seconds if deadline is None else deadline
        end = time.monotonic() + deadline
        self.draining = True
        metrics.READY.set(0)
        log.info("drain_started", deadline_seconds=deadline)
        for source in self.sources:
            try:
                await asyncio.wait_for(source.stop(), timeout=max(0.1, (end - time.monotonic()) / 2))
            except Exception as exc:
                log.warning("source_stop_failed", source=source.name, error=str(exc))
        await self.sender.stop(deadline=max(0.1, end - time.monotonic() - 1.0))
        # Awaited, not only cancelled: a maintenance task mid-query must be out of the queue
        # before it closes.
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.client.close()
        await self.queue.close()
        log.info("drain_finished")


def check_secret_files(settings: Settings, sources: Sequence[Source]) -> None:
    """Raise :class:`ConfigError` naming setting and path of every secret file that cannot be read.

    Kubernetes mounts a Secret before the container starts: a file missing at start is a
    configuration error, not a transient. A bridge started anyway would be ready and answer 503
    to every delivery; refusing to start stops a rollout at its first pod. Later (a rotation under
    way) an unreadable file is a 503 + Retry-After per delivery instead.
    """
    problems = []
    try:
        settings.cortex.token_value()
    except ConfigError as exc:
        problems.append(f"cortex.token_file: {exc}")
    try:
        settings.ingest.secret_set.values()
    except SecretUnavailable as exc:
        problems.append(f"ingest.token_file: {exc}")
    problems += [p for p in (s.secret_files_problem() for s in sources if isinstance(s, WebhookSource)) if p]
    if problems:
        raise ConfigError("; ".join(problems))


@contextlib.asynccontextmanager
async def sources_on_throwaway_queue(settings: Settings, configs: Sequence[dict[str, Any]], *,
                                     catalog: CortexClient | None = None) -> AsyncIterator[list[Source]]:
    """The sources ``configs`` describe, built against a temporary queue that is deleted after.

    For commands that validate or try out sources without ever storing a real record. With
    ``catalog`` their entity resolution looks repositories up in Cortex through that client;
    without, that step is skipped. Raises :class:`~bridge.sources.base.SourceConfigError` for an
    invalid source.
    """
    lookup = RepositoryCatalog(catalog).lookup if catalog is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "throwaway.db")
        try:
            yield build_sources(list(configs), SourceContext(settings=settings, queue=queue,
                                                             lookup_repository=lookup))
        finally:
            await queue.close()


async def run_until_signal(settings: Settings) -> None:
    """``cortex-bridge run``: start, wait for SIGTERM/SIGINT, drain, return."""
    bridge = await Bridge.create(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    await stop.wait()
    await bridge.stop()
