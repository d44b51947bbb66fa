"""The ingest port's edge: time limits on request heads and bodies, and memory before authentication.

aiohttp bounds neither how long a client may take to send its request head nor its body, so a
client trickling bytes holds a connection (and a task) forever. Here:

* :class:`EdgeProtocol` (aiohttp's ``RequestHandler`` with a timer) arms a timer when a
  connection opens and again at the first byte of each further request on a kept-alive
  connection; the timer is cancelled as soon as aiohttp has parsed a complete request head.
  When it fires first, the client gets ``408`` and the connection is closed. Idle kept-alive
  connections are left to aiohttp's keep-alive timeout.
* :func:`read_body` reads a body as a stream under ``http.body_timeout_seconds`` (``408``), stops
  at the route's size limit (``413`` without buffering the rest), and, for a body read before
  its sender is authenticated, holds its bytes against one :class:`BodyBudget` shared by all
  requests (``503`` + ``Retry-After`` when the budget is spent).
* A client that disconnects mid-request is one short log line, not an "Error handling request"
  traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from bridge import metrics
from bridge.sources.admit import error_response

log = structlog.get_logger("bridge.http")

_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                   b"Content-Length: 35\r\n\r\nrequest head not received in time\r\n")


class BodyBudget:
    """Bytes that request bodies hold in memory before their sender is authenticated, all together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        #: the most ever held at once (what tests and the metric's max check against ``limit``)
        self.peak = 0

    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes of the budget; ``False`` (nothing taken) when that would exceed it."""
        if self.held + n > self.limit:
            return False
        self.held += n
        self.peak = max(self.peak, self.held)
        metrics.HTTP_UNAUTHENTICATED_BODY_BYTES.set(self.held)
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken with :meth:`reserve`."""
        self.held -= n
        metrics.HTTP_UNAUTHENTICATED_BODY_BYTES.set(self.held)

    @contextlib.contextmanager
    def holding(self) -> Iterator[_Hold]:
        """``with budget.holding() as hold:`` everything ``hold`` reserved is released on exit."""
        hold = _Hold(self)
        try:
            yield hold
        finally:
            self.release(hold.bytes)


class _Hold:
    """What one request reserved in a :class:`BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def grow_to(self, n: int) -> bool:
        """Hold ``n`` bytes in all; ``False`` (holding what it held) when the budget is spent."""
        if n <= self.bytes:
            return True
        if not self.budget.reserve(n - self.bytes):
            return False
        self.bytes = n
        return True


class BodyRefused(Exception):
    """The body was not read whole; :attr:`response` is the answer (408, 413 or 503)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def read_body(request: web.Request, *, max_bytes: int, timeout: float, source: str,
                    hold: _Hold | None = None, retry_after: int = 5, delivery_id: str | None = None) -> bytes:
    """The whole body of ``request``, read as a stream; raises :class:`BodyRefused`.

    ``hold`` (from ``BodyBudget.holding()``) is for a body read before its sender is
    authenticated: its bytes, the declared ``Content-Length`` up front, are reserved in the
    budget until the ``holding()`` block ends. ``delivery_id`` (from the headers) names the
    delivery in the refusal's log line.
    """
    too_large = f"body larger than {max_bytes} bytes"
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BodyRefused(error_response(413, too_large, source=source, delivery_id=delivery_id))

    def budget_spent() -> BodyRefused:
        metrics.HTTP_BUDGET_REFUSED.inc()
        log.warning("http_unauthenticated_budget_spent", source=source,
                    limit_bytes=hold.budget.limit if hold is not None else 0)
        return BodyRefused(error_response(
            503, "too many unauthenticated request bodies in flight; retry later", source=source,
            headers={"Retry-After": str(retry_after)}, delivery_id=delivery_id))

    if hold is not None and declared and not hold.grow_to(declared):
        raise budget_spent()
    body = bytearray()

    def take(chunk: bytes) -> None:
        if len(body) + len(chunk) > max_bytes:
            raise BodyRefused(error_response(413, too_large, source=source, delivery_id=delivery_id))
        if hold is not None and not hold.grow_to(len(body) + len(chunk)):
            raise budget_spent()
        body.extend(chunk)

    stream = request.content
    try:
        if stream.is_eof():
            # The whole body came with the head (a small request): nothing to wait for, so no
            # timer to arm and cancel on the hot path.
            take(stream.read_nowait())
        else:
            async with asyncio.timeout(timeout):
                while chunk := await stream.readany():
                    take(chunk)
    except TimeoutError:
        metrics.HTTP_TIMEOUTS.labels("body").inc()
        log.info("http_body_timeout", source=source, peer=request.remote, received_bytes=len(body),
                 timeout_seconds=timeout)
        response = error_response(408, f"request body not received within {timeout:g} s", source=source,
                                  headers={"Connection": "close"}, delivery_id=delivery_id)
        response.force_close()
        raise BodyRefused(response) from None
    return bytes(body)


# -- the protocol ------------------------------------------------------------------------------


class EdgeProtocol(RequestHandler):
    """aiohttp's request handler plus a request-head timer and quiet client disconnects."""

    def __init__(self, manager: Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        #: True between the end of a request (or the connection opening) and the next parsed head
        self._awaiting_head = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the head timer: a connection that sends nothing is a slow head too."""
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        """Feed aiohttp's parser; a completed request head stops the timer."""
        if data and self._awaiting_head and self._head_timer is None:
            self._arm_head_timer()  # first byte of a further request on a kept-alive connection
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._awaiting_head = False
            self._cancel_head_timer()

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """After each answer, the next bytes on the connection are a new request head."""
        result = await super().finish_response(request, resp, start_time)
        self._awaiting_head = not self._messages
        if resp.status == 408:
            # A client that stalled mid-body gets its answer and the close, not aiohttp's
            # lingering read (up to 10 s more of a connection held for bytes that never come);
            # the transport sends what is buffered (the answer) before it closes.
            self.force_close()
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the timer with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A client that went away mid-request is one line; anything else is aiohttp's 500."""
        if isinstance(exc, ConnectionError):
            metrics.HTTP_CLIENT_ABORTS.inc()
            log.info("http_client_disconnected", method=request.method, path=request.path,
                     peer=request.remote, error=str(exc) or type(exc).__name__)
            self.force_close()
            return web.Response(status=499)
        return super().handle_error(request, status, exc, message)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport is None:
            return
        metrics.HTTP_TIMEOUTS.labels("header").inc()
        peer = self.transport.get_extra_info("peername")
        log.info("http_header_timeout", peer=str(peer[0]) if peer else None, timeout_seconds=self._header_timeout)
        with contextlib.suppress(Exception):
            self.transport.write(_TIMEOUT_ANSWER)
        self.force_close()


class EdgeServer(Server):
    """aiohttp's low-level server, making :class:`EdgeProtocol` connections."""

    def __init__(self, base: Server, *, header_timeout: float) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        """One protocol instance per accepted connection."""
        return EdgeProtocol(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections have a request-head timeout."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout

    async def _make_server(self) -> Server:
        return EdgeServer(await super()._make_server(), header_timeout=self.header_timeout)
