"""Deploy groups in the queue, on SQLite and PostgreSQL: written with the appended records, kept
across a reopen, and created once when replicas append reports of one new deploy at once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import DeploySettings
from bridge.queue import BatchPolicy, QueueBackend
from bridge.queue.deploy_groups import _JOINED, DeployPolicy, change_of
from bridge.queue.schema import DEPLOY_GROUPS_DDL
from bridge.records import DeployRecord, Record
from bridge.sources.native import parse_native
from tests.queue.contract import Opener, postgres_opener, sqlite_opener

POLICY = DeployPolicy.of(DeploySettings(sources={"argocd": "enrich-only", "quiet": "off"}))
CLAIM_ALL = BatchPolicy(max_items={"deploy": 1})


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "q.db")
    return postgres_opener(request.getfixturevalue("pg_dsn"))


def report(source: str, n: int, *, sha: str = "ABC123", environment: str = "prod", at: int = 0,
           **fields: Any) -> Record:
    [record] = parse_native([{"kind": "deploy", "entity": "svc", "title": f"{source} {n}", "sha": sha,
                              "environment": environment, "timestamp": 1_700_000_000 + at, **fields}], source=source)
    return record


async def opened(backend: Opener, **options: Any) -> QueueBackend:
    queue = await backend(**options)
    queue.deploy_policy = POLICY
    return queue


def test_change_is_the_sha_else_the_sorted_images() -> None:
    def deploy(**fields: Any) -> DeployRecord:
        record = report("k8s", 0, **fields)
        assert isinstance(record, DeployRecord)
        return record

    assert change_of(deploy(sha="ABC")) == "sha:abc"
    both = {"customData": {"images": {"b": "img:2", "a": "img:1"}}}
    assert change_of(deploy(sha=None, **both)) == "images:img:1,img:2"
    assert change_of(deploy(sha=None, customData={"image": "img:3"})) == "images:img:3"
    assert change_of(deploy(sha=None)) is None


async def test_reports_of_one_change_join_the_first_and_survive_a_reopen(backend: Opener) -> None:
    queue = await opened(backend)
    first, second = report("github", 1), report("k8s", 2, at=60)
    await queue.append([first])
    await queue.close()
    queue = await opened(backend)
    await queue.append([second, report("github", 3, sha="other", at=120), report("github", 4, environment="dev")])
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator_id == first.id and group.creator == "queued" and group.uuid is None
    assert [m.id for m in group.members] == [first.id, second.id]
    other = await queue.deploy_group(report("github", 3, sha="other", at=120).id)
    assert other is not None and other.group_id != group.group_id
    # The first sha again after another was deployed: a new group, not a merge.
    again = report("k8s", 5, at=180)
    await queue.append([again])
    renewed = await queue.deploy_group(again.id)
    assert renewed is not None and renewed.creator_id == again.id
    # Delivered with a uuid: the group knows it.
    claimed = await queue.claim(CLAIM_ALL)
    assert claimed[0].record.id == first.id
    await queue.mark_delivered([(claimed[0].seq, "6f9619ff-8b86-d011-b42d-00cf4fc964ff")])
    delivered = await queue.deploy_group(second.id)
    assert delivered is not None and (delivered.creator, delivered.uuid) == (
        "delivered", "6f9619ff-8b86-d011-b42d-00cf4fc964ff")
    await queue.close()


async def test_modes_and_the_window(backend: Opener) -> None:
    queue = await opened(backend)
    alone = await queue.append([report("argocd", 1), report("quiet", 2)])
    assert alone.new_ids == [] and sorted(alone.skipped_ids) == sorted([report("argocd", 1).id, report("quiet", 2).id])
    await queue.append([report("github", 3)])
    enriching = await queue.append([report("argocd", 4, at=600)])
    assert enriching.new_ids == [report("argocd", 4, at=600).id]
    late = report("k8s", 5, at=1801)
    await queue.append([late])
    group = await queue.deploy_group(late.id)
    assert group is not None and group.creator_id == late.id, "outside the window: a deploy of its own"
    assert queue.depth == 3
    await queue.close()


async def test_a_dead_creator_is_taken_over_once(backend: Opener) -> None:
    queue = await opened(backend)
    first, second = report("github", 1), report("k8s", 2)
    await queue.append([first, second])
    [claimed] = await queue.claim(CLAIM_ALL)
    await queue.dead_letter([claimed.seq], reason="rejected", detail="400", status=400)
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator == "dead" and [m.id for m in group.members] == [second.id]
    assert await queue.take_over_deploy_group(group.group_id, second.id, first.id)
    assert not await queue.take_over_deploy_group(group.group_id, "another", first.id)
    taken = await queue.deploy_group(second.id)
    assert taken is not None and (taken.creator_id, taken.creator) == (second.id, "queued")
    await queue.close()


async def test_the_group_knows_when_its_queued_creator_is_next_due(backend: Opener) -> None:
    queue = await opened(backend)
    first, second = report("github", 1), report("k8s", 2)
    before = time.time()
    await queue.append([first, second])
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator_due_at is not None and before <= group.creator_due_at <= time.time()
    [claimed] = await queue.claim(CLAIM_ALL)
    later = time.time() + 600  # backing off through an outage
    await queue.reschedule([claimed.seq], next_attempt_at=later, error="503", count_attempt=True)
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator_due_at == pytest.approx(later)
    [member] = await queue.claim(CLAIM_ALL, now=later)  # due since the append: first
    [creator] = await queue.claim(CLAIM_ALL, now=later)
    assert (member.record.id, creator.record.id) == (second.id, first.id)
    await queue.mark_delivered([(creator.seq, "6f9619ff-8b86-d011-b42d-00cf4fc964ff")])
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator == "delivered" and group.creator_due_at is None
    await queue.close()


async def test_replicas_appending_one_new_deploy_at_once_create_it_once(pg_dsn: str) -> None:
    replicas = [await opened(postgres_opener(pg_dsn)) for _ in range(4)]
    reports = [report(f"source-{n}", n, at=n) for n in range(12)]
    await asyncio.gather(*(replicas[n % 4].append([r]) for n, r in enumerate(reports)))
    groups = {g.group_id: g for g in [await replicas[0].deploy_group(r.id) for r in reports] if g is not None}
    assert len(groups) == 1
    [group] = groups.values()
    assert sorted(m.id for m in group.members) == sorted(r.id for r in reports)
    for queue in replicas:
        await queue.close()


async def test_groups_older_than_the_history_are_forgotten(backend: Opener) -> None:
    queue = await opened(backend, history_seconds=0.2)
    first, second = report("github", 1), report("k8s", 2)
    await queue.append([first])
    await asyncio.sleep(0.3)
    assert await queue.prune_history() >= 1
    assert await queue.deploy_group(first.id) is None
    await queue.append([second])  # the old group is gone: a deploy of its own
    group = await queue.deploy_group(second.id)
    assert group is not None and group.creator_id == second.id
    await queue.close()


async def test_a_later_change_arriving_first_does_not_split_an_earlier_deploy(backend: Opener) -> None:
    queue = await opened(backend)
    first, newer, late = report("github", 1), report("github", 2, sha="newer", at=7200), report("k8s", 3, at=40)
    for record in (first, newer, late):  # the newer change's report arrives before the late one of the first
        await queue.append([record])
    group = await queue.deploy_group(late.id)
    assert group is not None and group.creator_id == first.id
    await queue.close()


def event(n: int, opened: str, *, at: int = 0, entity: str = "svc") -> Record:
    [record] = parse_native([{"kind": "event", "entity": entity, "type": "INCIDENT", "title": f"incident {n}",
                              "timestamp": 1_700_000_000 + at, "customData": {"opened_event": opened}}],
                            source="pagerduty")
    return record


async def test_events_naming_one_opening_are_one_group_whatever_the_time(backend: Opener) -> None:
    queue = await opened(backend)
    deploy = report("github", 1)
    opening = event(1, "incident-a")
    await queue.append([deploy, opening])
    await queue.close()
    queue = await opened(backend)
    # Resolved two days later, after a restart: the same group; a deploy in between changes nothing.
    resolution, other = event(2, "incident-a", at=172_800), event(3, "incident-b", at=60)
    later_deploy = report("k8s", 2, at=30)
    await queue.append([resolution, other, later_deploy])
    group = await queue.deploy_group(resolution.id)
    assert group is not None and group.creator_id == opening.id
    assert [m.id for m in group.members] == [opening.id, resolution.id]
    alone = await queue.deploy_group(other.id)
    assert alone is not None and alone.creator_id == other.id and alone.group_id != group.group_id
    # The deploy reports still coalesce: an event group is no change between them.
    deploys = await queue.deploy_group(later_deploy.id)
    assert deploys is not None and deploys.creator_id == deploy.id
    # Another entity's event naming the same id is not the same incident.
    elsewhere = event(4, "incident-a", entity="other-svc")
    await queue.append([elsewhere])
    own = await queue.deploy_group(elsewhere.id)
    assert own is not None and own.creator_id == elsewhere.id
    await queue.close()


async def test_a_busy_entity_joins_by_its_change_among_hundreds_of_other_deploys(backend: Opener) -> None:
    # 300 deploys of other commits on the entity within the window; the join still finds the
    # first report's group, and a report of the same commit after another is still a new deploy.
    queue = await opened(backend, max_records=10_000)
    first = report("github", 0, sha="target", at=0)
    await queue.append([first])
    await queue.append([report("github", n, sha=f"other-{n}", at=-n - 1) for n in range(1, 301)])
    same = report("k8s", 1, sha="target", at=0)
    await queue.append([same])
    group = await queue.deploy_group(same.id)
    assert group is not None and group.creator_id == first.id
    await queue.append([report("github", 999, sha="between", at=5)])
    after = report("k8s", 2, sha="target", at=10)
    await queue.append([after])
    renewed = await queue.deploy_group(after.id)
    assert renewed is not None and renewed.creator_id == after.id


def test_the_join_reads_indexes_only() -> None:
    """No scan of an entity's groups per appended deploy (the join once read every group in the
    window: quadratic for a busy entity)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(DEPLOY_GROUPS_DDL)
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _JOINED, ("e", "p", "c", 0, 1, 0, 0, 0))]
    assert not [step for step in plan if step.startswith("SCAN")], plan
    assert any("deploy_groups_change" in step for step in plan), plan
