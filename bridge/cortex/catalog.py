"""Entity lookup by git repository, cached so repeated webhooks cost no extra Cortex requests."""

from __future__ import annotations

import asyncio
import time

from bridge.cortex.client import CortexClient


class RepositoryCatalog:
    """``org/repo`` -> entity tags, from ``GET /api/v1/catalog?gitRepositories=``, with a TTL.

    Concurrent lookups of the same repository share one request.
    """

    def __init__(self, client: CortexClient, *, ttl_seconds: float = 600.0) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._inflight: dict[str, asyncio.Future[list[str]]] = {}

    async def lookup(self, repository: str) -> list[str]:
        key = repository.strip().lower()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            tags = await self.client.find_entities_by_repository(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        self._cache[key] = (time.monotonic() + self.ttl, tags)
        future.set_result(tags)
        return tags
