"""Entity descriptors from what a dead letter holds (an attacker may have chosen the tag and the
repository): always YAML that reads back as exactly those values, never a document they shape."""

from __future__ import annotations

import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridge.cortex.descriptors import entity_descriptor
from bridge.sources.entity import is_tag

TAGS = st.text(min_size=1, max_size=40).filter(is_tag)


@given(tag=TAGS, repository=st.one_of(st.none(), st.text(max_size=80)),
       provider=st.sampled_from(["github", "gitlab", "bitbucket", "azure"]))
def test_descriptor_reads_back_as_given(tag: str, repository: str | None, provider: str) -> None:
    document = yaml.safe_load(entity_descriptor(tag, name=tag, repository=repository, provider=provider))  # type: ignore[arg-type]
    assert set(document) == {"openapi", "info"}
    info = document["info"]
    assert (info["x-cortex-tag"], info["title"], info["x-cortex-type"]) == (tag, tag, "service")
    if repository:
        assert info["x-cortex-git"] == {provider: {"repository": repository}}
    else:
        assert "x-cortex-git" not in info
