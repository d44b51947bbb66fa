"""List, then watch, one Kubernetes collection with kubernetes_asyncio; resumable and diffed.

A :class:`ResourceStream` follows one collection (a resource in one namespace or in all):

* :meth:`ResourceStream.sync` lists it (paged, ``limit``/``continue``) and hands the handler only
  what differs from what the stream already knew (new, changed and vanished objects), then
  remembers the list's ``resourceVersion`` as its position;
* :meth:`ResourceStream.list_at` lists the collection as it was at an older ``resourceVersion``
  (``resourceVersionMatch=Exact``), which is how a new leader rebuilds what the previous one saw;
* :meth:`ResourceStream.watch_forever` watches from the position with ``allowWatchBookmarks``,
  and after a dropped stream (clean end, reset connection, timeout) resumes from the last
  ``resourceVersion`` it handled. A ``410 Expired`` means the position fell out of the
  apiserver's window: the stream re-lists and diffs instead of replaying everything.

The position only moves past an event once the handler returned for it, so "the stream is at
resourceVersion N" means every change up to N was handled (for the leader: made durable).
Objects are kept raw (dicts): typed models of kubernetes_asyncio cannot read core/v1 Events
seen through events.k8s.io/v1 (``eventTime: null``), and raw dicts are all the handlers need.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import structlog
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from bridge import metrics

log = structlog.get_logger("bridge.kubernetes")

JsonObject = dict[str, Any]
#: A generated ``list_*`` method of kubernetes_asyncio, bound to its namespace if namespaced.
ListFunction = Callable[..., Awaitable[Any]]
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


#: Page size of lists: bounds the apiserver's work and the memory of one answer.
PAGE_SIZE = 500
#: Connect timeout of every API call (seconds).
CONNECT_TIMEOUT = 10.0
#: A watch is given this much longer than its server-side timeout before the client gives up
#: on a silent connection (a real apiserver sends bookmarks about once a minute).
READ_SLACK = 60.0


class StreamHandler(Protocol):
    """What a stream reports to."""

    async def on_change(self, change: Change, *, baseline: bool) -> None:
        """One object appeared, changed or vanished. ``baseline``: remember, do not emit."""

    async def on_listed(self, stream: ResourceStream, present: set[str], *, baseline: bool) -> None:
        """A full list finished; ``present`` holds the uids it contained."""


@dataclass(frozen=True)
class Change:
    """One observed change of one object."""

    stream: str
    type: ChangeType
    obj: JsonObject


def meta(obj: JsonObject) -> JsonObject:
    """``obj["metadata"]`` (an empty dict when absent)."""
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def rv_number(value: Any) -> int | None:
    """A resourceVersion as an integer, or ``None`` when it is not one.

    resourceVersions are formally opaque; every apiserver backed by etcd uses the etcd revision,
    and only those are compared (watermarks at leader hand-over), never anything else.
    """
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


async def call_raw(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> JsonObject:
    """Call a generated API method and return the JSON answer as a dict.

    ``_preload_content=False`` skips the typed models (see the module docstring); then the client
    raises nothing by itself, so a non-2xx answer becomes an :class:`ApiException` here.
    """
    kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT, 60.0))
    response = await fn(*args, _preload_content=False, **kwargs)
    try:
        body = await response.read()
        status = int(response.status)
        if not 200 <= status <= 299:
            exc = ApiException(status=status, reason=str(response.reason))
            exc.body = body.decode("utf-8", errors="replace")
            raise exc
    finally:
        response.release()
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ApiException(status=0, reason="answer is not a JSON object")
    return data


@dataclass
class _Known:
    rv: str
    namespace: str
    name: str


class ResourceStream:
    """List/watch of one collection feeding one handler (see the module docstring)."""

    def __init__(
        self,
        *,
        source: str,
        resource: str,
        namespace: str | None,
        list_fn: ListFunction,
        handler: StreamHandler,
        timeout_seconds: int = 300,
        max_backoff_seconds: float = 30.0,
    ) -> None:
        self.source = source
        self.resource = resource
        self.namespace = namespace
        #: Stable name of this stream (also the key of its watermark at leader hand-over).
        self.key = f"{resource}@{namespace or '*'}"
        self._list_fn = list_fn
        self._handler = handler
        self._timeout_seconds = timeout_seconds
        self._max_backoff = max_backoff_seconds
        self._known: dict[str, _Known] = {}
        #: resourceVersion up to which every change was handled (None: must list first).
        self.position: str | None = None
        #: True while a list is being handed over (the handler may batch its writes until
        #: :meth:`StreamHandler.on_listed`).
        self.listing = False

    # -- lists ----------------------------------------------------------------------------------

    async def _list(self, **params: Any) -> tuple[list[JsonObject], str]:
        """All items of the collection (following ``continue``) and the list's resourceVersion."""
        items: list[JsonObject] = []
        token: str | None = None
        metrics.K8S_RELISTS.labels(self.source, self.resource).inc()
        while True:
            page_params = dict(params, limit=PAGE_SIZE)
            if token:
                page_params["_continue"] = token
            try:
                page = await call_raw(self._list_fn, **page_params)
            except ApiException as exc:
                if exc.status == 410 and token and "resource_version" not in params:
                    # The continue token expired between pages: start the list over.
                    items, token = [], None
                    continue
                raise
            items.extend(item for item in page.get("items") or [] if isinstance(item, dict))
            list_meta = page.get("metadata") or {}
            token = list_meta.get("continue") or None
            if not token:
                return items, str(list_meta.get("resourceVersion") or "")

    async def list_at(self, resource_version: str) -> bool:
        """Hand over the collection as it was at ``resource_version``, as baseline.

        Returns False (and changes nothing) when the collection cannot be listed at that version
        (compacted away, or unknown to this apiserver).
        """
        try:
            items, _ = await self._list(resource_version=resource_version, resource_version_match="Exact")
        except ApiException as exc:
            # 410: compacted away; 400: not a version this apiserver knows; 504: newer than what it
            # has (e.g. etcd restored from a backup). None of them will get better by retrying.
            if exc.status in (400, 410, 504):
                metrics.K8S_EXPIRED.labels(self.source, self.resource).inc()
                return False
            raise
        self._known.clear()
        await self._apply_list(items, resource_version, baseline=True)
        return True

    async def sync(self, *, baseline: bool) -> None:
        """List the collection now and hand over what differs from what this stream knew."""
        items, list_rv = await self._list()
        await self._apply_list(items, list_rv, baseline=baseline)

    async def _apply_list(self, items: list[JsonObject], list_rv: str, *, baseline: bool) -> None:
        self.listing = True
        try:
            await self._hand_over_list(items, list_rv, baseline=baseline)
        finally:
            self.listing = False
        self.position = list_rv
        metrics.K8S_OBJECTS.labels(self.source, self.resource).set(len(self._known))

    async def _hand_over_list(self, items: list[JsonObject], list_rv: str, *, baseline: bool) -> None:
        present: set[str] = set()
        for obj in items:
            m = meta(obj)
            uid = str(m.get("uid") or "")
            if not uid:
                continue
            present.add(uid)
            rv = str(m.get("resourceVersion") or "")
            seen = self._known.get(uid)
            if seen is not None and seen.rv == rv:
                continue
            self._known[uid] = _Known(rv, str(m.get("namespace") or ""), str(m.get("name") or ""))
            await self._handler.on_change(
                Change(self.key, "MODIFIED" if seen else "ADDED", obj), baseline=baseline
            )
        for uid in [uid for uid in self._known if uid not in present]:
            gone = self._known.pop(uid)
            stub = {"metadata": {"uid": uid, "namespace": gone.namespace, "name": gone.name,
                                 "resourceVersion": list_rv}}
            await self._handler.on_change(Change(self.key, "DELETED", stub), baseline=baseline)
        await self._handler.on_listed(self, present, baseline=baseline)

    # -- watch ----------------------------------------------------------------------------------

    async def watch_forever(self) -> None:
        """Watch from the position until cancelled, resuming and re-listing as needed."""
        backoff = 0.2
        failures = 0
        while True:
            started = time.monotonic()
            try:
                if self.position is None:
                    await self.sync(baseline=False)
                await self._watch_once()
                reason = "closed"
            except ApiException as exc:
                if exc.status == 410:
                    metrics.K8S_EXPIRED.labels(self.source, self.resource).inc()
                    log.info("k8s_watch_expired", source=self.source, stream=self.key, position=self.position)
                    self.position = None
                    continue
                metrics.K8S_API_ERRORS.labels(self.source, str(exc.status or 0)).inc()
                log.warning("k8s_watch_failed", source=self.source, stream=self.key, status=exc.status,
                            reason=exc.reason, retry_in=backoff)
                reason = "error"
                failures += 1
                if failures >= 3:
                    # The apiserver keeps refusing this position (e.g. "too large resource version"
                    # after an etcd restore): start over from a list, which is always safe.
                    self.position = None
                    failures = 0
            except aiohttp.ClientPayloadError:
                reason = "reset"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                metrics.K8S_API_ERRORS.labels(self.source, "0").inc()
                log.warning("k8s_watch_failed", source=self.source, stream=self.key, error=repr(exc),
                            retry_in=backoff)
                reason = "unreachable"
            metrics.K8S_WATCH_RESTARTS.labels(self.source, self.resource, reason).inc()
            if reason != "error":
                failures = 0
            if reason == "closed" and time.monotonic() - started > 1.0:
                backoff = 0.2
                continue
            # A stream that fails or closes at once must not turn into a request loop.
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._max_backoff)

    async def _watch_once(self) -> None:
        # Client-go's reflector also randomizes the server-side timeout so that many watchers
        # started together do not all reconnect in the same second.
        timeout = random.randint(max(1, self._timeout_seconds * 4 // 5), max(1, self._timeout_seconds))
        watch = Watch(return_type="object")
        try:
            # With timeout_seconds set, Watch neither reconnects nor retries a 410 by itself: every
            # end of stream comes back here, so the position is always ours.
            stream = watch.stream(
                self._list_fn,
                resource_version=self.position,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(CONNECT_TIMEOUT, timeout + READ_SLACK),
            )
            async for event in stream:
                await self._on_event(event)
        finally:
            await watch.close()

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        obj = event.get("raw_object")
        if not isinstance(obj, dict):
            return
        m = meta(obj)
        rv = str(m.get("resourceVersion") or "")
        if kind == "BOOKMARK":
            if rv:
                self.position = rv
            return
        change_type: ChangeType
        if kind == "ADDED":
            change_type = "ADDED"
        elif kind == "MODIFIED":
            change_type = "MODIFIED"
        elif kind == "DELETED":
            change_type = "DELETED"
        else:
            return
        uid = str(m.get("uid") or "")
        if uid:
            if change_type == "DELETED":
                self._known.pop(uid, None)
            else:
                self._known[uid] = _Known(rv, str(m.get("namespace") or ""), str(m.get("name") or ""))
            await self._handler.on_change(Change(self.key, change_type, obj), baseline=False)
        if rv:
            self.position = rv
        metrics.K8S_OBJECTS.labels(self.source, self.resource).set(len(self._known))
