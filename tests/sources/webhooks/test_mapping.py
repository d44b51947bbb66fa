"""The shipped declarative rules (config/examples) on the real CircleCI, Buildkite and Azure payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import load_settings
from bridge.queue import DurableQueue
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.registry import build_sources
from bridge.sources.webhooks.mapping import create
from tests.support.webhooks import (
    EXAMPLES,
    SECRET,
    Running,
    StartBridge,
    example_source,
    fixture_bytes,
    only,
    without_bridge_id,
)


def circleci_source() -> dict[str, Any]:
    # The GitLab-app projects carry no VCS URL to look up; they are mapped by name.
    return {**example_source("circleci.yaml", "circleci"), "entity": {"static": {"hello-world": "hello-world"}}}


async def circleci(running: Running, fixture: str) -> tuple[int, Any]:
    body = fixture_bytes(f"circleci/{fixture}")
    event = fixture.split(".")[0]
    headers = {"circleci-event-type": event, "User-Agent": "CircleCI-Webhook/1.0",
               "circleci-signature": "v1=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    return await running.post("circleci", body, headers)


async def test_circleci_deploy_workflow(start_bridge: StartBridge) -> None:
    running = await start_bridge(circleci_source())
    status, answer = await circleci(running, "workflow-completed.github-oauth.json")
    assert status == 202 and answer["accepted"] == 2
    state = await running.settled()
    assert without_bridge_id(only(state["deploys"], "webhook-service")) == {
        "title": "Deploy webhook-service (build-test-deploy #130)",
        "timestamp": "2021-09-01T22:49:34.170Z",
        "type": "DEPLOY",
        "sha": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e",
        "environment": "production",
        "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/"
               "fda08377-fe7e-46b1-8992-3a7aaecac9c3",
        "deployerName": "Author Name",
        "deployerEmail": "author.email@example.com",
        "customData": {"workflow": "build-test-deploy", "branch": "main", "pipeline": 130},
    }
    [point] = await running.dead_records()
    assert (point["key"], point["entity"], point["value"]) == ("ci-workflow-duration", "webhook-service", 30.554)


async def test_circleci_failed_workflow(start_bridge: StartBridge) -> None:
    running = await start_bridge(circleci_source())
    assert (await circleci(running, "workflow-completed.gitlab-githubapp.json"))[0] == 202
    state = await running.settled()
    assert without_bridge_id(only(state["events"], "hello-world")) == {
        "title": "Workflow build failed",
        "type": "WORKFLOW_FAILED",
        "timestamp": "2022-05-27T16:20:13.812Z",
        "url": "https://app.circleci.com/pipelines/circleci/DdaVtNusHqi24D4YT3X4eu/6EkDPZoN4ZdMKKZtBkRodt/1/"
               "workflows/c2006ece-778d-49fc-9e6e-b9965f72bee9",
    }
    assert [(p["key"], p["value"]) for p in await running.dead_records()] == [("ci-workflow-duration", 6.181)]


@pytest.mark.parametrize(("fixture", "entity", "seconds"), [
    ("job-completed.github-oauth.json", "webhook-service", 5.329),
    ("job-completed.gitlab-githubapp.json", "hello-world", 22.547),
])
async def test_circleci_job_durations(start_bridge: StartBridge, fixture: str, entity: str, seconds: float) -> None:
    running = await start_bridge(circleci_source())
    assert (await circleci(running, fixture))[0] == 202
    state = await running.settled()
    assert state["counts"] == {"deploys": 0, "events": 0, "metric_points": 0, "custom_data": 0}
    [point] = await running.dead_records()
    assert (point["key"], point["entity"], point["value"]) == ("ci-job-duration", entity, seconds)


async def test_circleci_redelivery_is_deduplicated_by_event_id(start_bridge: StartBridge) -> None:
    running = await start_bridge(circleci_source())
    await circleci(running, "workflow-completed.github-oauth.json")
    assert (await circleci(running, "workflow-completed.github-oauth.json"))[1]["duplicate_delivery"] is True


def buildkite_headers(body: bytes, event: str, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Buildkite-Event": event, "X-Buildkite-Signature": f"timestamp={stamp},signature={digest}"}


@pytest.mark.parametrize(("fixture", "event"), [
    ("webhook.ping.json", "ping"),
    ("webhook.build.finished.blocked.elided.json", "build.finished"),
    ("webhook.build.finished.trigger-step.elided.json", "build.finished"),
])
async def test_buildkite_webhooks_without_build_details_are_ignored(start_bridge: StartBridge, fixture: str,
                                                                     event: str) -> None:
    running = await start_bridge(example_source("buildkite.yaml", "buildkite"))
    body = fixture_bytes(f"buildkite/{fixture}")
    assert await running.post("buildkite", body, buildkite_headers(body, event)) == (
        202, {"ignored": "no-rule-matched: no rule matches this payload"})


async def test_buildkite_signature_with_stale_timestamp_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge(example_source("buildkite.yaml", "buildkite"))
    body = fixture_bytes("buildkite/webhook.ping.json")
    status, answer = await running.post("buildkite", body, buildkite_headers(body, "ping", int(time.time()) - 3600))
    assert (status, answer) == (401, {"error": "authentication failed: X-Buildkite-Signature timestamp is "
                                               "outside the accepted window"})


def eventbridge_source() -> dict[str, Any]:
    return {**example_source("buildkite.yaml", "buildkite-eventbridge"),
            "entity": {"static": {"my-pipeline": "my-pipeline"}}}


async def test_buildkite_eventbridge_finished_build_is_a_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(eventbridge_source())
    body = fixture_bytes("buildkite/eventbridge.build-finished.json")
    status, answer = await running.post("buildkite-eventbridge", body, {"X-Bridge-Token": SECRET})
    assert status == 202 and answer["accepted"] == 2
    assert without_bridge_id(only((await running.settled())["deploys"], "my-pipeline")) == {
        "title": "Deploy my-pipeline #123456",
        "timestamp": "2019-08-11T06:01:35.000Z",
        "type": "DEPLOY",
        "sha": "5a741616cdf07dc87c5adafe784321eeeb639e33",
        "environment": "production",
        "customData": {"message": "Merge pull request #456 from my-org/chore/update-deps", "source": "webhook"},
    }
    [point] = await running.dead_records()
    assert (point["key"], point["timestamp"], point["value"]) == ("ci-build-duration", "2019-08-11T06:01:35.000Z", 19.0)


@pytest.mark.parametrize("fixture", ["eventbridge.build-blocked.json", "eventbridge.build-failing.json",
                                     "eventbridge.build-started.json"])
async def test_buildkite_eventbridge_unfinished_or_blocked_builds_are_ignored(start_bridge: StartBridge,
                                                                             fixture: str) -> None:
    running = await start_bridge(eventbridge_source())
    body = fixture_bytes(f"buildkite/{fixture}")
    assert (await running.post("buildkite-eventbridge", body, {"X-Bridge-Token": SECRET}))[0] == 202
    assert (await running.settled())["counts"]["deploys"] == 0
    assert await running.queued_ids() == set()


async def test_buildkite_eventbridge_invalid_escape_is_rejected(start_bridge: StartBridge) -> None:
    running = await start_bridge(eventbridge_source())
    body = fixture_bytes("buildkite/eventbridge.job-finished.INVALID-escape.json")
    status, answer = await running.post("buildkite-eventbridge", body, {"X-Bridge-Token": SECRET})
    assert status == 400 and answer["error"].startswith("body is not valid JSON")


def azure_source() -> dict[str, Any]:
    return {**example_source("azure-devops.yaml", "azure-devops"),
            "entity": {"static": {"TEST-CI": "test-ci", "Fabrikam": "fabrikam"}}}


def azure_auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"azure:{SECRET}".encode()).decode()}


async def test_azure_release_deployment_is_a_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(azure_source())
    body = fixture_bytes("azure-devops/ms.vss-release.deployment-completed-event.json")
    assert (await running.post("azure-devops", body, azure_auth()))[0] == 202
    assert without_bridge_id(only((await running.settled())["deploys"], "fabrikam")) == {
        "title": "Deploy Release-1 to Dev",
        "timestamp": "2016-09-19T13:03:28.534Z",
        "type": "DEPLOY",
        "environment": "Dev",
        "url": "http://fabfiber.vsrm.visualstudio.com/DefaultCollection/Fabrikam-Fiber-Git/_apis/Release/releases/1",
        "deployerName": "Chuck Reinhart",
        "customData": {"release": "Release-1", "project": "Fabrikam"},
    }


async def test_azure_pipeline_run_is_a_duration_point(start_bridge: StartBridge) -> None:
    running = await start_bridge(azure_source())
    body = fixture_bytes("azure-devops/ms.vss-pipelines.run-state-changed-event.json")
    status, answer = await running.post("azure-devops", body, azure_auth())
    assert status == 202 and answer["accepted"] == 1
    await running.settled()
    [point] = await running.dead_records()
    assert (point["key"], point["entity"], point["timestamp"], point["value"]) == (
        "ci-pipeline-duration", "test-ci", "2019-12-13T04:46:13.613Z", 0.0)


@pytest.mark.parametrize(("change", "message"), [
    ({"rules": [{"name": "r", "when": "body.[", "kind": "event", "id": ["body.id"]}]}, "rules.0.when"),
    ({"rules": [{"name": "r", "when": "`true`", "kind": "metric", "id": ["body.id"], "fields": {"title": "a"}}]},
     "metric has no field 'title'"),
    ({"auth": None}, "auth: set `auth.hmac` or `auth.token`"),
    ({"auth": {"hmac": {"header": "x"}, "token": {"header": "y"}}}, "set exactly one of `hmac` and `token`"),
])
async def test_invalid_rules_are_configuration_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    config = {**example_source("circleci.yaml", "circleci"), **change}
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        with pytest.raises(SourceConfigError, match="source 'circleci': ") as raised:
            create(config, SourceContext(settings=load_settings(None, ingest={"allow_unauthenticated": True}), queue=queue))
        assert message in str(raised.value)
    finally:
        await queue.close()


@pytest.mark.parametrize("example", ["bridge.yaml", "circleci.yaml", "buildkite.yaml", "azure-devops.yaml"])
async def test_example_configurations_build(tmp_path: Path, example: str) -> None:
    settings = load_settings(EXAMPLES / example) if example == "bridge.yaml" else load_settings(
        None, ingest={"allow_unauthenticated": True}, sources=yaml.safe_load((EXAMPLES / example).read_text())["sources"])
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        built = build_sources(settings.sources, SourceContext(settings=settings, queue=queue))
    finally:
        await queue.close()
    assert [s.name for s in built] == [s["name"] for s in settings.sources] and built
