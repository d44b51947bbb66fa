"""Entity resolution order, templates and monorepo fan-out; git and time parsing helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.config import load_settings
from bridge.queue import DurableQueue
from bridge.sources.base import SourceContext
from bridge.sources.entity import LOOKUP_FAILED, UNRESOLVED, EntityResolver, EntitySettings, Subject
from bridge.sources.gitrefs import repository_from_url, sha_from_revision
from bridge.sources.pipeline import Mapped
from bridge.sources.timestamps import parse_ci_timestamp
from bridge.sources.webhooks.github import create
from bridge.sources.webhooks.source import header_map
from tests.support.webhooks import SECRET, fixture_bytes, fixture_json

SUBJECT = Subject(keys=("Codertocat/Hello-World",), document=fixture_json("github/release.published.json"),
                  repository="Codertocat/Hello-World")


class Catalog:
    """A stand-in for the core's cached catalog lookup, recording what it was asked."""

    def __init__(self, answer: list[str] | Exception) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def lookup(self, repository: str) -> list[str]:
        self.asked.append(repository)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_static_then_template_then_catalog() -> None:
    catalog = Catalog(["from-catalog"])
    static = EntitySettings(static={"CODERTOCAT/hello-world": "from-static"}, template="{repository.name}")
    assert (await EntityResolver(static, catalog.lookup).resolve(SUBJECT)).tags == ("from-static",)
    template = EntitySettings(template="{repository.name}", lowercase=True)
    assert (await EntityResolver(template, catalog.lookup).resolve(SUBJECT)).tags == ("hello-world",)
    assert catalog.asked == []
    missing = EntitySettings(template="{repository.no_such_field}")
    assert (await EntityResolver(missing, catalog.lookup).resolve(SUBJECT)).tags == ("from-catalog",)
    assert catalog.asked == ["Codertocat/Hello-World"]


async def test_template_yielding_no_tag_falls_through() -> None:
    # A value with '/' or a space is no Cortex tag; an object is no value.
    for template in ("{repository.full_name}", "{repository.owner}", "{release.name}x y"):
        resolution = await EntityResolver(EntitySettings(template=template), None).resolve(SUBJECT)
        assert (resolution.tags, resolution.reason) == ((), UNRESOLVED)


async def test_unresolved_and_failed_lookup_reasons() -> None:
    empty = await EntityResolver(EntitySettings(), Catalog([]).lookup).resolve(SUBJECT)
    assert (empty.reason, empty.fallback_tag) == (UNRESOLVED, "Hello-World")
    assert empty.detail.endswith("no catalog entity has git repository Codertocat/Hello-World")
    failed = await EntityResolver(EntitySettings(), Catalog(RuntimeError("Cortex answered 503")).lookup).resolve(SUBJECT)
    assert (failed.reason, failed.detail) == (
        LOOKUP_FAILED, "catalog lookup of Codertocat/Hello-World failed: Cortex answered 503")


@pytest.mark.parametrize(("settings", "error"), [
    ({"template": "no placeholder"}, "template needs at least one {expression} placeholder"),
    ({"template": "{repository.[}"}, "placeholder {repository.[}"),
    ({"static": {"org/repo": "not/a/tag"}}, "'org/repo' maps to 'not/a/tag', which is not a Cortex tag"),
])
def test_invalid_entity_settings(settings: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError) as raised:
        EntitySettings.model_validate(settings)
    assert error in str(raised.value)


async def test_monorepo_fans_out_with_one_id_per_entity(tmp_path: Path) -> None:
    catalog = Catalog(["web", "api"])
    settings = load_settings(None, ingest={"allow_unauthenticated": True})
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        source = create({"name": "github", "type": "github", "secrets": [SECRET]},
                        SourceContext(settings=settings, queue=queue, lookup_repository=catalog.lookup))
        headers = header_map([("Content-Type", "application/json"), ("X-GitHub-Event", "release")])
        outcome = await source.evaluate(headers, fixture_bytes("github/release.published.json"), authenticate=False)
    finally:
        await queue.close()
    assert isinstance(outcome, Mapped)
    assert sorted(r.entity for r in outcome.records) == ["api", "web"]
    assert len({r.id for r in outcome.records}) == 2
    assert catalog.asked == ["Codertocat/Hello-World"]


@pytest.mark.parametrize(("url", "repository"), [
    ("https://github.com/foo/manifests-velero.git", "foo/manifests-velero"),
    ("git@github.com:foo/bar.git", "foo/bar"),
    ("ssh://vlad@10.126.0.2:2222/root/test-deployment-webhooks.git", "root/test-deployment-webhooks"),
    ("https://gitlab.example.com/group/sub/project", "group/sub/project"),
    ("git@somewhere.com:project.git", None),
    ("org/repo", "org/repo"),
    ("", None),
])
def test_repository_from_url(url: str, repository: str | None) -> None:
    assert repository_from_url(url) == repository


@pytest.mark.parametrize(("revision", "sha"), [
    ("main/731f7eaddfb6af01cb2173e18f0f75b0ba780ef1", "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"),
    ("main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1", "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"),
    ("ea8759964626a583667a2bfd08f334ec2070040a", "ea8759964626a583667a2bfd08f334ec2070040a"),
    ("1.4.2", None),
])
def test_sha_from_revision(revision: str, sha: str | None) -> None:
    assert sha_from_revision(revision) == sha


@pytest.mark.parametrize(("value", "expected"), [
    ("2016-08-12 15:23:28 UTC", datetime(2016, 8, 12, 15, 23, 28, tzinfo=UTC)),
    ("2021-04-28 21:50:00 +0200", datetime(2021, 4, 28, 19, 50, tzinfo=UTC)),
    ("2016-09-19T13:03:28.5345098Z", datetime(2016, 9, 19, 13, 3, 28, 534509, tzinfo=UTC)),
    (1_700_000_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
])
def test_ci_timestamps_are_utc(value: str | int, expected: datetime) -> None:
    assert parse_ci_timestamp(value) == expected
