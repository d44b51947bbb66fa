"""Commit lineage on a real SQLite queue: image references parsed, facts learned, kept across a
restart, applied to image-only deploys, bounded; lead-time points keyed by deploy identity."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.records import DeployRecord, MetricRecord, Provenance, record_id
from bridge.sources.lineage import (
    Built,
    Committed,
    ImageRef,
    Lineage,
    LineageSettings,
    parse_image,
    split_image,
)
from bridge.sources.webhooks.github import package_facts
from tests.queue.contract import sqlite_opener
from tests.support.webhooks import fixture_json

#: From the real registry_package payload (octokit/webhooks).
PACKAGE_SHA = "6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
PACKAGE_IMAGE = "ghcr.io/codertocat/hello-world@sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
#: The OCI purl of the real CDEvents build.finished sample (cdevents/spec conformance).
BUILD_PURL = fixture_json("cdevents/build_finished.json")["subject"]["content"]["artifactId"]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("reference", "parsed"), [
    ("nginx", ImageRef("docker.io/library/nginx", "latest", None)),
    ("nginx:latest", ImageRef("docker.io/library/nginx", "latest", None)),
    ("index.docker.io/Org/App:1.2", ImageRef("docker.io/org/app", "1.2", None)),
    ("ghcr.io/Codertocat/hello-world@sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
     ImageRef("ghcr.io/codertocat/hello-world", None, "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b")),
    ("localhost:5000/app:v1@sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427",
     ImageRef("localhost:5000/app", "v1", "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427")),
    (BUILD_PURL, ImageRef("docker.io/library/myapp", None,
                          "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427")),
    ("pkg:oci/app@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"
     "?repository_url=ghcr.io/org/app&tag=v2",
     ImageRef("ghcr.io/org/app", "v2", "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427")),
    ("pkg:golang/mygit.com/myorg/myapp@234fd47e07d1004f0aed9c", None),
    ("", None), ("app:bad tag", None), ("app@sha256:short", None), ("UPPER CASE", None), (7, None),
])
def test_image_references_are_parsed_and_normalized(reference: object, parsed: ImageRef | None) -> None:
    assert parse_image(reference) == parsed


def test_split_image_keeps_the_reference_as_written() -> None:
    # What Kubernetes' image_tag value source reads (moved here from the kubernetes templates).
    assert split_image("registry.example:5000/checkout:1.4.2@sha256:abc") == ("registry.example:5000/checkout", "1.4.2")
    assert split_image("registry.example:5000/checkout") == ("registry.example:5000/checkout", None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600) | st.from_regex(r"[a-zA-Z0-9./:@_-]{0,80}", fullmatch=True))
def test_no_string_crashes_the_parser(reference: str) -> None:
    parsed = parse_image(reference)
    if parsed is not None:
        assert all(len(key) < 1200 for key in parsed.lookup_keys())
        assert parse_image(f"{parsed.name}:{parsed.tag}" if parsed.tag else f"{parsed.name}@{parsed.digest}") is not None


def deploy(*, sha: str | None, images: dict[str, str] | None, timestamp: datetime = NOW,
           environment: str = "production", entity: str = "hello-world", source: str = "k8s") -> DeployRecord:
    return DeployRecord(id=record_id(source, entity, sha, timestamp), entity=entity, title="Deploy",
                        timestamp=timestamp, sha=sha, environment=environment,
                        custom_data={"images": images} if images is not None else None,
                        provenance=Provenance(source=source))


async def test_lineage_learned_from_a_registry_package_survives_a_restart(tmp_path: Path) -> None:
    facts = package_facts(fixture_json("github/registry_package.published.docker.json"))
    assert facts == [Built("ghcr.io/Codertocat/hello-world@sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
                           PACKAGE_SHA)]
    opener = sqlite_opener(tmp_path / "q.db")
    first = await opener()
    await Lineage(first, LineageSettings()).learn(facts)
    await first.close()

    again = await opener()  # a new queue object on the same file: the bridge restarted
    lineage = Lineage(again, LineageSettings())
    image_only = deploy(sha=None, images={"app": PACKAGE_IMAGE})
    [enriched] = await lineage.enrich([image_only])
    assert isinstance(enriched, DeployRecord) and enriched.sha == PACKAGE_SHA
    assert enriched.custom_data == {"images": {"app": PACKAGE_IMAGE}}, "the images stay for coalescing"
    unknown = deploy(sha=None, images={"app": "ghcr.io/codertocat/hello-world:never-built"})
    assert await lineage.enrich([unknown]) == [unknown], "an unknown image leaves the deploy as it was"
    own = deploy(sha="1111111", images={"app": PACKAGE_IMAGE})
    assert await lineage.enrich([own]) == [own], "a deploy's own sha wins"
    await again.close()


async def test_digest_wins_over_the_reference(tmp_path: Path) -> None:
    queue = await sqlite_opener(tmp_path / "q.db")()
    lineage = Lineage(queue, LineageSettings())
    await lineage.learn([Built("ghcr.io/org/app:1.0", "aaaaaaa"),
                         Built("ghcr.io/org/app@sha256:" + "b" * 64, "bbbbbbb")])
    assert await lineage.sha_of(["ghcr.io/org/app:1.0@sha256:" + "b" * 64]) == "bbbbbbb"
    assert await lineage.sha_of(["ghcr.io/ORG/app:1.0"]) == "aaaaaaa"
    assert await lineage.sha_of(["ghcr.io/org/app:2.0"]) is None
    await queue.close()


async def test_lead_time_is_one_point_per_deploy_identity(tmp_path: Path) -> None:
    queue = await sqlite_opener(tmp_path / "q.db")()
    lineage = Lineage(queue, LineageSettings(lead_time_metric="lead-time"))
    committed = NOW - timedelta(hours=2)
    await lineage.learn([Committed(PACKAGE_SHA, committed)])
    reports = [deploy(sha=PACKAGE_SHA, images=None, source=source, timestamp=NOW + timedelta(minutes=n))
               for n, source in enumerate(("github", "argocd", "k8s"))]
    points = [r for batch in [await lineage.enrich([r]) for r in reports] for r in batch
              if isinstance(r, MetricRecord)]
    assert len(points) == 3 and len({p.id for p in points}) == 1, "three sources, one identity, one id"
    assert points[0].value == 7200.0 and points[0].key == "lead-time" and points[0].timestamp == NOW
    appended = await queue.append(points)
    assert len(appended.new_ids) == 1, "the queue stores the point once"
    other_env = await lineage.enrich([deploy(sha=PACKAGE_SHA, images=None, environment="staging")])
    assert other_env[1].id != points[0].id, "another environment is another deploy"
    rollback = deploy(sha=PACKAGE_SHA, images=None).model_copy(update={"type": "ROLLBACK"})
    assert await lineage.enrich([rollback]) == [rollback], "a rollback is no lead time"
    before = deploy(sha=PACKAGE_SHA, images=None, timestamp=committed - timedelta(seconds=1))
    assert await lineage.enrich([before]) == [before], "a deploy before its commit is no lead time"
    await queue.close()


async def test_lead_time_is_off_unless_a_metric_is_set(tmp_path: Path) -> None:
    queue = await sqlite_opener(tmp_path / "q.db")()
    lineage = Lineage(queue, LineageSettings())
    record = deploy(sha=PACKAGE_SHA, images=None)
    assert await lineage.enrich([record], [Committed(PACKAGE_SHA, NOW - timedelta(hours=1))]) == [record]
    await queue.close()


async def test_expired_entries_are_forgotten(tmp_path: Path) -> None:
    queue = await sqlite_opener(tmp_path / "q.db")()
    lineage = Lineage(queue, LineageSettings(retention_days=7))
    await queue.put_state(lineage.updates([Built("app:old", "aaaaaaa")], now=datetime.now(UTC) - timedelta(days=8)))
    await lineage.learn([Built("app:new", "bbbbbbb")])
    assert await lineage.sha_of(["app:old"]) is None
    assert await lineage.sha_of(["app:new"]) == "bbbbbbb"
    await queue.close()


@settings(max_examples=15, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.text(max_size=60), st.from_regex(r"[0-9a-f]{7,40}", fullmatch=True)),
                                 max_size=8), max_size=8),
       bound=st.integers(1, 6))
def test_the_learned_map_stays_bounded(tmp_path_factory: pytest.TempPathFactory,
                                       batches: list[list[tuple[str, str]]], bound: int) -> None:
    async def run() -> None:
        queue = await sqlite_opener(tmp_path_factory.mktemp("q") / "q.db")()
        lineage = Lineage(queue, LineageSettings(max_entries=bound))
        for batch in batches:
            await lineage.learn([Built(image, sha) for image, sha in batch])
            assert len(await queue.get_states("lineage/")) <= bound
        await lineage.prune()
        assert len(await queue.get_states("lineage/")) <= bound
        await queue.close()

    asyncio.run(run())
