"""A small typed client for the Cortex endpoints the bridge uses.

Every request takes a permit from the shared :class:`TokenBucket`, and a 429 pauses that bucket
for ``Retry-After`` before the answer is returned. Failures are sorted by what they mean for
delivery: :class:`NotSent` (safe to resend) versus :class:`Ambiguous` (the request may have been
stored; a non-idempotent write must be read back before any resend).

Every request also passes the process-wide :class:`~bridge.cortex.circuit.CircuitBreaker`:
while it is open nothing is sent and :meth:`CortexClient.request` raises :class:`NotSent` at
once (callers that should wait instead, like the sender's workers, wait on
``client.circuit.wait_ready()`` first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge import metrics
from bridge.config import CortexSettings
from bridge.cortex.budget import Permit, TokenBucket
from bridge.cortex.circuit import CircuitBreaker
from bridge.cortex.endpoints import TOKEN_CHECK, ListRequest, WriteRequest, list_entities_of_repository

USER_AGENT = "cortex-bridge/0.1"


class NotSent(Exception):
    """The request never reached Cortex (connection refused, DNS, TLS handshake)."""


class Ambiguous(Exception):
    """The request may have reached Cortex, but no answer came back (timeout, dropped connection)."""


@dataclass(frozen=True)
class CortexResponse:
    status: int
    body: Any
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def message(self) -> str:
        """Cortex's own explanation, as its CLI prints it."""
        if isinstance(self.body, dict):
            parts = [str(self.body.get(k)) for k in ("message", "details", "detail", "title") if self.body.get(k)]
            if self.body.get("violations"):
                parts.append(json.dumps(self.body["violations"])[:500])
            if parts:
                return " - ".join(parts)
        text = self.body if isinstance(self.body, str) else json.dumps(self.body)
        return f"HTTP {self.status}: {text[:300]}"


def parse_retry_after(header: str | None, body: Any) -> float:
    """Seconds to wait after a 429: header, else problem+json ``retryAfter``, else 1 s."""
    for candidate in (header, body.get("retryAfter") if isinstance(body, dict) else None):
        if candidate is None:
            continue
        try:
            value = float(candidate)
        except (TypeError, ValueError):
            continue
        if value >= 0:
            return value
    return 1.0


