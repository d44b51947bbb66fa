"""What the configured sources name in Cortex: metric keys and the entities of static maps.

``cortex-bridge doctor`` asks Cortex whether each exists: a metric key without a custom metric
definition, or a static-map tag without an entity, makes every record for it a 404 that is
parked and, after the retry age, dead-lettered. Read from the sources' configuration as written
(every source type, Kafka topic options included), without building the sources:

* metric keys: every setting named ``*_metric`` (``workflow_duration_metric``, ``count_metric``
  ...) and the literal ``constants.key`` of a ``mapping`` rule of kind ``metric``;
* entities: the values of every ``entity.static`` map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.sources.entity import is_tag


@dataclass
class References:
    """Cortex names -> the sources that name them."""

    metric_keys: dict[str, list[str]] = field(default_factory=dict)
    entities: dict[str, list[str]] = field(default_factory=dict)

    def add(self, names: dict[str, list[str]], name: str, source: str) -> None:
        """Note that ``source`` names ``name`` (in ``metric_keys`` or ``entities``)."""
        found = names.setdefault(name, [])
        if source not in found:
            found.append(source)


def _mappings(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a configuration tree, outermost first."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _mappings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _mappings(child)


def configured_references(sources: list[dict[str, Any]]) -> References:
    """The metric keys and static-map entities the source configurations ``sources`` name."""
    found = References()
    for config in sources:
        source = str(config.get("name") or "(unnamed source)")
        for mapping in _mappings(config):
            for key, value in mapping.items():
                if isinstance(key, str) and key.endswith("_metric") and isinstance(value, str) and value:
                    found.add(found.metric_keys, value, source)
            entity = mapping.get("entity")
            static = entity.get("static") if isinstance(entity, dict) else None
            if isinstance(static, dict):
                for tag in static.values():
                    if isinstance(tag, str) and is_tag(tag):
                        found.add(found.entities, tag, source)
            constants = mapping.get("constants")
            if mapping.get("kind") == "metric" and isinstance(constants, dict):
                literal = constants.get("key")
                if isinstance(literal, str) and literal:
                    found.add(found.metric_keys, literal, source)
    return found
