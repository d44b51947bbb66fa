"""Settings of a ``type: kubernetes`` source, and the API client configuration they lead to.

Each part's own settings live with it (``entity``: :mod:`bridge.sources.kubernetes.entity`, ``rollouts``:
:mod:`bridge.sources.kubernetes.rollouts`, ``events``: :mod:`bridge.sources.kubernetes.events`,
``leader_election``: :mod:`bridge.sources.kubernetes.leader`); this module composes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.sources.kubernetes.entity import EntityMapping
from bridge.sources.kubernetes.events import EventSettings
from bridge.sources.kubernetes.leader import LeaderElectionSettings
from bridge.sources.kubernetes.rollouts import RolloutSettings
from bridge.sources.lineage import LineageSettings


class KubernetesSourceSettings(BaseModel):
    """Settings of one ``type: kubernetes`` source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["kubernetes"] = "kubernetes"
    connection: Literal["auto", "in-cluster", "kubeconfig"] = Field(
        "auto",
        description="auto: `kubeconfig` if set, else the pod's service account when running in a cluster, "
        "else $KUBECONFIG or ~/.kube/config.",
    )
    kubeconfig: Path | None = Field(None, description="kubeconfig file (connection kubeconfig/auto).")
    context: str | None = Field(None, description="kubeconfig context; default: its current context.")
    cluster: str = Field("kubernetes", min_length=1, description="Cluster name (ids, customData, environment).")
    environment: str | None = Field(None, description="Deploy environment; default: the cluster name.")
    environment_namespace_label: str | None = Field(
        None, description="Namespace label whose value is the environment (falls back to `environment`)."
    )
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch (empty: all).")
    entity: EntityMapping = Field(default_factory=EntityMapping)
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    leader_election: LeaderElectionSettings = Field(default_factory=LeaderElectionSettings)
    lineage: LineageSettings = Field(default_factory=LineageSettings)
    watch_timeout_seconds: int = Field(300, ge=5, le=3600, description="Server-side timeout of one watch request.")
    pod_cache_size: int = Field(4096, ge=16, description="Pods whose owner is remembered for event mapping.")

    @model_validator(mode="before")
    @classmethod
    def _entity_annotation(cls, data: Any) -> Any:
        # Shorthand for the common case: `entity_annotation: cortex.io/tag`.
        if isinstance(data, dict) and "entity_annotation" in data:
            data = dict(data)
            key = data.pop("entity_annotation")
            entity = dict(data.get("entity") or {})
            if "keys" in entity:
                raise ValueError("set entity_annotation or entity.keys, not both")
            entity["keys"] = [key]
            data["entity"] = entity
        return data

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSourceSettings:
        if not self.rollouts.enabled and not self.events.enabled:
            raise ValueError("enable rollouts, events or both")
        if self.kubeconfig is not None and not self.kubeconfig.is_file():
            raise ValueError(f"kubeconfig {self.kubeconfig} does not exist")
        if self.connection == "in-cluster" and self.kubeconfig is not None:
            raise ValueError("connection in-cluster takes no kubeconfig")
        return self


async def load_client_configuration(
    settings: KubernetesSourceSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Configuration:
    """A client configuration from the service account (in-cluster) or a kubeconfig."""
    configuration = Configuration()
    mode = settings.connection
    if mode == "auto":
        in_cluster = settings.kubeconfig is None and bool(environ.get("KUBERNETES_SERVICE_HOST"))
        mode = "in-cluster" if in_cluster else "kubeconfig"
    if mode == "in-cluster":
        # The loader re-reads the token file every minute: bound service-account tokens rotate.
        InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file, environ=dict(environ)).load_and_set(
            configuration
        )
    else:
        await k8s_config.load_kube_config(
            config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    return configuration
