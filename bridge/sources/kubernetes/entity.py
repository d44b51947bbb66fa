"""Which Cortex entity a workload (or any object) belongs to: the ``entity:`` of a kubernetes source."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.sources.entity import EntityResolver, EntitySettings, is_tag
from bridge.sources.kubernetes.workloads import WorkloadRef


class EntityMapping(BaseModel):
    """``entity:`` of a kubernetes source: which Cortex entity a workload belongs to."""

    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(
        default_factory=lambda: ["cortex.io/tag"],
        description="Annotation (then label) keys on the workload holding the Cortex tag, tried in order.",
    )
    static: dict[str, str] = Field(default_factory=dict, description="'namespace/name' of a workload -> tag.")
    template: str | None = Field(
        None, description="Tag template over {kind, namespace, name, labels, annotations, cluster}, e.g. '{name}'."
    )
    lowercase: bool = Field(False, description="Lowercase the tag the template produced.")

    @model_validator(mode="after")
    def _valid(self) -> EntityMapping:
        # Same rules as every other source's entity settings (tags in the static map, placeholders).
        EntitySettings(static=self.static, template=self.template, lowercase=self.lowercase, lookup=False)
        return self


class EntityMapper:
    """Workload -> Cortex tag: annotation/label key, then the static map, then the template."""

    def __init__(self, settings: EntityMapping, *, cluster: str) -> None:
        self.settings = settings
        self.cluster = cluster
        self._resolver = EntityResolver(
            EntitySettings(static=settings.static, template=settings.template, lowercase=settings.lowercase,
                           lookup=False),
            None,
        )

    def entity(self, ref: WorkloadRef) -> str | None:
        """The Cortex tag of ``ref``, or None when no rule yields one."""
        for key in self.settings.keys:
            value = ref.annotations.get(key) or ref.labels.get(key)
            if value and is_tag(value.strip()):
                return value.strip()
        tag = self._resolver.settings.static.get(f"{ref.namespace}/{ref.name}".lower())
        if tag is not None:
            return tag
        document = {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "labels": ref.labels,
                    "annotations": ref.annotations, "cluster": self.cluster}
        return self._resolver.render_template(document)
