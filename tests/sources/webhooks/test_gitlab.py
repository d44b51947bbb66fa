"""GitLab webhooks over HTTP into a running bridge, checked against what Cortex stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    derived,
    fixture_bytes,
    only,
    records_for,
    without_bridge_id,
)

GITLAB: dict[str, Any] = {
    "name": "gitlab",
    "type": "gitlab",
    "secrets": [SECRET],
    "pipeline_duration_metric": "ci-pipeline-duration",
    "job_duration_metric": "ci-job-duration",
}


def hook_headers(event: str, idempotency_key: str | None = None, token: str = SECRET) -> dict[str, str]:
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
            "X-Gitlab-Instance": "https://gitlab.example.com", "User-Agent": "GitLab/17.1.0-pre"}


async def deliver(running: Running, event: str, body: bytes, key: str | None = None) -> tuple[int, Any]:
    return await running.post("gitlab", body, hook_headers(event, key))


@pytest.mark.parametrize(("fixture", "deployer", "custom"), [
    ("gitlab-docs/deployment.success.json", "Administrator", {"tier": "staging"}),
    ("gitlab-go-gitlab/deployment.success.json", "User1", {"ref": "1.0.0"}),
])
async def test_successful_deployment_is_a_deploy(start_bridge: StartBridge, fixture: str, deployer: str,
                                                 custom: dict[str, str]) -> None:
    running = await start_bridge(GITLAB)
    assert (await deliver(running, "Deployment Hook", fixture_bytes(fixture)))[0] == 202
    state = await running.settled()
    assert without_bridge_id(only(state["deploys"], "deployment-webhooks")) == {
        "title": "Add new file",
        "timestamp": "2021-04-28T19:50:00.000Z",
        "type": "DEPLOY",
        "sha": "279484c09fbe69ededfced8c1bb6e6d24616b468",
        "environment": "staging",
        "url": "http://10.126.0.2:3000/root/test-deployment-webhooks/-/jobs/796",
        "deployerName": deployer,
        "deployerEmail": "admin@example.com",
        "customData": {"project": "root/test-deployment-webhooks", "deploymentId": 15, **custom},
    }


async def test_failed_deployment_is_a_failure_event(start_bridge: StartBridge) -> None:
    # The docs' real Deployment Hook, as GitLab sends it for the same deployment when it fails.
    body = derived("gitlab-docs/deployment.success.json", lambda d: d.update(status="failed"))
    running = await start_bridge(GITLAB)
    assert (await deliver(running, "Deployment Hook", body))[0] == 202
    state = await running.settled()
    event = without_bridge_id(only(state["events"], "deployment-webhooks"))
    assert event == {
        "title": "Deploy of 279484c0 to staging failed",
        "type": "DEPLOY_FAILED",
        "timestamp": "2021-04-28T19:50:00.000Z",
        "url": "http://10.126.0.2:3000/root/test-deployment-webhooks/-/jobs/796",
        "customData": {"project": "root/test-deployment-webhooks", "deploymentId": 15, "tier": "staging",
                       "sha": "279484c09fbe69ededfced8c1bb6e6d24616b468", "environment": "staging"},
    }
    assert state["deploys"] == {}


@pytest.mark.parametrize("fixture", ["gitlab-docs/pipeline.success.json", "gitlab-go-gitlab/pipeline.json"])
async def test_successful_pipeline_is_a_duration_point(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(GITLAB)
    body = fixture_bytes(fixture)
    status, answer = await deliver(running, "Pipeline Hook", body)
    assert status == 202 and answer["accepted"] == 1
    records = await records_for(running, "gitlab", body, {"X-Gitlab-Event": "Pipeline Hook"})
    assert [(r["kind"], r["entity"], r["key"], r["timestamp"], r["value"]) for r in records] == [
        ("metric", "gitlab-test", "ci-pipeline-duration", "2016-08-12T15:26:29.000Z", 63.0)]
    await running.settled()
    # 2016 is beyond Cortex's six-month window for metric points: kept as a dead letter.
    assert await running.dead_letters() == [("metric", "too_old")]


async def test_failed_pipeline_is_an_event(start_bridge: StartBridge) -> None:
    body = derived("gitlab-docs/pipeline.success.json", lambda d: d["object_attributes"].update(status="failed"))
    running = await start_bridge({**GITLAB, "pipeline_duration_metric": None})
    assert (await deliver(running, "Pipeline Hook", body))[0] == 202
    event = without_bridge_id(only((await running.settled())["events"], "gitlab-test"))
    assert event == {
        "title": "Pipeline #3 failed on master",
        "type": "PIPELINE_FAILED",
        "timestamp": "2016-08-12T15:26:29.000Z",
        "url": "http://example.com/gitlab-org/gitlab-test/-/pipelines/31",
        "customData": {"project": "gitlab-org/gitlab-test", "pipelineId": 31,
                       "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "ref": "master",
                       "source": "merge_request_event"},
    }


async def test_finished_job_is_a_duration_point(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITLAB)
    body = fixture_bytes("gitlab-go-gitlab/job.json")
    assert (await deliver(running, "Job Hook", body))[0] == 202
    records = await records_for(running, "gitlab", body, {"X-Gitlab-Event": "Job Hook"})
    assert [(r["kind"], r["entity"], r["key"], r["timestamp"], r["value"]) for r in records] == [
        ("metric", "release-tools", "ci-job-duration", "2023-01-10T13:50:54.000Z", 49.503592)]


async def test_failed_job_is_an_event(start_bridge: StartBridge) -> None:
    body = derived("gitlab-go-gitlab/job.json", lambda d: d.update(build_status="failed"))
    running = await start_bridge({**GITLAB, "job_duration_metric": None})
    assert (await deliver(running, "Job Hook", body))[0] == 202
    event = without_bridge_id(only((await running.settled())["events"], "release-tools"))
    assert event == {
        "title": "Job auto_deploy:start failed (coordinated:tag)",
        "type": "JOB_FAILED",
        "timestamp": "2023-01-10T13:50:54.000Z",
        "description": "unknown_failure",
        "customData": {"project": "jsmithy2/release-tools-fake", "jobId": 3580121225, "pipelineId": 743121198,
                       "sha": "95d49d1efbd941908580e79d65e4b5ecaf4a8305", "ref": "main"},
    }


async def test_release_is_an_event(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITLAB)
    assert (await deliver(running, "Release Hook", fixture_bytes("gitlab-go-gitlab/release.create.json")))[0] == 202
    event = without_bridge_id(only((await running.settled())["events"], "example-project"))
    assert event == {
        "title": "Released 1.0.0",
        "type": "RELEASE",
        "timestamp": "2021-02-25T21:23:34.000Z",
        "description": "Release!",
        "url": "http://example.com/exm-namespace/example-project/-/releases/1.0.0",
        "customData": {"project": "exm-namespace/example-project", "tag": "1.0.0",
                       "sha": "2626dbdb936782b5c54816b1c6d45b1279303c6d"},
    }


@pytest.mark.parametrize(("event", "fixture", "reason"), [
    ("Job Hook", "gitlab-go-gitlab/build.created.json", "state-not-mapped: job created"),
    ("Push Hook", "gitlab-go-gitlab/push.json", "event-not-mapped: Push Hook"),
    ("Push Hook", "gitlab-docs/push.json", "event-not-mapped: Push Hook"),
    ("Tag Push Hook", "gitlab-go-gitlab/tag_push.json", "event-not-mapped: Tag Push Hook"),
])
async def test_unmapped_hooks_and_states_are_ignored(start_bridge: StartBridge, event: str, fixture: str,
                                                     reason: str) -> None:
    running = await start_bridge(GITLAB)
    assert await deliver(running, event, fixture_bytes(fixture)) == (202, {"ignored": reason})


@pytest.mark.parametrize(("event", "fixture"), [
    ("Job Hook", "gitlab-docs/job.created.INVALID-comments-trailing-comma.json"),
    ("Release Hook", "gitlab-docs/release.create.INVALID-comment.json"),
])
async def test_documentation_samples_with_comments_are_rejected(start_bridge: StartBridge, event: str,
                                                                fixture: str) -> None:
    running = await start_bridge(GITLAB)
    status, answer = await deliver(running, event, fixture_bytes(fixture))
    assert status == 400 and answer["error"].startswith("body is not valid JSON")
    assert await running.queued_ids() == set()


async def test_redelivery_with_one_idempotency_key_stores_one_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITLAB)
    body = fixture_bytes("gitlab-docs/deployment.success.json")
    key = "8d4ad2a1-a6d3-4a1e-9e5f-2b7c1c3a5f10"
    assert (await deliver(running, "Deployment Hook", body, key))[1].get("duplicate_delivery") is None
    assert (await deliver(running, "Deployment Hook", body, key))[1]["duplicate_delivery"] is True
    assert (await running.settled())["counts"]["deploys"] == 1


async def test_wrong_token_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITLAB)
    body = fixture_bytes("gitlab-docs/deployment.success.json")
    status, answer = await running.post("gitlab", body, hook_headers("Deployment Hook", token="not the token"))
    assert (status, answer) == (401, {"error": "authentication failed: X-Gitlab-Token does not match"})
    assert await running.queued_ids() == set()
