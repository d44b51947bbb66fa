"""Source types by name: each adapter module registers its factory here."""

from __future__ import annotations

import importlib
from typing import Any

from bridge.sources.base import Source, SourceConfigError, SourceContext, SourceFactory

#: type name -> "module:factory"; imported lazily so an unused adapter costs nothing at startup.
#: Each adapter adds its line here.
SOURCE_TYPES: dict[str, str] = {
    "kafka": "bridge.sources.kafka.source:create",
    "github": "bridge.sources.webhooks.github:create",
    "gitlab": "bridge.sources.webhooks.gitlab:create",
    "jenkins": "bridge.sources.webhooks.jenkins:create",
    "argocd": "bridge.sources.webhooks.argocd:create",
    "flux": "bridge.sources.webhooks.flux:create",
    "cloudevents": "bridge.sources.webhooks.cloudevents:create",
    "mapping": "bridge.sources.webhooks.mapping:create",
    "kubernetes": "bridge.sources.kubernetes.source:create",
}


def build_sources(configs: list[dict[str, Any]], ctx: SourceContext) -> list[Source]:
    """Instantiate every configured source; raise :class:`SourceConfigError` on bad settings."""
    sources = []
    for index, config in enumerate(configs):
        name = config.get("name")
        kind = config.get("type")
        if not isinstance(name, str) or not name:
            raise SourceConfigError(f"sources[{index}]: `name` is required")
        if kind not in SOURCE_TYPES:
            known = ", ".join(sorted(SOURCE_TYPES)) or "none"
            raise SourceConfigError(f"source {name!r}: unknown type {kind!r} (known: {known})")
        module_name, _, attr = SOURCE_TYPES[kind].partition(":")
        factory: SourceFactory = getattr(importlib.import_module(module_name), attr)
        sources.append(factory(config, ctx))
    return sources
