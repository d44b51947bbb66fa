"""The registry of source types, and the configuration reference generated through it."""

from __future__ import annotations

import typing

import pytest

from bridge import config_docs
from bridge.sources.registry import SOURCE_TYPES, settings_model, source_factory


@pytest.mark.parametrize("kind", sorted(SOURCE_TYPES))
def test_every_type_is_built_by_create_and_validated_by_its_own_model(kind: str) -> None:
    assert source_factory(kind).__name__ == "create"
    model = settings_model(kind)
    assert typing.get_args(model.model_fields["type"].annotation) == (kind,), "the model of another type"


@pytest.mark.parametrize("kind", sorted(SOURCE_TYPES))
def test_the_configuration_reference_lists_every_key_of_every_type(kind: str) -> None:
    doc = config_docs.render_markdown()
    heading = f"\n## Source type `{kind}`\n"
    assert heading in doc
    section = doc.split(heading, 1)[1].split("\n## ", 1)[0]
    keys = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert keys == [s.key for s in config_docs.iter_settings(settings_model(kind))]
    assert "name" in keys and "type" in keys
