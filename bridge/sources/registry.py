"""Source types by name: where each type's factory and settings model are.

Every source type's module has a factory named ``create(config, ctx)``. Its settings model is
listed beside it so that the configuration reference (:mod:`bridge.config_docs`) can describe
each type's keys from the model the type validates with.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bridge.sources.base import Source, SourceConfigError, SourceContext, SourceFactory


@dataclass(frozen=True)
class SourceType:
    """Where a source type's code is; imported only when it is used, so an unused type costs nothing."""

    #: the module whose ``create(config, ctx)`` builds a source of this type
    module: str
    #: ``module:Class`` of the pydantic model its settings are validated with
    settings: str


#: type name -> where it is. Each source type adds its line here.
SOURCE_TYPES: dict[str, SourceType] = {
    "kafka": SourceType("bridge.sources.kafka.source", "bridge.sources.kafka.settings:KafkaSourceSettings"),
    "github": SourceType("bridge.sources.webhooks.github", "bridge.sources.webhooks.github:GitHubSettings"),
    "gitlab": SourceType("bridge.sources.webhooks.gitlab", "bridge.sources.webhooks.gitlab:GitLabSettings"),
    "jenkins": SourceType("bridge.sources.webhooks.jenkins", "bridge.sources.webhooks.jenkins:JenkinsSettings"),
    "argocd": SourceType("bridge.sources.webhooks.argocd", "bridge.sources.webhooks.argocd:ArgoCDSettings"),
    "flux": SourceType("bridge.sources.webhooks.flux", "bridge.sources.webhooks.flux:FluxSettings"),
    "cloudevents": SourceType("bridge.sources.webhooks.cloudevents",
                              "bridge.sources.webhooks.cloudevents:CloudEventsSettings"),
    "alertmanager": SourceType("bridge.sources.webhooks.alertmanager",
                               "bridge.sources.webhooks.alertmanager:AlertmanagerSettings"),
    "pagerduty": SourceType("bridge.sources.webhooks.pagerduty", "bridge.sources.webhooks.pagerduty:PagerDutySettings"),
    "opsgenie": SourceType("bridge.sources.webhooks.opsgenie", "bridge.sources.webhooks.opsgenie:OpsgenieSettings"),
    "mapping": SourceType("bridge.sources.webhooks.mapping", "bridge.sources.webhooks.mapping:MappingSettings"),
    "kubernetes": SourceType("bridge.sources.kubernetes.source",
                             "bridge.sources.kubernetes.settings:KubernetesSourceSettings"),
}


def source_factory(kind: str) -> SourceFactory:
    """The ``create`` function of a registered source type."""
    factory: SourceFactory = importlib.import_module(SOURCE_TYPES[kind].module).create
    return factory


def settings_model(kind: str) -> type[BaseModel]:
    """The settings model of a registered source type."""
    module_name, _, name = SOURCE_TYPES[kind].settings.partition(":")
    model: type[BaseModel] = getattr(importlib.import_module(module_name), name)
    return model


def build_sources(configs: list[dict[str, Any]], ctx: SourceContext) -> list[Source]:
    """Instantiate every configured source; raise :class:`SourceConfigError` on bad settings.

    The problems of all sources are reported together, not one source per attempt.
    """
    sources = []
    problems: list[str] = []
    for index, config in enumerate(configs):
        name = config.get("name")
        kind = config.get("type")
        if not isinstance(name, str) or not name:
            problems.append(f"sources[{index}]: `name` is required")
        elif kind not in SOURCE_TYPES:
            known = ", ".join(sorted(SOURCE_TYPES)) or "none"
            problems.append(f"source {name!r}: unknown type {kind!r} (known: {known})")
        else:
            try:
                sources.append(source_factory(kind)(config, ctx))
            except SourceConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise SourceConfigError("; ".join(problems))
    return sources
