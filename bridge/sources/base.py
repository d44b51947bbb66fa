"""What every source adapter plugs into: the context it gets and the shape it has.

A source knows its wire format and nothing about Cortex HTTP. It turns inputs into records (the
webhook sources and Kafka's ``cloudevents`` and ``mapping`` formats through one input pipeline,
:mod:`bridge.sources.pipeline`) and hands them to the queue (HTTP sources through
:mod:`bridge.sources.admit`, which also answers); the sender does the rest.
Webhook sources contribute aiohttp routes on the ingest port; long-running sources (Kafka,
Kubernetes) run between :meth:`Source.start` and :meth:`Source.stop`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bridge.config import Settings
from bridge.config_file import describe_errors
from bridge.queue import QueueBackend
from bridge.sources.edge import BodyBudget

#: Looks up Cortex entity tags by git repository ("org/repo"); cached, counted against the quota.
RepositoryLookup = Callable[[str], Awaitable[list[str]]]


class SourceConfigError(Exception):
    """A source's settings are invalid; the message names the source and the field."""


@dataclass
class SourceContext:
    """Everything a source may use. Nothing here speaks Cortex HTTP except ``lookup_repository``."""

    settings: Settings
    queue: QueueBackend
    lookup_repository: RepositoryLookup | None = None
    #: set while the bridge drains: sources stop taking new input
    draining: Callable[[], bool] = field(default=lambda: False)
    #: memory for request bodies read before authentication, shared by every HTTP input of a
    #: bridge (``None``: one of ``http.unauthenticated_body_bytes`` for this context)
    body_budget: BodyBudget | None = None

    def __post_init__(self) -> None:
        if self.body_budget is None:
            self.body_budget = BodyBudget(self.settings.http.unauthenticated_body_bytes)


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


SettingsModel = TypeVar("SettingsModel", bound=BaseModel)


def parse_settings(model: type[SettingsModel], config: Mapping[str, Any]) -> SettingsModel:
    """Validate a source's config; raise :class:`SourceConfigError` naming the source and fields."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = describe_errors(exc, model)
        raise SourceConfigError(f"source {config.get('name')!r}: {'; '.join(problems)}") from None


#: Builds a source from its config mapping (``name``, ``type`` and type-specific keys).
SourceFactory = Callable[[dict[str, Any], SourceContext], Source]
