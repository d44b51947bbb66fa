"""GitHub webhooks over HTTP into a running bridge, checked against what Cortex stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bridge import metrics
from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    derived,
    fixture_bytes,
    fixture_json,
    github_signature,
    only,
    records_for,
    without_bridge_id,
)

GITHUB: dict[str, Any] = {
    "name": "github",
    "type": "github",
    "secrets": [SECRET],
    "deploy_workflows": [{"workflow": "test.yml", "environment": "production"}],
    "workflow_duration_metric": "ci-workflow-duration",
}


async def deliver(running: Running, event: str, body: bytes, delivery: str | None = None) -> tuple[int, Any]:
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": github_signature(body),
        "User-Agent": "GitHub-Hookshot/044aadd",
    }
    return await running.post("github", body, headers)


async def test_deployment_status_success_is_one_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    status, answer = await deliver(running, "deployment_status", fixture_bytes("github/deployment_status.success.json"))
    assert status == 202 and answer["accepted"] == 1
    state = await running.settled()
    assert without_bridge_id(only(state["deploys"], "hello-world")) == {
        "title": "Deploy f95f852 to production",
        "timestamp": "2019-05-15T15:20:55.000Z",
        "type": "DEPLOY",
        "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        "environment": "production",
        "url": "https://github.com/Codertocat/Hello-World/deployments",
        "deployerName": "Codertocat",
        "customData": {"repository": "Codertocat/Hello-World", "deploymentId": 145988746, "ref": "master",
                       "task": "deploy"},
    }
    assert state["counts"] == {"deploys": 1, "events": 0, "metric_points": 0, "custom_data": 0}


async def test_deployment_status_error_is_a_failure_event(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    status, _ = await deliver(running, "deployment_status", fixture_bytes("github/deployment_status.error.json"))
    assert status == 202
    state = await running.settled()
    assert without_bridge_id(only(state["events"], "test-repo")) == {
        "title": "Deploy of c308eeb to production errored",
        "type": "DEPLOY_FAILED",
        "timestamp": "2026-02-07T20:00:54.000Z",
        "url": "https://github.com/Pritesh-30/test-repo/deployments",
        "customData": {"repository": "Pritesh-30/test-repo", "deploymentId": 3792439815, "ref": "feature",
                       "task": "deploy", "state": "error", "sha": "c308eeb1271af1f4d072cf79e2b4681f2eb88fbb",
                       "environment": "production"},
    }
    assert state["deploys"] == {}


async def test_deployment_status_failure_is_a_failure_event(start_bridge: StartBridge) -> None:
    # No public capture has state "failure"; the real "error" delivery with that one state changed.
    body = derived("github/deployment_status.error.json", lambda d: d["deployment_status"].update(state="failure"))
    running = await start_bridge(GITHUB)
    assert (await deliver(running, "deployment_status", body))[0] == 202
    event = only((await running.settled())["events"], "test-repo")
    assert (event["type"], event["title"]) == ("DEPLOY_FAILED", "Deploy of c308eeb to production failed")


async def test_deployment_status_in_progress_is_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    before = metrics.sample("cortex_bridge_inputs_ignored_total", {"source": "github", "reason": "state-not-mapped"})
    status, answer = await deliver(running, "deployment_status",
                                   fixture_bytes("github/deployment_status.in_progress.gh-pages.json"))
    assert (status, answer) == (202, {"ignored": "state-not-mapped: deployment_status in_progress"})
    after = metrics.sample("cortex_bridge_inputs_ignored_total", {"source": "github", "reason": "state-not-mapped"})
    assert after == before + 1
    assert (await running.settled())["counts"]["deploys"] == 0


async def test_deploy_workflow_run_is_a_deploy_and_a_duration(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes("github/workflow_run.completed.success.json")
    status, answer = await deliver(running, "workflow_run", body)
    assert status == 202 and answer["accepted"] == 2
    state = await running.settled()
    assert without_bridge_id(only(state["deploys"], "octo-repo")) == {
        "title": "Deploy 3484a3f to production (test #163)",
        "timestamp": "2020-10-05T16:33:49.000Z",
        "type": "DEPLOY",
        "sha": "3484a3fb816e0859fd6e1cea078d76385ff50625",
        "environment": "production",
        "url": "https://github.com/octo-org/octo-repo/actions/runs/289782451",
        "deployerName": "Codertocat",
        "customData": {"repository": "octo-org/octo-repo", "workflow": "test", "workflowRunId": 289782451,
                       "runAttempt": 1, "ref": "master"},
    }
    # Cortex keeps no metric point older than six months: the sender keeps this 2020 point as a
    # dead letter instead of sending it to be discarded.
    assert await running.dead_letters() == [("metric", "too_old")]
    metric = [r for r in await records_for(running, "github", body, {"X-GitHub-Event": "workflow_run"})
              if r["kind"] == "metric"]
    assert [(m["entity"], m["key"], m["timestamp"], m["value"]) for m in metric] == [
        ("octo-repo", "ci-workflow-duration", "2020-10-05T16:33:49.000Z", 0.0)]


async def test_failed_deploy_workflow_run_is_a_failure_event(start_bridge: StartBridge) -> None:
    # octokit has no failed workflow_run capture; the real completed run with conclusion "failure".
    body = derived("github/workflow_run.completed.success.json",
                   lambda d: d["workflow_run"].update(conclusion="failure"))
    running = await start_bridge({**GITHUB, "workflow_duration_metric": None})
    assert (await deliver(running, "workflow_run", body))[0] == 202
    state = await running.settled()
    event = without_bridge_id(only(state["events"], "octo-repo"))
    assert event["type"] == "DEPLOY_FAILED"
    assert event["title"] == "Deploy of 3484a3f to production failed (test #163)"
    assert event["timestamp"] == "2020-10-05T16:33:49.000Z"
    assert event["customData"]["conclusion"] == "failure"
    assert state["deploys"] == {}


async def test_other_workflows_without_duration_metric_are_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "deploy_workflows": [], "workflow_duration_metric": None})
    status, answer = await deliver(running, "workflow_run", fixture_bytes("github/workflow_run.completed.success.json"))
    assert (status, answer) == (202, {"ignored": "workflow-not-mapped: workflow 'test' is not a deploy workflow"})


@pytest.mark.parametrize("fixture", ["workflow_run.requested.json", "workflow_run.requested.action_required.json"])
async def test_workflow_runs_not_completed_are_ignored(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(GITHUB)
    status, answer = await deliver(running, "workflow_run", fixture_bytes(f"github/{fixture}"))
    assert (status, answer) == (202, {"ignored": "action-not-mapped: workflow_run requested"})


async def test_release_published_is_an_event(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    assert (await deliver(running, "release", fixture_bytes("github/release.published.json")))[0] == 202
    state = await running.settled()
    assert without_bridge_id(only(state["events"], "hello-world")) == {
        "title": "Released 0.0.1",
        "type": "RELEASE",
        "timestamp": "2019-05-15T15:20:53.000Z",
        "url": "https://github.com/Codertocat/Hello-World/releases/tag/0.0.1",
        "customData": {"repository": "Codertocat/Hello-World", "tag": "0.0.1", "prerelease": False,
                       "targetCommitish": "master"},
    }


@pytest.mark.parametrize(("fixture", "reason"), [
    ("release.created.json", "action-not-mapped: release created"),
    ("release.prereleased.json", "action-not-mapped: release prereleased"),
])
async def test_release_actions_other_than_published_are_ignored(start_bridge: StartBridge, fixture: str,
                                                                reason: str) -> None:
    running = await start_bridge(GITHUB)
    assert await deliver(running, "release", fixture_bytes(f"github/{fixture}")) == (202, {"ignored": reason})


@pytest.mark.parametrize("fixture", ["ping.json", "ping.with-app_id.json"])
async def test_ping_is_acknowledged(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(GITHUB)
    assert await deliver(running, "ping", fixture_bytes(f"github/{fixture}")) == (
        202, {"ignored": "ping: webhook is configured"})


@pytest.mark.parametrize(("event", "fixture"), [
    ("workflow_job", "workflow_job.completed.success.json"),
    ("check_run", "check_run.completed.failure.json"),
])
async def test_unmapped_events_are_ignored_with_a_metric(start_bridge: StartBridge, event: str, fixture: str) -> None:
    running = await start_bridge(GITHUB)
    labels = {"source": "github", "reason": "event-not-mapped"}
    before = metrics.sample("cortex_bridge_inputs_ignored_total", labels)
    assert await deliver(running, event, fixture_bytes(f"github/{fixture}")) == (
        202, {"ignored": f"event-not-mapped: {event}"})
    assert metrics.sample("cortex_bridge_inputs_ignored_total", labels) == before + 1


async def test_rollback_rule_marks_the_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "rollback_when": ["deployment.task == 'deploy' && deployment.ref == 'master'"]})
    await deliver(running, "deployment_status", fixture_bytes("github/deployment_status.success.json"))
    assert only((await running.settled())["deploys"], "hello-world")["type"] == "ROLLBACK"


def _run_pair() -> tuple[bytes, bytes]:
    # GitHub sends, for one run of a deploy workflow, a workflow_run "completed" and a
    # deployment_status for each deployment the run's jobs created; the status carries the run.
    # No public capture of such a pair exists, so it is derived from real payloads: the gh-pages
    # deployment_status (which carries its workflow_run) reaching "success", and the real
    # workflow_run.completed describing that same run (repository, id, attempt, workflow name).
    gh_pages = fixture_json("github/deployment_status.in_progress.gh-pages.json")
    status = derived("github/deployment_status.in_progress.gh-pages.json",
                     lambda d: d["deployment_status"].update(state="success"))

    def same_run(document: dict[str, Any]) -> None:
        document["repository"] = gh_pages["repository"]
        document["workflow_run"].update(id=gh_pages["workflow_run"]["id"],
                                        run_attempt=gh_pages["workflow_run"]["run_attempt"])
        document["workflow"]["name"] = gh_pages["workflow_run"]["name"]

    return status, derived("github/workflow_run.completed.success.json", same_run)


@pytest.mark.parametrize("status_first", [True, False])
async def test_workflow_run_and_deployment_status_make_one_deploy(start_bridge: StartBridge,
                                                                  status_first: bool) -> None:
    config = {**GITHUB, "workflow_duration_metric": None,
              "deploy_workflows": [{"workflow": "pages build and deployment", "environment": "github-pages"}]}
    running = await start_bridge(config)
    status_body, run_body = _run_pair()
    order = [("deployment_status", status_body), ("workflow_run", run_body)]
    for event, body in order if status_first else reversed(order):
        code, answer = await deliver(running, event, body)
        assert code == 202 and answer["accepted"] == 1
    deploy = only((await running.settled())["deploys"], "hello-world")
    assert deploy["environment"] == "github-pages"
    first = "deployment_status" if status_first else "workflow_run"
    assert deploy["title"] == ("Deploy f95f852 to github-pages" if first == "deployment_status"
                               else "Deploy 3484a3f to github-pages (pages build and deployment #163)")


async def test_redelivery_of_one_delivery_id_stores_one_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes("github/deployment_status.success.json")
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    first = await deliver(running, "deployment_status", body, delivery)
    second = await deliver(running, "deployment_status", body, delivery)
    assert first[0] == second[0] == 202
    assert "duplicate_delivery" not in first[1] and second[1]["duplicate_delivery"] is True
    # A replay under a new delivery id maps to the same record id and is stored once too.
    assert (await deliver(running, "deployment_status", body))[0] == 202
    assert (await running.settled())["counts"]["deploys"] == 1


async def test_two_github_sources_with_their_own_secrets(start_bridge: StartBridge) -> None:
    other = {**GITHUB, "name": "github-other-org", "secrets": ["another org's secret"]}
    running = await start_bridge(GITHUB, other)
    body = fixture_bytes("github/deployment_status.success.json")
    headers = {"X-GitHub-Event": "deployment_status", "X-GitHub-Delivery": "d-1",
               "X-Hub-Signature-256": github_signature(body, "another org's secret")}
    assert (await running.post("github-other-org", body, headers))[0] == 202
    assert (await running.post("github", body, headers))[0] == 401