class CortexClient:
    """Cortex REST API client bound to one base URL, token provider and request budget."""

    def __init__(
        self,
        base_url: str,
        token: Callable[[], str | None],
        bucket: TokenBucket,
        *,
        timeout_seconds: float = 30.0,
        max_connections: int = 16,
        circuit: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.strip().strip("'\"").rstrip("/")
        self._token = token
        self.bucket = bucket
        self.circuit = circuit if circuit is not None else CircuitBreaker()
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=min(10.0, timeout_seconds))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CortexClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            # aiohttp silently resends a GET/PUT/DELETE once when the connection drops: a second
            # request Cortex counts against the quota that no permit paid for, and an ambiguous
            # write hidden from the sender. One permit, one request; the sender decides on resends.
            # (No public switch exists; aiohttp's own test client sets the same attribute.)
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        permit: Permit | None = None,
        content_type: str = "application/json",
    ) -> CortexResponse:
        """Send one request under the rate limit; ``endpoint`` labels metrics (no ids in it).

        ``body`` is sent as JSON, or as it is when it is ``bytes`` (of ``content_type``).

        Raises :class:`NotSent` without sending when the circuit breaker is open.
        """
        attempt = self.circuit.admit()
        if attempt is None:
            if permit is not None:
                permit.cancel()
            raise NotSent(f"Cortex circuit breaker is open (next probe in {self.circuit.open_for:.1f} s)")
        try:
            if permit is None:
                permit = await self.bucket.acquire()
        except BaseException:
            attempt.abandoned()
            raise
        headers = {}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        status_label = "error"
        try:
            session = self._get_session()
            async with session.request(
                method, self.base_url + path, params=params, data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                status_label = str(resp.status)
                parsed = _parse_body(raw, resp.content_type)
                retry_after = None
                if resp.status == 429:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), parsed)
                    self.bucket.pause(retry_after)
                if resp.status >= 500:
                    attempt.failed()
                else:
                    attempt.succeeded()  # 4xx and 429 too: Cortex is up and answering
                return CortexResponse(resp.status, parsed, retry_after)
        except aiohttp.ClientConnectorError as exc:
            status_label = "connect_error"
            attempt.failed()
            raise NotSent(f"cannot connect to Cortex: {exc.os_error or exc}") from exc
        except TimeoutError as exc:
            status_label = "timeout"
            attempt.failed()
            raise Ambiguous("no answer from Cortex within the request timeout") from exc
        except aiohttp.ClientError as exc:
            status_label = "connection_lost"
            attempt.failed()
            raise Ambiguous(f"connection to Cortex lost: {type(exc).__name__}: {exc}") from exc
        finally:
            attempt.abandoned()  # no-op once an outcome was reported (cancelled, or a bug)
            permit.done()
            metrics.CORTEX_REQUESTS.labels(endpoint, status_label).inc()
            metrics.CORTEX_REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    async def write(self, request: WriteRequest, *, permit: Permit | None = None) -> CortexResponse:
        """Send one write (see :meth:`request`)."""
        return await self.request(request.method, request.path, endpoint=request.endpoint, body=request.body,
                                  permit=permit)

    async def list_all(self, query: ListRequest, *, page_size: int = 1000) -> list[dict[str, Any]]:
        """Every item of a paginated list endpoint (``page`` from 0 until ``totalPages``)."""
        items: list[dict[str, Any]] = []
        page = 0
        while True:
            params = {**query.params, "page": str(page), "pageSize": str(page_size)}
            resp = await self.request("GET", query.path, endpoint=query.endpoint, params=params)
            if resp.status == 429:
                continue  # the bucket is paused for Retry-After; the next acquire waits it out
            if not resp.ok:
                raise ReadFailed(resp)
            batch = resp.body.get(query.key) or [] if isinstance(resp.body, dict) else []
            items.extend(batch)
            total_pages = resp.body.get("totalPages") if isinstance(resp.body, dict) else None
            page += 1
            if not batch or total_pages is None or page >= int(total_pages):
                return items

    async def verify_token(self) -> CortexResponse:
        """The official CLI's auth check: ``GET /api/v1/catalog?pageSize=1``."""
        return await self.request("GET", TOKEN_CHECK.path, endpoint=TOKEN_CHECK.endpoint, params=TOKEN_CHECK.params)

    async def find_entities_by_repository(self, repository: str) -> list[str]:
        """Tags of catalog entities linked to git repository ``org/repo``."""
        items = await self.list_all(list_entities_of_repository(repository))
        return [str(e["tag"]) for e in items if e.get("tag")]


def client_from_settings(
    cortex: CortexSettings, bucket: TokenBucket, *, timeout_seconds: float | None = None
) -> CortexClient:
    """The client the configuration describes, spending from ``bucket``.

    ``timeout_seconds`` overrides ``cortex.request_timeout_seconds`` (a one-off check waits less).
    """
    circuit = CircuitBreaker(cortex.circuit_failure_threshold, cortex.circuit_open_seconds,
                             cortex.circuit_max_open_seconds)
    return CortexClient(
        cortex.url,
        cortex.token_value,
        bucket,
        timeout_seconds=cortex.request_timeout_seconds if timeout_seconds is None else timeout_seconds,
        max_connections=cortex.max_concurrency + 2,
        circuit=circuit,
    )


class ReadFailed(Exception):
    """A read-back or lookup answered non-2xx."""

    def __init__(self, response: CortexResponse) -> None:
        super().__init__(f"Cortex answered {response.status}: {response.message()}")
        self.response = response


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", errors="replace")[:2000]
