"""Image-only deploy groups learning their sha later, on SQLite and PostgreSQL: rekeyed with the
enrichment report in one transaction, once, and only within the coalescing window."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.config import DeploySettings
from bridge.queue import QueueBackend
from bridge.queue.deploy_groups import DeployPolicy
from bridge.queue.enrichment import LINEAGE_SOURCE, enrichment_report
from bridge.records import Record
from bridge.sources.native import parse_native
from tests.queue.contract import Opener, postgres_opener, sqlite_opener

IMAGE = "ghcr.io/acme/svc@sha256:" + "ab" * 32
SHA = "6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "q.db")
    return postgres_opener(request.getfixturevalue("pg_dsn"))


async def opened(backend: Opener, policy: DeployPolicy) -> QueueBackend:
    queue = await backend()
    queue.deploy_policy = policy
    return queue


def rollout(n: int, *, sha: str | None = None, at: int = 0, source: str = "k8s") -> Record:
    fields = {"kind": "deploy", "entity": "svc", "title": f"rollout {n}", "environment": "prod",
              "timestamp": 1_700_000_000 + at, "customData": {"images": {"app": IMAGE}}}
    if sha is not None:
        fields["sha"] = sha
    [record] = parse_native([fields], source=source)
    return record


async def test_an_image_only_group_takes_its_sha_once_and_a_later_report_of_the_sha_joins(backend: Opener) -> None:
    queue = await opened(backend, DeployPolicy.of(DeploySettings()))
    first = rollout(1)
    await queue.append([first, rollout(2, sha="f" * 40, at=7200)])  # the second has a sha: not image-only
    [group] = await queue.image_deploy_groups()
    assert group.images == [IMAGE] and group.creator_id == first.id
    report = enrichment_report(group, SHA)
    assert await queue.enrich_deploy_group(group, report)
    assert not await queue.enrich_deploy_group(group, report), "its change is the sha now"
    assert await queue.image_deploy_groups() == []
    await queue.close()
    queue = await opened(backend, DeployPolicy.of(DeploySettings()))
    ci = rollout(3, sha=SHA.upper(), at=60, source="github")
    await queue.append([ci])
    joined = await queue.deploy_group(ci.id)
    assert joined is not None and joined.group_id == group.group_id
    assert [m.provenance.source for m in joined.members] == ["k8s", LINEAGE_SOURCE, "github"]
    assert queue.depth == 4  # the two rollouts, the enrichment, the CI report
    await queue.close()


async def test_none_outside_the_window_or_without_coalescing(backend: Opener) -> None:
    queue = await opened(backend, DeployPolicy(window_seconds=0.2))
    await queue.append([rollout(1)])
    assert len(await queue.image_deploy_groups()) == 1
    await asyncio.sleep(0.3)
    assert await queue.image_deploy_groups() == []
    queue.deploy_policy = DeployPolicy.of(DeploySettings(coalesce=False))
    assert await queue.image_deploy_groups() == []
    await queue.close()


async def test_replicas_enriching_one_group_at_once_do_it_once(pg_dsn: str) -> None:
    replicas = [await opened(postgres_opener(pg_dsn), DeployPolicy.of(DeploySettings())) for _ in range(3)]
    await replicas[0].append([rollout(1)])
    [group] = await replicas[1].image_deploy_groups()
    done = await asyncio.gather(*(q.enrich_deploy_group(group, enrichment_report(group, SHA)) for q in replicas))
    assert sorted(done) == [False, False, True]
    for queue in replicas:
        await queue.close()
