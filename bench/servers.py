"""Small HTTP processes the benchmarks measure against, each run as its own child process.

* ``floor``: a bare aiohttp handler that reads the request body and answers 202. Nothing an
  aiohttp ingest path does can be faster, so it is the baseline of the ingest benchmark.
* ``sink``: counts the JSON documents POSTed to it (one object, or a JSON array of them);
  ``GET /count`` answers the total. The peer forwarder delivers into it.
* ``mq-bridge``: the peer, mq-bridge (PyPI, Rust engine), as an HTTP -> HTTP batching forwarder:
  an HTTP listener whose messages are sent on in JSON-array batches to a URL.

    python -m bench.servers floor --port 8001
    python -m bench.servers sink --port 8002
    python -m bench.servers mq-bridge --port 8003 --target http://127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web


def floor_app() -> web.Application:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, text='{"accepted":1}', content_type="application/json")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("POST", "/{tail:.*}", accept)
    return app


def sink_app() -> web.Application:
    total = {"documents": 0, "requests": 0}

    async def receive(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        total["documents"] += len(body) if isinstance(body, list) else 1
        total["requests"] += 1
        return web.Response(status=200, text="{}", content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(total)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/count", count)
    app.router.add_route("POST", "/{tail:.*}", receive)
    return app


def run_mq_bridge(port: int, target: str, batch_size: int) -> None:
    """The peer: HTTP in, JSON-array batches out, in memory only (no durability)."""
    from mq_bridge import Route

    config = {
        "input": {"http": {"url": f"127.0.0.1:{port}"}},
        "output": {"http_bulk": {"url": target, "upsert": {"path": "/bulk", "format": "json_array"}}},
        "batch_size": batch_size,
    }
    Route.from_config(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=["floor", "sink", "mq-bridge"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", default="", help="mq-bridge: where batches go")
    parser.add_argument("--batch-size", type=int, default=512, help="mq-bridge: messages per batch")
    args = parser.parse_args()
    if args.kind == "mq-bridge":
        run_mq_bridge(args.port, args.target, args.batch_size)
        return
    app = floor_app() if args.kind == "floor" else sink_app()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
