"""Every real GitHub delivery in the fixtures, as a repository hook sending "everything" sends it.

A GitHub hook is often set to send every event; GitHub marks a hook failing after refused
deliveries and never redelivers them on its own. Each delivery must be answered 202: records
for the events the bridge maps (durable before the answer), ``ignored`` with its reason for the
rest — never a 4xx for a well-signed delivery, never a 5xx.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources.webhooks.test_github import GITHUB, deliver
from tests.support.paths import FIXTURES
from tests.support.webhooks import StartBridge, fixture_bytes

DELIVERIES = sorted((FIXTURES / "webhooks" / "github").glob("*.json"))

#: fixture -> records accepted, or the kind of reason it is ignored for (before the ``:``).
EXPECTED: dict[str, int | str] = {
    "check_run.completed.failure": "event-not-mapped", "check_run.completed.success": "event-not-mapped",
    "check_run.created": "event-not-mapped", "check_suite.completed": "event-not-mapped",
    # a deployment created is not deployed yet: its deployment_status says when it is
    "deployment.created": "event-not-mapped", "deployment.created.gh-pages": "event-not-mapped",
    "deployment_review.requested": "event-not-mapped",
    "deployment_status.error": 1, "deployment_status.in_progress.gh-pages": "state-not-mapped",
    "deployment_status.success": 1,
    "ping": "ping", "ping.with-app_id": "ping",
    "push": "lineage", "push.new-branch": "lineage", "registry_package.published.docker": "lineage",
    "release.created": "action-not-mapped", "release.prereleased": "action-not-mapped", "release.published": 1,
    "repository_dispatch": "event-not-mapped", "status": "event-not-mapped", "workflow_dispatch": "event-not-mapped",
    # jobs: the run they belong to is reported (workflow_run), not each job
    "workflow_job.completed.success": "event-not-mapped", "workflow_job.in_progress": "event-not-mapped",
    "workflow_job.queued": "event-not-mapped", "workflow_job.queued.with-deployment": "event-not-mapped",
    "workflow_job.waiting": "event-not-mapped",
    "workflow_run.completed.success": 2,  # the deploy of a deploy workflow, and its duration point
    "workflow_run.requested.action_required": "action-not-mapped", "workflow_run.requested": "action-not-mapped",
}


def name_of(path: Path) -> str:
    return path.name.removesuffix(".json")


def test_every_fixture_has_an_expected_answer() -> None:
    assert {name_of(p) for p in DELIVERIES} == set(EXPECTED)


@pytest.mark.parametrize("path", DELIVERIES, ids=name_of)
async def test_every_delivery_is_answered_202_with_its_records_or_why_it_is_ignored(
        start_bridge: StartBridge, path: Path) -> None:
    body = fixture_bytes(f"github/{path.name}")
    running = await start_bridge(GITHUB)
    status, answer = await deliver(running, path.name.split(".", 1)[0], body)
    assert status == 202, answer
    expected = EXPECTED[name_of(path)]
    if isinstance(expected, str):
        assert set(answer) == {"ignored"} and answer["ignored"].split(":", 1)[0] == expected, answer
        assert await running.queued_ids() == set()
    else:
        assert answer["accepted"] == expected == len(answer["ids"]), answer
        assert await running.queued_ids() == set(answer["ids"])  # durable before the answer
