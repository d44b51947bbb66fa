"""Jenkins Notification plugin deliveries over HTTP into a running bridge."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    derived,
    fixture_bytes,
    only,
    without_bridge_id,
)

JENKINS: dict[str, Any] = {
    "name": "jenkins",
    "type": "jenkins",
    "secrets": [SECRET],
    "deploy_jobs": [{"job": "asg*", "environment": "production"}],
    "build_duration_metric": "ci-build-duration",
}


def basic(password: str = SECRET) -> dict[str, str]:
    # What the plugin sends for a URL with credentials (https://bridge:<token>@host/...).
    return {"Authorization": "Basic " + base64.b64encode(f"bridge:{password}".encode()).decode()}


async def deliver(running: Running, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return await running.post("jenkins", body, headers or basic())


async def test_completed_deploy_job_is_a_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(JENKINS)
    before = datetime.now(UTC)
    assert (await deliver(running, fixture_bytes("jenkins/notification-plugin.completed.success.json")))[0] == 202
    after = datetime.now(UTC)
    deploy = without_bridge_id(only((await running.settled())["deploys"], "asgard"))
    # The plugin's JSON has no time of its own here: the deploy happened when it was delivered.
    stamp = datetime.fromisoformat(deploy.pop("timestamp"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamp <= after
    assert deploy == {
        "title": "Deploy asgard #18",
        "type": "DEPLOY",
        "sha": "c6d86dc654b12425e706bcf951adfe5a8627a517",
        "environment": "production",
        "url": "http://localhost:8080/job/asgard/18/",
        "customData": {"job": "asgard", "build": 18, "status": "SUCCESS", "branch": "origin/master"},
    }


async def test_completed_and_finalized_phases_store_one_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(JENKINS)
    completed = fixture_bytes("jenkins/notification-plugin.completed.success.json")
    finalized = derived("jenkins/notification-plugin.completed.success.json",
                        lambda d: d["build"].update(phase="FINALIZED"))
    assert (await deliver(running, completed))[0] == (await deliver(running, finalized))[0] == 202
    assert (await running.settled())["counts"]["deploys"] == 1


async def test_started_phase_is_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge(JENKINS)
    body = fixture_bytes("jenkins/notification-plugin.help-example.started.json")
    assert await deliver(running, body) == (202, {"ignored": "phase-not-mapped: STARTED"})


@pytest.mark.parametrize(("deploy_jobs", "event_type", "title"), [
    ([{"job": "asgard"}], "DEPLOY_FAILED", "asgard #18 failed"),
    ([], "BUILD_FAILED", "asgard #18 failed"),
])
async def test_failed_build_is_an_event(start_bridge: StartBridge, deploy_jobs: list[dict[str, str]],
                                        event_type: str, title: str) -> None:
    body = derived("jenkins/notification-plugin.completed.success.json", lambda d: d["build"].update(status="FAILURE"))
    running = await start_bridge({**JENKINS, "deploy_jobs": deploy_jobs, "build_duration_metric": None})
    assert (await deliver(running, body))[0] == 202
    state = await running.settled()
    event = only(state["events"], "asgard")
    assert (event["type"], event["title"], event["customData"]["status"]) == (event_type, title, "FAILURE")
    assert state["deploys"] == {}


async def test_build_duration_is_a_metric_point(start_bridge: StartBridge) -> None:
    # Recent plugin versions add build.timestamp (start, epoch ms) and build.duration (ms); the
    # documented payload predates them, so they are added (a start a minute ago, 42.5 s long).
    started_ms = int(time.time() * 1000) - 60_000
    body = derived("jenkins/notification-plugin.completed.success.json",
                   lambda d: d["build"].update(timestamp=started_ms, duration=42_500))
    running = await start_bridge(JENKINS)
    assert (await deliver(running, body))[0] == 202
    state = await running.settled()
    finished = datetime.fromtimestamp((started_ms + 42_500) / 1000, UTC)
    expected = finished.strftime("%Y-%m-%dT%H:%M:%S.") + f"{finished.microsecond // 1000:03d}Z"
    assert state["metrics"]["ci-build-duration"]["asgard"] == [{"timestamp": expected, "value": 42.5}]
    assert only(state["deploys"], "asgard")["timestamp"] == expected


async def test_bearer_token_is_accepted_and_wrong_basic_password_is_not(start_bridge: StartBridge) -> None:
    running = await start_bridge(JENKINS)
    body = fixture_bytes("jenkins/notification-plugin.completed.success.json")
    assert (await deliver(running, body, {"Authorization": f"Bearer {SECRET}"}))[0] == 202
    status, answer = await deliver(running, body, basic("guess"))
    assert (status, answer) == (401, {"error": "authentication failed: Authorization does not match"})
