"""An in-process fake Kubernetes apiserver for driving the real ``kubernetes_asyncio`` client.

No real apiserver can run on the build machines, so the Kubernetes source is tested against
this fake. It serves plain HTTP on 127.0.0.1 (random port) from the test's own event loop and
reproduces the API semantics a list/watch client depends on:

* discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``);
* one global, monotonically increasing ``resourceVersion`` shared by every resource, ``uid`` and
  ``creationTimestamp`` on create, ``metadata.generation`` bumped by spec changes of workloads,
  status subresources (a main-resource write cannot change ``status`` and vice versa),
  no-op writes that change nothing (no new resourceVersion, no watch event), finalizers;
* list with ``limit``/``continue`` paging over a consistent snapshot (an expired token gets the
  real 410 ``Expired`` Status), ``resourceVersionMatch=Exact`` for past states, label selectors (``=``, ``!=``, ``in``, ``notin``, exists) and
  field selectors (only the fields the real apiserver supports for each resource); list items
  carry no ``kind``/``apiVersion``, as on a real cluster;
* watch as a chunked stream of JSON lines: synthetic ADDED for ``resourceVersion`` ""/"0",
  history replay for ``resourceVersion=N``, an in-stream ``ERROR`` 410 ``Expired`` Status for N
  older than the compaction point, BOOKMARK frames only when ``allowWatchBookmarks=true``,
  ``timeoutSeconds``, ``sendInitialEvents``, and selector transitions (an object that stops
  matching a selector is sent as DELETED, one that starts matching as ADDED);
* optimistic concurrency (409 Conflict on a stale ``metadata.resourceVersion`` in PUT/PATCH),
  JSON merge patch, JSON patch (RFC 6902) and strategic merge patch (applied as a merge patch);
* ``core/v1`` and ``events.k8s.io/v1`` Events as two views of the same stored objects.

Test controls are plain (synchronous) methods that act like a controller writing to etcd:
:meth:`FakeApiServer.create`, :meth:`~FakeApiServer.update`, :meth:`~FakeApiServer.patch`,
:meth:`~FakeApiServer.delete`, :meth:`~FakeApiServer.load`, :meth:`~FakeApiServer.compact`,
:meth:`~FakeApiServer.drop_watches`, :meth:`~FakeApiServer.expire_watches` and
:meth:`~FakeApiServer.fail_next`; :attr:`~FakeApiServer.requests` counts requests by
``(verb, path)``.

Not reproduced: controllers (nothing creates ReplicaSets or Pods for a Deployment, nothing
garbage-collects dependents, namespace deletion removes only the Namespace object), admission
and validation, server-side apply, ``dryRun``, aggregated discovery, OpenAPI documents,
protobuf, and HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import random
import socket
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from tests.support.paths import FIXTURES

from ._patch import json_patch, merge_patch
from ._resources import (
    RESOURCES,
    ResourceType,
    api_group_doc,
    api_group_list_doc,
    api_resource_list_doc,
    api_versions_doc,
    find_resource,
    from_view,
    to_view,
)
from ._selectors import (
    FieldRequirement,
    LabelRequirement,
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

__all__ = [
    "FIXTURES_DIR",
    "ApiStatusError",
    "FakeApiServer",
    "RecordedRequest",
    "load_manifests",
]

JsonObject = dict[str, Any]
ObjectKey = tuple[str, str, str]  # (storage key, namespace or "", name)

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

#: Real Kubernetes objects and watch literals copied for tests (see its PROVENANCE.md).
FIXTURES_DIR = FIXTURES / "k8s"

# The apiserver's own wording for an expired list continue token (storage/errors.go).
_EXPIRED_CONTINUE_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token results "
    "in an inconsistent list - objects that were created, modified, or deleted between the time the "
    "first chunk was returned and now may show up in the list."
)
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MERGE_PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
_JSON_PATCH_TYPE = "application/json-patch+json"
_NAMESPACES = RESOURCES[0]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump(obj: Any) -> bytes:
    """Compact JSON plus newline, as the apiserver's encoder writes it (one line per document)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _parse_bool(value: str | None) -> bool:
    """Go's ``strconv.ParseBool`` truthy values (the client sends ``True``, kubectl ``true``/``1``)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def status_object(
    code: int,
    reason: str,
    message: str,
    details: JsonObject | None = None,
    metadata: JsonObject | None = None,
) -> JsonObject:
    """A ``metav1.Status`` failure object with the apiserver's field order."""
    status: JsonObject = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": metadata or {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


class ApiStatusError(Exception):
    """A request (or test control call) that the apiserver answers with a failure ``Status``."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JsonObject | None = None,
        metadata: JsonObject | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        #: The ``Status`` object sent as the response body.
        self.status = status_object(code, reason, message, details, metadata)


def _details(resource: ResourceType, name: str) -> JsonObject:
    details: JsonObject = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural
    return details


def _not_found(resource: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        404, "NotFound", f'{resource.qualified_name} "{name}" not found', _details(resource, name)
    )


def _conflict(resource: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource.qualified_name} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(resource, name),
    )


def _bad_request(message: str) -> ApiStatusError:
    return ApiStatusError(400, "BadRequest", message)


def _meta(obj: JsonObject) -> JsonObject:
    """``obj["metadata"]``, created if missing (a null or absent metadata is treated as empty)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _strip_for_compare(obj: JsonObject) -> JsonObject:
    clone = copy.deepcopy(obj)
    meta = _meta(clone)
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return clone


