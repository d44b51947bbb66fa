"""Change failures linked in the queue, on SQLite and PostgreSQL: a failure after a deploy adds the
change-failure event and the deploy's mark to the deploy's group, in the appending transaction,
once per (deploy, failure) — across a reopen, and when replicas append one failure at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bridge.config import DeploySettings
from bridge.queue import QueueBackend
from bridge.queue.change_failures import CHANGE_FAILURE_SOURCE, MARK_KEY
from bridge.queue.deploy_groups import DeployPolicy
from bridge.records import DeployRecord, EventRecord, Record
from bridge.sources.native import parse_native
from tests.queue.contract import Opener, postgres_opener, sqlite_opener

POLICY = DeployPolicy.of(DeploySettings(change_failure_window_seconds=3600))
T0 = 1_700_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "q.db")
    return postgres_opener(request.getfixturevalue("pg_dsn"))


async def opened(backend: Opener, policy: DeployPolicy = POLICY) -> QueueBackend:
    queue = await backend()
    queue.deploy_policy = policy
    return queue


def deploy(n: int, *, sha: str = "abc", environment: str = "prod", at: int = 0, entity: str = "svc",
           type_: str = "DEPLOY", source: str = "github") -> Record:
    [record] = parse_native([{"kind": "deploy", "entity": entity, "title": f"deploy {n}", "sha": sha, "type": type_,
                              "environment": environment, "timestamp": T0 + at}], source=source)
    return record


def event(n: int, type_: str, *, at: int, entity: str = "svc", opening: bool = False, **custom: Any) -> Record:
    """A failure event; ``opening``: an incident's opening, whose customData names its own id (as
    the incident sources' do)."""
    fields: dict[str, Any] = {"kind": "event", "entity": entity, "type": type_, "title": f"failure {n}",
                              "timestamp": T0 + at, "customData": custom}
    if opening:
        fields["id"] = f"incident-{n}-{entity}"
        fields["customData"] = {**custom, "opened_event": fields["id"]}
    [record] = parse_native([fields], source="alerts")
    return record


async def added(queue: QueueBackend, record: Record) -> tuple[list[EventRecord], list[DeployRecord]]:
    """The change-failure events and marks in ``record``'s deploy group."""
    group = await queue.deploy_group(record.id)
    assert group is not None
    mine = [m for m in group.members if m.provenance.source == CHANGE_FAILURE_SOURCE]
    return ([m for m in mine if isinstance(m, EventRecord)], [m for m in mine if isinstance(m, DeployRecord)])


async def test_a_failed_rollout_after_a_deploy_is_linked_once_across_a_reopen(backend: Opener) -> None:
    queue = await opened(backend)
    first = deploy(1)
    await queue.append([first])
    failure = event(1, "ROLLOUT_FAILED", at=600, environment="prod")
    await queue.append([failure])
    assert queue.depth == 4, "the records the link adds are counted by the appending replica too"
    await queue.close()
    queue = await opened(backend)
    await queue.append([failure])  # redelivered after a restart: a duplicate, not a second link
    [cf], [mark] = await added(queue, first)
    custom = cf.custom_data or {}
    assert cf.type == "change-failure" and cf.timestamp.timestamp() == T0 + 600
    assert custom["deploy"] == {"bridgeId": first.id, "environment": "prod"}
    assert custom["failure"] == {"id": failure.id, "kind": "event", "type": "ROLLOUT_FAILED", "title": "failure 1"}
    assert custom["secondsAfterDeploy"] == 600
    assert (mark.custom_data or {})[MARK_KEY]["event"] == cf.id
    assert isinstance(first, DeployRecord) and mark.timestamp == first.timestamp  # never moves the deploy's time
    assert queue.depth == 4  # the deploy, the failure, its event and the mark
    await queue.close()


async def test_outside_the_window_another_environment_entity_or_signal_is_not_a_change_failure(
    backend: Opener,
) -> None:
    queue = await opened(backend)
    first = deploy(1)
    await queue.append([first])
    await queue.append([
        event(1, "ROLLOUT_FAILED", at=3601),  # too late
        event(2, "ROLLOUT_FAILED", at=-10),  # before the deploy
        event(3, "SYNC_FAILED", at=60, environment="staging"),  # another environment
        event(4, "ROLLOUT_FAILED", at=60, entity="other"),  # another entity
        event(5, "DEPLOY_FAILED", at=60),  # not a signal by default
        event(6, "INCIDENT", at=60),  # an incident type, but not an opening (e.g. a resolution posted alone)
    ])
    assert await added(queue, first) == ([], [])
    await queue.close()


async def test_an_incident_without_environment_is_of_the_latest_deploy_in_any_environment(backend: Opener) -> None:
    queue = await opened(backend)
    prod, staging = deploy(1), deploy(2, sha="def", environment="staging", at=300)
    await queue.append([prod, staging])
    opening = event(1, "ALERT", at=900, opening=True)
    await queue.append([opening])
    assert await added(queue, prod) == ([], [])
    [cf], [_] = await added(queue, staging)
    assert (cf.custom_data or {})["failure"]["id"] == opening.id
    # With an environment it is that environment's deploy, even though a later one is elsewhere.
    named = event(2, "INCIDENT", at=1000, environment="prod", opening=True)
    await queue.append([named])
    [prod_cf], _ = await added(queue, prod)
    assert (prod_cf.custom_data or {})["failure"]["id"] == named.id
    await queue.close()


async def test_a_rollback_is_a_failure_of_the_deploy_before_it_once_whoever_reports_it(backend: Opener) -> None:
    queue = await opened(backend)
    bad = deploy(1, sha="bad")
    await queue.append([bad])
    rollback = deploy(2, sha="good", at=900, type_="ROLLBACK")
    await queue.append([rollback, deploy(3, sha="good", at=905, type_="ROLLBACK", source="k8s")])
    [cf], [mark] = await added(queue, bad)
    assert (cf.custom_data or {})["failure"] == {"id": rollback.id, "kind": "deploy", "type": "ROLLBACK",
                                                 "title": "deploy 2"}
    assert await added(queue, rollback) == ([], []), "never a failure of its own group"
    await queue.close()


async def test_off_when_the_window_is_zero_or_coalescing_is_off(backend: Opener) -> None:
    for settings in (DeploySettings(change_failure_window_seconds=0), DeploySettings(change_failure_window_seconds=None),
                     DeploySettings(coalesce=False)):
        queue = await opened(backend, DeployPolicy.of(settings))
        first = deploy(1, sha=str(settings), at=0)
        await queue.append([first, event(1, "ROLLOUT_FAILED", at=60 + len(str(settings)))])
        group = await queue.deploy_group(first.id)
        assert group is None or await added(queue, first) == ([], [])
        await queue.close()


async def test_replicas_appending_one_failure_at_once_link_it_once(pg_dsn: str) -> None:
    replicas = [await opened(postgres_opener(pg_dsn)) for _ in range(3)]
    first = deploy(1)
    await replicas[0].append([first])
    failure = event(1, "ROLLOUT_FAILED", at=60)
    await asyncio.gather(*(queue.append([failure]) for queue in replicas))
    [_], [_] = await added(replicas[1], first)
    for queue in replicas:
        await queue.close()
