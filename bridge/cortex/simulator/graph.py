"""Dependencies between entities and entities' OpenAPI docs, as the simulated tenant keeps them.

* ``PUT /api/v1/catalog/dependencies`` (*Create or update dependencies in bulk*): body
  ``{"values": {caller: [{tag, method?, path?, description?, metadata?}]}}``; an upsert keyed by
  (caller, callee, method, path). Every caller and callee must exist, else ``404`` and nothing is
  stored (one answer for the whole request, as the spec gives it). ``200`` echoes the values.
* ``DELETE /api/v1/catalog/dependencies``: the same body; removes those edges; ``204``.
* ``GET /api/v1/catalog/{caller}/dependencies``: ``{"dependencies": [...]}`` (the list the
  official CLI reads; the spec's single object is a generator artifact, docs/cortex-api.md).
* ``PUT /api/v1/catalog/{tag}/documentation/openapi``: body ``{"spec": "<JSON text>"}``, which
  must be the JSON text of an object (``400`` otherwise); replaces the entity's document.
  ``GET`` answers ``{"spec": ...}`` (``404`` when none), ``DELETE`` removes it (``204``).

An unknown entity in a path is ``404`` (inferred: the spec lists no 404 for the docs PUT, but
every other per-entity write of Cortex answers so).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bridge.cortex.simulator.bodies import Body, validate
from bridge.cortex.simulator.errors import SimError, bad_request

if TYPE_CHECKING:  # the store holds a CatalogGraph
    from bridge.cortex.simulator.store import SimEntity

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
Edge = tuple[str, str, str | None, str | None]


class DependencyItem(Body):
    tag: str = Field(min_length=1)
    method: Method | None = None
    path: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class BulkDependencyBody(Body):
    values: dict[str, list[DependencyItem]]


class SpecBody(Body):
    spec: str


class CatalogGraph:
    """The tenant's dependencies and OpenAPI docs (part of :class:`~bridge.cortex.simulator.store.SimStore`)."""

    def __init__(self) -> None:
        self.dependencies: dict[Edge, dict[str, Any]] = {}
        self.docs: dict[str, str] = {}

    def clear(self) -> None:
        self.dependencies.clear()
        self.docs.clear()

    def _edges(self, entity: Callable[[str], SimEntity], body: Any) -> list[tuple[Edge, DependencyItem]]:
        request = validate(BulkDependencyBody, body)
        edges: list[tuple[Edge, DependencyItem]] = []
        for caller, items in request.values.items():
            caller_tag = entity(caller).tag
            for item in items:
                edges.append(((caller_tag, entity(item.tag).tag, item.method, item.path), item))
        return edges

    def put_dependencies(self, entity: Callable[[str], SimEntity], body: Any) -> dict[str, Any]:
        """Upsert every edge of ``body``, or none when one names an unknown entity."""
        edges = self._edges(entity, body)
        values: dict[str, list[dict[str, Any]]] = {}
        for edge, item in edges:
            self.dependencies[edge] = item.model_dump(exclude_none=True)
            values.setdefault(edge[0], []).append(self.dependencies[edge])
        return {"values": values}

    def delete_dependencies(self, entity: Callable[[str], SimEntity], body: Any) -> None:
        for edge, _ in self._edges(entity, body):
            self.dependencies.pop(edge, None)

    def dependencies_of(self, caller: SimEntity, entity: Callable[[str], SimEntity]) -> list[dict[str, Any]]:
        out = []
        for (caller_tag, callee_tag, method, path), item in sorted(self.dependencies.items(), key=lambda e: str(e[0])):
            if caller_tag == caller.tag:
                callee = entity(callee_tag)
                out.append({"callerTag": caller.tag, "callerType": caller.type, "calleeTag": callee.tag,
                            "calleeType": callee.type, "method": method, "path": path,
                            "description": item.get("description"), "metadata": item.get("metadata")})
        return out

    def put_docs(self, entity: SimEntity, body: Any) -> dict[str, Any]:
        request = validate(SpecBody, body)
        try:
            document = json.loads(request.spec)
        except ValueError as exc:
            raise bad_request(f"spec: not JSON text ({exc})") from None
        if not isinstance(document, dict):
            raise bad_request("spec: must be the JSON text of an OpenAPI object")
        self.docs[entity.tag] = request.spec
        return {"spec": request.spec}

    def docs_of(self, entity: SimEntity) -> dict[str, Any]:
        spec = self.docs.get(entity.tag)
        if spec is None:
            raise SimError(404, "Not Found", f"no OpenAPI docs for {entity.tag!r}")
        return {"spec": spec}

    def snapshot(self) -> dict[str, Any]:
        """For ``/_sim/state``: dependencies by caller, and each entity's document."""
        by_caller: dict[str, list[dict[str, Any]]] = {}
        for (caller, callee, method, path), item in self.dependencies.items():
            by_caller.setdefault(caller, []).append({"callee": callee, "method": method, "path": path, **item})
        return {"dependencies": by_caller, "docs": {tag: json.loads(spec) for tag, spec in self.docs.items()}}