class _ManifestLoader(yaml.SafeLoader):
    """YAML loader that keeps timestamps as strings, as JSON from the apiserver has them."""


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _manifest_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        else:
            yield path


def load_manifests(*paths: str | Path) -> list[JsonObject]:
    """Parse Kubernetes objects from YAML/JSON files or directories (sorted by file name).

    Multi-document YAML is split, and ``List`` kinds (``v1/List`` or ``DeploymentList`` and
    the like) are flattened into their items; items of a typed list inherit its
    ``apiVersion`` and ``kind``, since the apiserver leaves those out of list items.
    """
    objects: list[JsonObject] = []
    for path in _manifest_files(paths):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_ManifestLoader):
            if not isinstance(doc, dict):
                continue
            kind = str(doc.get("kind", ""))
            if kind.endswith("List") and isinstance(doc.get("items"), list):
                for item in doc["items"]:
                    if kind != "List":
                        item.setdefault("apiVersion", doc.get("apiVersion"))
                        item.setdefault("kind", kind[: -len("List")])
                    objects.append(item)
            else:
                objects.append(doc)
    return objects


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, with the Kubernetes verb it was classified as."""

    method: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    path: str
    query: Mapping[str, str]


@dataclass(frozen=True)
class _Change:
    """One committed write: the unit of watch history."""

    rv: int
    key: ObjectKey
    old: JsonObject | None
    new: JsonObject | None  # None for a deletion


@dataclass
class _Fault:
    verb: str
    path: str | None
    status: JsonObject
    remaining: int
    retry_after: int | None


@dataclass(frozen=True)
class _Target:
    """A parsed resource URL."""

    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_prefix: bool


@dataclass
class _Watcher:
    """One open watch stream: its filter and the frames waiting to be written."""

    resource: ResourceType
    namespace: str | None
    labels: list[LabelRequirement]
    fields: list[FieldRequirement]
    path: str
    frames: deque[tuple[int, bytes]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The resourceVersion the client has been brought up to (quoted in a 410 message).
    position: int = 0
    # Why the stream must end: "drop" (clean end of stream), "abort" (connection reset),
    # "expire" (410 ERROR frame, then end), "stop" (server shutdown); None while open.
    closing: str | None = None

    def matches(self, view: JsonObject) -> bool:
        """Whether an object (in this watcher's API shape) passes its selectors."""
        return labels_match(self.labels, _meta(view).get("labels")) and fields_match(
            self.fields, lambda name: self.resource.field_value(view, name) or ""
        )

    def event_for(self, change: _Change) -> tuple[str, JsonObject] | None:
        """The watch event this watcher sees for ``change`` (cacher semantics), if any."""
        if self.namespace and change.key[1] != self.namespace:
            return None
        current = to_view(self.resource, change.new) if change.new is not None else None
        previous = to_view(self.resource, change.old) if change.old is not None else None
        current_passes = current is not None and self.matches(current)
        previous_passes = previous is not None and self.matches(previous)
        if current_passes and current is not None:
            return ("MODIFIED" if previous_passes else "ADDED", current)
        if previous_passes and previous is not None:
            # Deleted, or no longer selected: the last state it was seen in, at the change's RV.
            _meta(previous)["resourceVersion"] = str(change.rv)
            return ("DELETED", previous)
        return None

    def queue(self, change: _Change) -> None:
        """Queue the frame for ``change``, if this watcher sees it (used for history replay)."""
        if (event := self.event_for(change)) is not None:
            self.frames.append((change.rv, _dump({"type": event[0], "object": event[1]})))

    def offer(self, change: _Change) -> None:
        """Queue a live change and wake the stream writer, unless the stream is ending."""
        if self.closing is None:
            self.queue(change)
            self.wake.set()

    def close(self, reason: str) -> None:
        """Ask the stream writer to end the stream (see ``closing``)."""
        if self.closing is None:
            self.closing = reason
            self.wake.set()


class FakeApiServer:
    """A fake Kubernetes apiserver on ``http://127.0.0.1:<random port>``.

    Use as ``async with FakeApiServer() as server:`` or call :meth:`start`/:meth:`stop`.
    All methods must be called from the event loop the server runs in.

    :param token: if set, every request must carry ``Authorization: Bearer <token>`` (else 401).
    :param bookmark_interval: seconds between BOOKMARK frames on watches that asked for them.
    :param history_limit: keep at most this many changes for watch replay; older resource
        versions then get 410 like a real watch cache window (``None``: keep all until
        :meth:`compact`).
    :param default_watch_timeout: seconds after which a watch without ``timeoutSeconds`` is
        closed cleanly (``None``: never; a real apiserver uses 30-60 minutes).
    :param initial_resource_version: the counter value before the first write.
    :param namespaces: namespaces that exist at start, as on a fresh cluster.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        bookmark_interval: float = 1.0,
        history_limit: int | None = None,
        default_watch_timeout: float | None = None,
        initial_resource_version: int = 1000,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self._token = token
        self._history_limit = history_limit
        self._rv = initial_resource_version
        self._compacted_rv = initial_resource_version
        self._store: dict[ObjectKey, JsonObject] = {}
        self._history: deque[_Change] = deque()
        self._watchers: list[_Watcher] = []
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        #: Requests received, counted by ``(verb, path)`` (path without the query string).
        self.requests: Counter[tuple[str, str]] = Counter()
        #: Every request received, in order.
        self.request_log: list[RecordedRequest] = []
        for namespace in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start serving on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a watch handler must end when its client goes away.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self._port = sock.getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Close every watch stream and stop serving."""
        for watcher in list(self._watchers):
            watcher.close("stop")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._port is None:
            raise RuntimeError("FakeApiServer is not started")
        return f"http://127.0.0.1:{self._port}"

    # ------------------------------------------------------------------ client helpers

    def client_configuration(self) -> k8s_client.Configuration:
        """A ``kubernetes_asyncio`` Configuration pointing at this server (with the token, if any)."""
        configuration = k8s_client.Configuration(host=self.url)
        if self._token is not None:
            configuration.api_key = {"BearerToken": self._token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def api_client(self) -> k8s_client.ApiClient:
        """A new ``ApiClient`` for this server; the caller closes it (``async with``)."""
        return k8s_client.ApiClient(self.client_configuration())

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (for ``config.load_kube_config``) and return its path."""
        user: JsonObject = {"token": self._token} if self._token is not None else {}
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
        return target

    # ------------------------------------------------------------------ introspection

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        return str(self._rv)

    @property
    def compacted_resource_version(self) -> str:
        """Watches from a resourceVersion older than this get 410 Expired."""
        return str(self._compacted_rv)

    @property
    def open_watches(self) -> int:
        """Number of watch streams currently open."""
        return len(self._watchers)

    def watch_paths(self) -> list[str]:
        """Request paths of the open watch streams."""
        return [watcher.path for watcher in self._watchers]

    def request_count(self, verb: str | None = None, path: str | None = None) -> int:
        """Number of requests with this verb and/or path (``None`` matches any)."""
        return sum(
            count
            for (seen_verb, seen_path), count in self.requests.items()
            if verb in (None, seen_verb) and path in (None, seen_path)
        )

    async def wait_for_watches(
        self, count: int = 1, *, path: str | None = None, timeout: float = 5.0
    ) -> None:
        """Wait until at least ``count`` watches (on ``path``, if given) are open."""
        async with asyncio.timeout(timeout):
            while sum(1 for w in self._watchers if path in (None, w.path)) < count:
                await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ test controls

    def fail_next(
        self,
        verb: str,
        path: str | None = None,
        *,
        code: int = 500,
        reason: str = "InternalError",
        message: str = "injected failure",
        times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``times`` requests with this verb (and path) with a failure Status.

        Use e.g. ``code=429, reason="TooManyRequests", retry_after=1`` for throttling.
        """
        details: JsonObject | None = {"retryAfterSeconds": retry_after} if retry_after is not None else None
        self._faults.append(
            _Fault(verb, path, status_object(code, reason, message, details), times, retry_after)
        )

    def create(self, obj: Mapping[str, Any]) -> JsonObject:
        """Store a new object, as a controller writing straight to etcd would.

        Unlike an HTTP create it keeps a given ``uid``, ``creationTimestamp``, ``generation``
        and ``status`` (so real captured objects keep their identity and ownerReferences
        still point at them); it always assigns a new resourceVersion. A missing namespace
        defaults to ``default`` and is created if it does not exist.

        :returns: the stored object as its API returns it.
        :raises ApiStatusError: 409 AlreadyExists.
        """
        resource, stored = self._stored_form(obj)
        meta = _meta(stored)
        name = self._assign_name(resource, meta)
        namespace = ""
        if resource.namespaced:
            namespace = meta.get("namespace") or "default"
            meta["namespace"] = namespace
            if (_NAMESPACES.storage_key, "", namespace) not in self._store:
                self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        else:
            meta.pop("namespace", None)
        key = (resource.storage_key, namespace, name)
        if key in self._store:
            raise ApiStatusError(
                409,
                "AlreadyExists",
                f'{resource.qualified_name} "{name}" already exists',
                _details(resource, name),
            )
        meta.pop("resourceVersion", None)
        if not meta.get("uid"):
            meta["uid"] = str(uuid.uuid4())
        if not meta.get("creationTimestamp"):
            meta["creationTimestamp"] = _now()
        if resource.tracks_generation and not meta.get("generation"):
            meta["generation"] = 1
        if resource is _NAMESPACES:
            self._namespace_defaults(stored)
        self._commit(key, stored)
        return to_view(resource, stored)

    def update(self, obj: Mapping[str, Any]) -> JsonObject:
        """Replace an existing object, spec and status alike (no resourceVersion check).

        ``metadata.generation`` goes up by one when a workload's spec changes, unless ``obj``
        sets a different generation explicitly. Writing an identical object is a no-op.

        :raises ApiStatusError: 404 NotFound.
        """
        resource, stored = self._stored_form(obj)
        key = self._key(resource, _meta(stored).get("namespace"), str(_meta(stored).get("name", "")))
        old = self._store.get(key)
        if old is None:
            raise _not_found(resource, key[2])
        return to_view(resource, self._write(resource, key, self._prepare_update(resource, old, stored)))

    def apply(self, obj: Mapping[str, Any]) -> JsonObject:
        """:meth:`update` the object if it exists, else :meth:`create` it."""
        resource, stored = self._stored_form(obj)
        meta = _meta(stored)
        if meta.get("name") and self._key(resource, meta.get("namespace"), meta["name"]) in self._store:
            return self.update(obj)
        return self.create(obj)

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Any],
        *,
        namespace: str | None = None,
    ) -> JsonObject:
        """Apply a JSON merge patch (a mapping) or a JSON patch (a list of operations), like :meth:`update`."""
        resource = self._resource(api_version, kind)
        key = self._key(resource, namespace, name)
        old = self._store.get(key)
        if old is None:
            raise _not_found(resource, name)
        view = to_view(resource, old)
        patched = merge_patch(view, patch) if isinstance(patch, Mapping) else json_patch(view, patch)
        new = from_view(resource, patched)
        return to_view(resource, self._write(resource, key, self._prepare_update(resource, old, new)))

    def delete(self, api_version: str, kind: str, name: str, *, namespace: str | None = None) -> JsonObject:
        """Remove an object at once (finalizers are not honoured here, unlike HTTP DELETE).

        :returns: the object's last state, at the deletion's resourceVersion.
        :raises ApiStatusError: 404 NotFound.
        """
        resource = self._resource(api_version, kind)
        key = self._key(resource, namespace, name)
        old = self._store.get(key)
        if old is None:
            raise _not_found(resource, name)
        self._commit(key, None)
        view = to_view(resource, old)
        _meta(view)["resourceVersion"] = str(self._rv)
        return view

    def get(
        self, api_version: str, kind: str, name: str, *, namespace: str | None = None
    ) -> JsonObject | None:
        """The object as ``api_version`` returns it, or ``None``."""
        resource = self._resource(api_version, kind)
        stored = self._store.get(self._key(resource, namespace, name))
        return None if stored is None else to_view(resource, stored)

    def objects(self, api_version: str, kind: str, *, namespace: str | None = None) -> list[JsonObject]:
        """All objects of a kind (in one namespace, or all), ordered by namespace and name."""
        resource = self._resource(api_version, kind)
        return [
            to_view(resource, self._store[key])
            for key in sorted(self._store)
            if key[0] == resource.storage_key and namespace in (None, key[1])
        ]

    def load(self, *paths: str | Path) -> list[JsonObject]:
        """:meth:`apply` every object of the given manifest files/directories (see :func:`load_manifests`)."""
        return [self.apply(obj) for obj in load_manifests(*paths)]

    def compact(self) -> str:
        """Forget all history: watching from any resourceVersion older than now gets 410 Expired.

        List continue tokens and ``resourceVersionMatch=Exact`` lists at older resource
        versions expire too. Returns the compaction point.
        """
        self._history.clear()
        self._compacted_rv = self._rv
        return str(self._compacted_rv)

    def drop_watches(self, *, abort: bool = False) -> int:
        """End every open watch stream; frames not yet written are lost.

        By default the chunked response is terminated properly (a load balancer or an
        apiserver restart ending the stream), which clients treat as "reconnect from the
        last resourceVersion". With ``abort=True`` the TCP connection is reset mid-stream
        instead. Returns the number of streams closed.
        """
        return self._close_watches("abort" if abort else "drop")

    def expire_watches(self, *, compact: bool = True) -> int:
        """Send an ``ERROR`` 410 Expired frame to every open watch, then end the stream.

        With ``compact=True`` (default) history is compacted first, as when a real watcher
        falls out of the watch-cache window, so resuming from the last resourceVersion also
        gets 410 and the client has to re-list. Returns the number of streams expired.
        """
        if compact:
            # A watcher only falls out of the window once the cluster has moved on; model that
            # as a write to some resource nobody here watches, so that even a client that has
            # seen every event here is behind the compaction point and must re-list.
            self._rv += 1
            self.compact()
        return self._close_watches("expire")

    # ------------------------------------------------------------------ storage internals

    def _close_watches(self, reason: str) -> int:
        watchers = [watcher for watcher in self._watchers if watcher.closing is None]
        for watcher in watchers:
            watcher.close(reason)
        return len(watchers)

    def _resource(self, api_version: str, kind: str) -> ResourceType:
        resource = find_resource(api_version, kind)
        if resource is None:
            raise ValueError(f"resource {kind!r} in {api_version!r} is not served by the fake apiserver")
        return resource

    def _stored_form(self, obj: Mapping[str, Any]) -> tuple[ResourceType, JsonObject]:
        resource = self._resource(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        return resource, from_view(resource, dict(obj))

    def _key(self, resource: ResourceType, namespace: str | None, name: str) -> ObjectKey:
        return (resource.storage_key, (namespace or "default") if resource.namespaced else "", name)

    def _assign_name(self, resource: ResourceType, meta: JsonObject) -> str:
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiStatusError(
                    422,
                    "Invalid",
                    f'{resource.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
                    {"kind": resource.kind},
                )
            meta["name"] = prefix + "".join(random.choices(_NAME_SUFFIX_ALPHABET, k=5))
        return str(meta["name"])

    @staticmethod
    def _namespace_defaults(namespace: JsonObject) -> None:
        meta = _meta(namespace)
        labels = meta.get("labels") or {}
        labels.setdefault("kubernetes.io/metadata.name", meta["name"])
        meta["labels"] = labels
        namespace.setdefault("spec", {"finalizers": ["kubernetes"]})
        namespace.setdefault("status", {"phase": "Active"})

    def _commit(self, key: ObjectKey, new: JsonObject | None) -> None:
        """The single write path: bump the RV, store, record history, notify watchers."""
        self._rv += 1
        old = self._store.get(key)
        if new is None:
            del self._store[key]
        else:
            _meta(new)["resourceVersion"] = str(self._rv)
            self._store[key] = new
        change = _Change(self._rv, key, old, new)
        self._history.append(change)
        if self._history_limit is not None:
            while len(self._history) > self._history_limit:
                self._compacted_rv = self._history.popleft().rv
        for watcher in self._watchers:
            if watcher.resource.storage_key == key[0]:
                watcher.offer(change)

    def _prepare_update(
        self,
        resource: ResourceType,
        old: JsonObject,
        new: JsonObject,
        *,
        subresource: str | None = None,
        from_client: bool = False,
    ) -> JsonObject:
        """Apply the apiserver's update strategy to ``new`` (server-owned fields, generation, status)."""
        old_meta, new_meta = _meta(old), _meta(new)
        for name in (
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if name in old_meta:
                new_meta[name] = old_meta[name]
            else:
                new_meta.pop(name, None)
        new_meta.pop("resourceVersion", None)
        if from_client and resource.status_subresource:
            if subresource == "status":
                # Status writes keep spec and most metadata (ResetObjectMetaForStatus).
                for name in ("labels", "annotations", "finalizers", "ownerReferences"):
                    if name in old_meta:
                        new_meta[name] = copy.deepcopy(old_meta[name])
                    else:
                        new_meta.pop(name, None)
                self._copy_field(old, new, "spec")
            else:
                self._copy_field(old, new, "status")
        old_generation = old_meta.get("generation")
        if resource.tracks_generation:
            base = int(old_generation or 1)
            changed = old.get("spec") != new.get("spec") or (
                resource.generation_on_annotations
                and old_meta.get("annotations") != new_meta.get("annotations")
            )
            explicit = None if from_client else new_meta.get("generation")
            new_meta["generation"] = explicit if explicit not in (None, base) else base + int(changed)
        elif old_generation is not None:
            new_meta["generation"] = old_generation
        else:
            new_meta.pop("generation", None)
        return new

    @staticmethod
    def _copy_field(source: JsonObject, target: JsonObject, name: str) -> None:
        if name in source:
            target[name] = copy.deepcopy(source[name])
        else:
            target.pop(name, None)

    def _write(self, resource: ResourceType, key: ObjectKey, new: JsonObject) -> JsonObject:
        """Commit an update unless it changes nothing; finish deletion once finalizers are gone."""
        old = self._store[key]
        if _strip_for_compare(old) == _strip_for_compare(new):
            return old
        self._commit(key, new)
        meta = _meta(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(key, None)
        return new

    # ------------------------------------------------------------------ HTTP

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        try:
            target = self._parse_path(path)
            routing_error: ApiStatusError | None = None
        except ApiStatusError as exc:
            target, routing_error = None, exc
        verb = self._verb(request, target)
        self.requests[(verb, path)] += 1
        self.request_log.append(RecordedRequest(request.method, verb, path, dict(request.query)))
        if self._token is not None and request.headers.get("Authorization") != f"Bearer {self._token}":
            return self._status_response(status_object(401, "Unauthorized", "Unauthorized"))
        for fault in self._faults:
            if fault.remaining > 0 and fault.verb == verb and fault.path in (None, path):
                fault.remaining -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                return self._status_response(fault.status, headers)
        try:
            if routing_error is not None:
                raise routing_error
            if target is None:
                return self._serve_non_resource(request, path)
            return await self._serve_resource(request, verb, target)
        except ApiStatusError as exc:
            return self._status_response(exc.status)

    @staticmethod
    def _status_response(status: JsonObject, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(
            body=_dump(status), status=int(status["code"]), content_type="application/json", headers=headers
        )

    @staticmethod
    def _json_response(obj: JsonObject, status: int = 200) -> web.Response:
        return web.Response(body=_dump(obj), status=status, content_type="application/json")

    def _parse_path(self, path: str) -> _Target | None:
        """Resolve a resource URL; ``None`` for non-resource paths (discovery, health)."""
        segments = [segment for segment in path.split("/") if segment]
        if segments[:1] == ["api"] and len(segments) > 2:
            group_version, rest = segments[1], segments[2:]
        elif segments[:1] == ["apis"] and len(segments) > 3:
            group_version, rest = f"{segments[1]}/{segments[2]}", segments[3:]
        else:
            return None
        not_found = ApiStatusError(404, "NotFound", "the server could not find the requested resource", {})
        watch_prefix = rest[0] == "watch"
        if watch_prefix:
            rest = rest[1:]
        served = {r.plural: r for r in RESOURCES if r.group_version == group_version}
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in served and served[rest[2]].namespaced:
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in served or len(rest) > 3:
            raise not_found
        resource = served[rest[0]]
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if resource.namespaced and namespace is None and name is not None:
            raise not_found
        if subresource is not None and not (subresource == "status" and resource.status_subresource):
            raise not_found
        return _Target(resource, namespace, name, subresource, watch_prefix)

    @staticmethod
    def _verb(request: web.Request, target: _Target | None) -> str:
        method = request.method
        if target is None:
            return method.lower()
        watching = target.watch_prefix or _parse_bool(request.query.get("watch"))
        if method == "GET":
            if watching:
                return "watch"
            return "get" if target.name is not None else "list"
        if target.name is None:
            return {"POST": "create", "DELETE": "deletecollection"}.get(method, method.lower())
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())

    def _serve_non_resource(self, request: web.Request, path: str) -> web.Response:
        if request.method != "GET":
            raise ApiStatusError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
            )
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        document: JsonObject | None = None
        if path == "/version":
            document = dict(KUBERNETES_VERSION)
        elif path == "/api":
            document = api_versions_doc(f"127.0.0.1:{self._port}")
        elif path == "/apis":
            document = api_group_list_doc()
        elif path.startswith("/api/"):
            document = api_resource_list_doc(path[len("/api/") :])
        elif path.startswith("/apis/"):
            parts = path[len("/apis/") :].split("/")
            document = api_group_doc(parts[0]) if len(parts) == 1 else api_resource_list_doc("/".join(parts))
        if document is None:
            raise ApiStatusError(404, "NotFound", "the server could not find the requested resource", {})
        return self._json_response(document)

    async def _serve_resource(self, request: web.Request, verb: str, target: _Target) -> web.StreamResponse:
        if "dryRun" in request.query:
            raise _bad_request("dryRun is not supported by the fake apiserver")
        resource, name = target.resource, target.name
        if verb == "watch":
            return await self._serve_watch(request, target)
        if verb == "list":
            return self._json_response(self._list(resource, target.namespace, request.query))
        if name is None:
            if verb == "create" and (target.namespace is not None or not resource.namespaced):
                body = await self._read_body(request)
                return self._json_response(self._http_create(resource, target.namespace, body), 201)
            if verb == "deletecollection":
                return self._json_response(
                    self._http_delete_collection(resource, target.namespace, request.query)
                )
        else:
            key = self._key(resource, target.namespace, name)
            if verb == "get":
                stored = self._store.get(key)
                if stored is None:
                    raise _not_found(resource, name)
                return self._json_response(to_view(resource, stored))
            if verb == "update":
                body = await self._read_body(request)
                code, obj = self._http_update(resource, key, body, target.subresource)
                return self._json_response(obj, code)
            if verb == "patch":
                body = await self._read_body(request)
                return self._json_response(self._http_patch(resource, key, body, request, target.subresource))
            if verb == "delete" and target.subresource is None:
                body = await self._read_body(request)
                return self._json_response(self._http_delete(resource, key, body))
        raise ApiStatusError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
        )

    @staticmethod
    async def _read_body(request: web.Request) -> Any:
        text = await request.text()
        if not text.strip() or text.strip() == "null":
            return None
        try:
            if "yaml" in request.content_type:
                return yaml.load(text, Loader=_ManifestLoader)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise _bad_request(f"the body of the request could not be decoded: {exc}") from exc

    @staticmethod
    def _check_body(resource: ResourceType, body: Any) -> JsonObject:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != resource.group_version:
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.group_version})"
            )
        if kind and kind != resource.kind:
            raise _bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )
        return body

    def _http_create(self, resource: ResourceType, namespace: str | None, body: Any) -> JsonObject:
        stored = from_view(resource, self._check_body(resource, body))
        meta = _meta(stored)
        if resource.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
            if (_NAMESPACES.storage_key, "", namespace) not in self._store:
                raise _not_found(_NAMESPACES, str(namespace))
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiStatusError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        name = self._assign_name(resource, meta)
        key = self._key(resource, namespace, name)
        if key in self._store:
            raise ApiStatusError(
                409,
                "AlreadyExists",
                f'{resource.qualified_name} "{name}" already exists',
                _details(resource, name),
            )
        # Server-owned metadata (rest.FillObjectMetaSystemFields and the create strategies).
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        for owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(owned, None)
        if resource.tracks_generation:
            meta["generation"] = 1
            stored["status"] = {}
        elif resource.kind == "Pod":
            stored["status"] = {"phase": "Pending"}
        if resource is _NAMESPACES:
            stored.pop("status", None)
            self._namespace_defaults(stored)
        self._commit(key, stored)
        return to_view(resource, stored)

    def _http_update(
        self, resource: ResourceType, key: ObjectKey, body: Any, subresource: str | None
    ) -> tuple[int, JsonObject]:
        view = self._check_body(resource, body)
        meta = _meta(view)
        name = key[2]
        if meta.get("name") and meta["name"] != name:
            raise _bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if resource.namespaced and meta.get("namespace") and meta["namespace"] != key[1]:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old = self._store.get(key)
        if old is None:
            if resource.allow_create_on_update and subresource is None:
                meta.pop("resourceVersion", None)
                meta["name"] = name
                return 201, self._http_create(resource, key[1] or None, view)
            raise _not_found(resource, name)
        if meta.get("resourceVersion") and meta["resourceVersion"] != _meta(old).get("resourceVersion"):
            raise _conflict(resource, name)
        new = self._prepare_update(
            resource, old, from_view(resource, view), subresource=subresource, from_client=True
        )
        return 200, to_view(resource, self._write(resource, key, new))

    def _http_patch(
        self, resource: ResourceType, key: ObjectKey, body: Any, request: web.Request, subresource: str | None
    ) -> JsonObject:
        old = self._store.get(key)
        if old is None:
            raise _not_found(resource, key[2])
        content_type = request.content_type
        view = to_view(resource, old)
        try:
            if content_type in _MERGE_PATCH_TYPES and isinstance(body, dict):
                patched = merge_patch(view, body)
            elif content_type == _JSON_PATCH_TYPE and isinstance(body, list):
                patched = json_patch(view, body)
            elif content_type in (*_MERGE_PATCH_TYPES, _JSON_PATCH_TYPE):
                raise _bad_request(f"the body of a {content_type} patch has the wrong JSON type")
            else:
                raise ApiStatusError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: "
                    f"{_JSON_PATCH_TYPE}, {', '.join(_MERGE_PATCH_TYPES)}",
                )
        except ValueError as exc:
            raise ApiStatusError(422, "Invalid", str(exc)) from exc
        patched_rv = _meta(patched).get("resourceVersion")
        if patched_rv and patched_rv != _meta(old).get("resourceVersion"):
            raise _conflict(resource, key[2])
        new = self._prepare_update(
            resource, old, from_view(resource, patched), subresource=subresource, from_client=True
        )
        return to_view(resource, self._write(resource, key, new))

    def _http_delete(self, resource: ResourceType, key: ObjectKey, body: Any) -> JsonObject:
        old = self._store.get(key)
        if old is None:
            raise _not_found(resource, key[2])
        old_meta = _meta(old)
        preconditions = body.get("preconditions") if isinstance(body, dict) else None
        if isinstance(preconditions, dict):
            for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                wanted = preconditions.get(field_name)
                if wanted and wanted != old_meta.get(field_name):
                    raise ApiStatusError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {resource.qualified_name} "{key[2]}": Precondition '
                        f"failed: {label} in precondition: {wanted}, {label} in object meta: {old_meta.get(field_name)}",
                        _details(resource, key[2]),
                    )
        if old_meta.get("finalizers"):
            # Finalizers keep the object, marked for deletion, until a writer removes them.
            if old_meta.get("deletionTimestamp"):
                return to_view(resource, old)
            terminating = copy.deepcopy(old)
            _meta(terminating)["deletionTimestamp"] = _now()
            _meta(terminating)["deletionGracePeriodSeconds"] = 0
            self._commit(key, terminating)
            return to_view(resource, terminating)
        self._commit(key, None)
        if resource.return_deleted_object:
            view = to_view(resource, old)
            _meta(view)["resourceVersion"] = str(self._rv)
            return view
        details = _details(resource, key[2])
        details["uid"] = old_meta.get("uid")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _http_delete_collection(
        self, resource: ResourceType, namespace: str | None, query: Mapping[str, str]
    ) -> JsonObject:
        labels, fields = self._selectors(resource, query)
        deleted: list[JsonObject] = []
        for key in sorted(self._store):
            if key[0] != resource.storage_key or namespace not in (None, key[1]):
                continue
            view = to_view(resource, self._store[key])
            if self._selected(resource, view, labels, fields):
                self._http_delete(resource, key, None)
                deleted.append(view)
        return self._list_document(resource, deleted, {"resourceVersion": str(self._rv)})

    # ------------------------------------------------------------------ list

    @staticmethod
    def _selectors(
        resource: ResourceType, query: Mapping[str, str]
    ) -> tuple[list[LabelRequirement], list[FieldRequirement]]:
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"))
        except SelectorError as exc:
            raise _bad_request(str(exc)) from exc
        for requirement in fields:
            if requirement.field not in resource.selectable:
                raise _bad_request(f"field label not supported: {requirement.field}")
        return labels, fields

    @staticmethod
    def _selected(
        resource: ResourceType,
        view: JsonObject,
        labels: list[LabelRequirement],
        fields: list[FieldRequirement],
    ) -> bool:
        return labels_match(labels, _meta(view).get("labels")) and fields_match(
            fields, lambda name: resource.field_value(view, name) or ""
        )

    @staticmethod
    def _list_document(resource: ResourceType, items: list[JsonObject], metadata: JsonObject) -> JsonObject:
        for item in items:
            # Built-in list items carry no TypeMeta on a real apiserver.
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.group_version,
            "metadata": metadata,
            "items": items,
        }

    @staticmethod
    def _encode_continue(rv: int, after: tuple[str, str]) -> str:
        """An opaque token shaped like the apiserver's: the list's RV and the last key returned."""
        start = f"{after[0]}/{after[1]}\x00"
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            namespace, _, name = str(raw["start"]).rstrip("\x00").partition("/")
            return int(raw["rv"]), (namespace, name)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _bad_request(f"continue key is not valid: {exc}") from exc

    def _state_at(self, rv: int) -> Mapping[ObjectKey, JsonObject]:
        """The stored objects as of ``rv`` (not older than the compaction point), rebuilt from history.

        Stored objects are replaced on every write, never changed in place, so the history's
        ``old`` objects are exact past states.
        """
        if rv >= self._rv:
            return self._store
        state = dict(self._store)
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.old is None:
                state.pop(change.key, None)
            else:
                state[change.key] = change.old
        return state

    def _list(self, resource: ResourceType, namespace: str | None, query: Mapping[str, str]) -> JsonObject:
        labels, fields = self._selectors(resource, query)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as exc:
            raise _bad_request(f"invalid limit: {exc}") from exc
        list_rv = self._rv
        rv_param = query.get("resourceVersion", "")
        if rv_param not in ("", "0"):
            requested = self._parse_rv(rv_param)
            self._check_rv_not_too_large(requested)
            # Without "Exact" a resourceVersion means "not older than", which now satisfies.
            if query.get("resourceVersionMatch") == "Exact":
                if requested < self._compacted_rv:
                    message = f"too old resource version: {requested} ({self._compacted_rv})"
                    raise ApiStatusError(410, "Expired", message)
                list_rv = requested
        after: tuple[str, str] = ("", "")
        if token := query.get("continue"):
            token_rv, after = self._decode_continue(token)
            if 0 <= token_rv < self._compacted_rv:
                # Like the apiserver, offer a token that continues from now (inconsistently).
                retry = {"continue": self._encode_continue(-1, after)}
                raise ApiStatusError(410, "Expired", _EXPIRED_CONTINUE_MESSAGE, metadata=retry)
            if token_rv >= 0:
                # Later pages come from the same state as the first one.
                list_rv = token_rv
        state = self._state_at(list_rv)
        items: list[JsonObject] = []
        more = 0
        for key in sorted(k for k in state if k[0] == resource.storage_key and namespace in (None, k[1])):
            if token and (key[1], key[2]) <= after:
                continue
            view = to_view(resource, state[key])
            if not self._selected(resource, view, labels, fields):
                continue
            if limit and len(items) >= limit:
                more += 1
            else:
                items.append(view)
        metadata: JsonObject = {"resourceVersion": str(list_rv)}
        if more:
            last = _meta(items[-1])
            metadata["continue"] = self._encode_continue(list_rv, (last.get("namespace", ""), last["name"]))
            if not labels and not fields:
                metadata["remainingItemCount"] = more
        return self._list_document(resource, items, metadata)

    @staticmethod
    def _parse_rv(value: str) -> int:
        try:
            rv = int(value)
        except ValueError:
            rv = -1
        if rv < 0:
            raise _bad_request(f'invalid resource version "{value}"')
        return rv

    def _check_rv_not_too_large(self, rv: int) -> None:
        if rv > self._rv:
            raise ApiStatusError(
                504,
                "Timeout",
                f"Too large resource version: {rv}, current: {self._rv}",
                {
                    "causes": [
                        {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                    ],
                    "retryAfterSeconds": 1,
                },
            )

    # ------------------------------------------------------------------ watch

    def _bookmark(self, resource: ResourceType, rv: int, *, initial_events_end: bool = False) -> bytes:
        metadata: JsonObject = {"resourceVersion": str(rv)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": resource.kind, "apiVersion": resource.group_version, "metadata": metadata}
        return _dump({"type": "BOOKMARK", "object": obj})

    def _expired_frame(self, requested_rv: int) -> bytes:
        message = f"too old resource version: {requested_rv} ({self._compacted_rv})"
        return _dump({"type": "ERROR", "object": status_object(410, "Expired", message)})

    async def _serve_watch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        query = request.query
        resource = target.resource
        labels, fields = self._selectors(resource, query)
        if target.name is not None:
            fields.append(FieldRequirement("metadata.name", "=", target.name))
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
        send_initial = query.get("sendInitialEvents")
        if send_initial is not None:
            if query.get("resourceVersionMatch") != "NotOlderThan":
                raise ApiStatusError(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                    "resourceVersionMatch to NotOlderThan",
                )
            if _parse_bool(send_initial) and not bookmarks:
                raise ApiStatusError(
                    422,
                    "Invalid",
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
                )
        try:
            timeout = (
                float(query["timeoutSeconds"]) if "timeoutSeconds" in query else self.default_watch_timeout
            )
        except ValueError as exc:
            raise _bad_request(f"invalid timeoutSeconds: {exc}") from exc
        rv_param = query.get("resourceVersion", "")
        requested_rv = None if rv_param in ("", "0") else self._parse_rv(rv_param)
        if requested_rv is not None:
            self._check_rv_not_too_large(requested_rv)
        synthetic = requested_rv is None if send_initial is None else _parse_bool(send_initial)

        # Everything from here to registering the watcher runs without awaiting, so no
        # write can fall between the initial frames and the live ones.
        watcher = _Watcher(
            resource, target.namespace, labels, fields, request.path, position=requested_rv or 0
        )
        expired = requested_rv is not None and requested_rv < self._compacted_rv and not synthetic
        if synthetic:
            for key in sorted(self._store):
                if key[0] == resource.storage_key and target.namespace in (None, key[1]):
                    view = to_view(resource, self._store[key])
                    if watcher.matches(view):
                        watcher.frames.append((self._rv, _dump({"type": "ADDED", "object": view})))
            if send_initial is not None:
                watcher.frames.append((self._rv, self._bookmark(resource, self._rv, initial_events_end=True)))
        elif requested_rv is not None and not expired:
            for change in self._history:
                if change.rv > requested_rv and change.key[0] == resource.storage_key:
                    watcher.queue(change)
        if expired:
            watcher.frames.clear()
            watcher.closing = "expire"
        self._watchers.append(watcher)

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await self._pump(request, response, watcher, timeout, bookmarks)
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
        return response

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        watcher: _Watcher,
        timeout: float | None,
        bookmarks: bool,
    ) -> None:
        """Write the watcher's frames until it is closed or times out, with bookmarks if asked."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval if bookmarks else None
        while True:
            while watcher.frames and watcher.closing is None:
                rv, frame = watcher.frames.popleft()
                await response.write(frame)
                watcher.position = max(watcher.position, rv)
            if watcher.closing == "expire":
                await response.write(self._expired_frame(watcher.position))
            if watcher.closing == "abort":
                if request.transport is not None:
                    request.transport.abort()
                return
            if watcher.closing is not None:
                break
            now = loop.time()
            if deadline is not None and now >= deadline:
                break
            if next_bookmark is not None and now >= next_bookmark:
                # All frames are written, so every change up to the current RV has been seen.
                await response.write(self._bookmark(watcher.resource, self._rv))
                watcher.position = self._rv
                next_bookmark = now + self.bookmark_interval
                continue
            waits = [t - now for t in (deadline, next_bookmark) if t is not None]
            watcher.wake.clear()
            if watcher.frames or watcher.closing is not None:
                continue
            try:
                async with asyncio.timeout(min(waits) if waits else None):
                    await watcher.wake.wait()
            except TimeoutError:
                pass
        await response.write_eof()
