"""What every source adapter plugs into: the context it gets and the shape it has.

A source knows its wire format and nothing about Cortex HTTP. It turns inputs into records and
hands them to :func:`bridge.sources.admit.admit` (or ``queue.append``); the sender does the rest.
Webhook sources contribute aiohttp routes on the ingest port; long-running sources (Kafka,
Kubernetes) run between :meth:`Source.start` and :meth:`Source.stop`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from bridge.config import Settings
from bridge.queue import DurableQueue

#: Looks up Cortex entity tags by git repository ("org/repo"); cached, counted against the quota.
RepositoryLookup = Callable[[str], Awaitable[list[str]]]


class SourceConfigError(Exception):
    """A source's settings are invalid; the message names the source and the field."""


@dataclass
class SourceContext:
    """Everything a source may use. Nothing here speaks Cortex HTTP except ``lookup_repository``."""

    settings: Settings
    queue: DurableQueue
    lookup_repository: RepositoryLookup | None = None
    #: set while the bridge drains: sources stop taking new input
    draining: Callable[[], bool] = field(default=lambda: False)


@runtime_checkable
class Source(Protocol):
    """A configured source adapter."""

    name: str
    type: str

    def routes(self) -> list[web.RouteDef]:
        """HTTP routes on the ingest port (empty for non-HTTP sources)."""

    async def start(self) -> None:
        """Begin consuming (no-op for webhook sources)."""

    async def stop(self) -> None:
        """Stop taking input; make sure everything acknowledged is durable."""


#: Builds a source from its config mapping (``name``, ``type`` and type-specific keys).
SourceFactory = Callable[[dict[str, Any], SourceContext], Source]
