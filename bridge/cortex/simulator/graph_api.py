"""The routes of :mod:`bridge.cortex.simulator.graph`: dependencies and OpenAPI docs."""

from __future__ import annotations

from aiohttp import web

from bridge.cortex.simulator.api import AUDIT_TAG, STORE, json_body

GRAPH_ROUTES = web.RouteTableDef()


@GRAPH_ROUTES.put("/api/v1/catalog/dependencies")
async def _put_dependencies(request: web.Request) -> web.Response:
    store = request.app[STORE]
    answer = store.graph.put_dependencies(store.entity, await json_body(request))
    request[AUDIT_TAG] = ",".join(sorted(answer["values"]))
    return web.json_response(answer)


@GRAPH_ROUTES.delete("/api/v1/catalog/dependencies")
async def _delete_dependencies(request: web.Request) -> web.Response:
    store = request.app[STORE]
    store.graph.delete_dependencies(store.entity, await json_body(request))
    return web.Response(status=204)


@GRAPH_ROUTES.get("/api/v1/catalog/{tag}/dependencies")
async def _list_dependencies(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = store.entity(request.match_info["tag"])
    return web.json_response({"dependencies": store.graph.dependencies_of(caller, store.entity)})


@GRAPH_ROUTES.put("/api/v1/catalog/{tag}/documentation/openapi")
async def _put_docs(request: web.Request) -> web.Response:
    store = request.app[STORE]
    entity = store.entity(request.match_info["tag"])
    return web.json_response(store.graph.put_docs(entity, await json_body(request)))


@GRAPH_ROUTES.get("/api/v1/catalog/{tag}/documentation/openapi")
async def _get_docs(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response(store.graph.docs_of(store.entity(request.match_info["tag"])))


@GRAPH_ROUTES.delete("/api/v1/catalog/{tag}/documentation/openapi")
async def _delete_docs(request: web.Request) -> web.Response:
    store = request.app[STORE]
    store.graph.docs.pop(store.entity(request.match_info["tag"]).tag, None)
    return web.Response(status=204)
