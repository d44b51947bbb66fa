"""Every webhook fixture, signed as its system signs it, POSTed into one running bridge.

The simulated Cortex must end with exactly the expected deploys and events, every metric point
accounted for, and nothing else: ignored payloads add nothing, redeliveries add nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from typing import Any

from tests.support.webhooks import (
    FIXTURES,
    SECRET,
    Running,
    StartBridge,
    application,
    example_source,
    fixture_bytes,
    github_signature,
    render_argocd,
)

SOURCES: list[dict[str, Any]] = [
    {"name": "github", "type": "github", "secrets": [SECRET],
     "deploy_workflows": [{"workflow": "test.yml", "environment": "production"}],
     "workflow_duration_metric": "ci-workflow-duration"},
    {"name": "gitlab", "type": "gitlab", "secrets": [SECRET], "pipeline_duration_metric": "ci-pipeline-duration",
     "job_duration_metric": "ci-job-duration"},
    {"name": "jenkins", "type": "jenkins", "secrets": [SECRET], "deploy_jobs": [{"job": "asgard"}]},
    {"name": "argocd", "type": "argocd", "secrets": [SECRET]},
    {"name": "flux", "type": "flux", "secrets": [SECRET], "entity": {"template": "{involvedObject.name}"}},
    {"name": "cdevents", "type": "cloudevents", "secrets": [SECRET], "pipeline_duration_metric": "ci-pipeline-duration",
     "entity": {"static": {"mySubject123": "my-service", "myApp": "my-app", "myPipeline": "my-pipeline"}}},
    {**example_source("circleci.yaml", "circleci"), "entity": {"static": {"hello-world": "hello-world"}}},
    example_source("buildkite.yaml", "buildkite"),
    {**example_source("buildkite.yaml", "buildkite-eventbridge"), "entity": {"static": {"my-pipeline": "my-pipeline"}}},
    {**example_source("azure-devops.yaml", "azure-devops"), "entity": {"static": {"Fabrikam": "fabrikam",
                                                                                   "TEST-CI": "test-ci"}}},
]

GITHUB = [  # (event, fixture, status)
    ("deployment_status", "deployment_status.success.json", 202),
    ("deployment_status", "deployment_status.error.json", 202),
    ("deployment_status", "deployment_status.in_progress.gh-pages.json", 202),
    ("workflow_run", "workflow_run.completed.success.json", 202),
    ("workflow_run", "workflow_run.requested.json", 202),
    ("workflow_run", "workflow_run.requested.action_required.json", 202),
    ("release", "release.published.json", 202),
    ("release", "release.created.json", 202),
    ("release", "release.prereleased.json", 202),
    ("ping", "ping.json", 202),
    ("ping", "ping.with-app_id.json", 202),
    ("push", "push.json", 202),
    ("workflow_job", "workflow_job.completed.success.json", 202),
    ("check_run", "check_run.completed.failure.json", 202),
]
GITLAB = [
    ("Deployment Hook", "gitlab-docs/deployment.success.json", 202),
    ("Deployment Hook", "gitlab-go-gitlab/deployment.success.json", 202),
    ("Pipeline Hook", "gitlab-docs/pipeline.success.json", 202),
    ("Pipeline Hook", "gitlab-go-gitlab/pipeline.json", 202),
    ("Job Hook", "gitlab-go-gitlab/job.json", 202),
    ("Job Hook", "gitlab-go-gitlab/build.created.json", 202),
    ("Release Hook", "gitlab-go-gitlab/release.create.json", 202),
    ("Push Hook", "gitlab-go-gitlab/push.json", 202),
    ("Push Hook", "gitlab-docs/push.json", 202),
    ("Tag Push Hook", "gitlab-go-gitlab/tag_push.json", 202),
    ("Job Hook", "gitlab-docs/job.created.INVALID-comments-trailing-comma.json", 400),
    ("Release Hook", "gitlab-docs/release.create.INVALID-comment.json", 400),
]
CLOUDEVENTS_SPEC = ["spec.json-format.json-object-data.json", "spec.json-format.json-number-data.json",
                    "spec.json-format.json-string-data.json", "spec.json-format.xml-string-data.json",
                    "spec.json-format.binary-data_base64.json", "spec.json-format.data_base64-no-contenttype.json"]
CDEVENTS = ["service_deployed.json", "pipelinerun_started.json", "pipelinerun_finished.json",
            "incident_detected.json", "taskrun_finished.json", "artifact_published.json", "pipelinerun_queued.json"]


def flux_headers(body: bytes) -> dict[str, str]:
    # The documented request headers of the notification-controller, plus generic-hmac's signature.
    block = fixture_bytes("flux/generic-webhook.request-headers.txt").decode().splitlines()[1:]
    headers = dict(line.split(": ", 1) for line in block if ": " in line)
    for computed in ("Host", "Content-Length", "Accept-Encoding"):
        headers.pop(computed)
    return {**headers, "X-Signature": github_signature(body)}


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET}"}


async def send_everything(running: Running) -> list[tuple[str, int, int]]:
    """POST every fixture as its system would; returns (what, expected status, got status)."""
    sent: list[tuple[str, int, int]] = []

    async def post(what: str, source: str, body: bytes, headers: dict[str, str], expected: int = 202,
                   content_type: str | None = "application/json") -> None:
        status, _ = await running.post(source, body, headers, content_type)
        sent.append((what, expected, status))

    for index, (event, fixture, expected) in enumerate(GITHUB):
        body = fixture_bytes(f"github/{fixture}")
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": f"gh-{index}",
                   "X-Hub-Signature-256": github_signature(body)}
        await post(fixture, "github", body, headers, expected)
        if index == 0:  # GitHub's "Redeliver": the same delivery id again
            await post(f"{fixture} again", "github", body, headers, expected)
    for index, (event, fixture, expected) in enumerate(GITLAB):
        headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET, "Idempotency-Key": f"gl-{index}"}
        await post(fixture, "gitlab", fixture_bytes(fixture), headers, expected)
        if index == 0:
            await post(f"{fixture} again", "gitlab", fixture_bytes(fixture), headers, expected)
    for fixture in ("notification-plugin.completed.success.json", "notification-plugin.help-example.started.json"):
        await post(fixture, "jenkins", fixture_bytes(f"jenkins/{fixture}"), bearer())
    await post("argocd sync-succeeded", "argocd", render_argocd(application("application.with-operationState.yaml"),
                                                         "sync-succeeded"), bearer())
    await post("argocd degraded (no name)", "argocd",
               render_argocd(application("application.health-degraded.minimal.yaml"), "health-degraded"), bearer(), 400)
    for path in sorted((FIXTURES / "flux").glob("*.json")):
        body = path.read_bytes()
        await post(path.name, "flux", body, flux_headers(body), 400 if "INVALID" in path.name else 202)
    for fixture in CDEVENTS:
        await post(fixture, "cdevents", fixture_bytes(f"cdevents/{fixture}"), bearer())
    for fixture in CLOUDEVENTS_SPEC:
        await post(fixture, "cdevents", fixture_bytes(f"cloudevents/{fixture}"), bearer(),
                   content_type="application/cloudevents+json; charset=UTF-8")
    await post("batch", "cdevents", fixture_bytes("cloudevents/spec.json-batch.two-events.json"), bearer(),
               content_type="application/cloudevents-batch+json")
    head, _, data = fixture_bytes("cloudevents/spec.http-binary-mode.json-object-data.http.txt").decode().partition("\n\n")
    await post("binary", "cdevents", data.encode(), {**dict(h.split(": ", 1) for h in head.splitlines()), **bearer()},
               content_type=None)
    for path in sorted((FIXTURES / "circleci").glob("*.json")):
        body = path.read_bytes()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        await post(path.name, "circleci", body, {"circleci-event-type": path.name.split(".")[0],
                                                 "circleci-signature": f"v1={signature}"})
    for path in sorted((FIXTURES / "buildkite").glob("webhook.*.json")):
        body, stamp = path.read_bytes(), int(time.time())
        digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        event = json.loads(body)["event"]
        await post(path.name, "buildkite", body, {"X-Buildkite-Event": event,
                                                  "X-Buildkite-Signature": f"timestamp={stamp},signature={digest}"})
    for path in sorted((FIXTURES / "buildkite").glob("eventbridge.*.json")):
        await post(path.name, "buildkite-eventbridge", path.read_bytes(), {"X-Bridge-Token": SECRET},
                   400 if "INVALID" in path.name else 202)
    basic = "Basic " + base64.b64encode(f"azure:{SECRET}".encode()).decode()
    for path in sorted((FIXTURES / "azure-devops").glob("*.json")):
        await post(path.name, "azure-devops", path.read_bytes(), {"Authorization": basic})
    return sent


async def test_every_fixture_end_to_end(start_bridge: StartBridge) -> None:
    running = await start_bridge(*SOURCES)
    sent = await send_everything(running)
    assert [(what, got) for what, expected, got in sent if got != expected] == []
    state = await running.settled()
    assert {tag: len(items) for tag, items in state["deploys"].items()} == {
        "hello-world": 1, "octo-repo": 1, "deployment-webhooks": 1, "asgard": 1, "velero": 1, "my-service": 1,
        "webhook-service": 1, "my-pipeline": 1, "fabrikam": 1,
    }
    assert {tag: sorted(e["type"] for e in items) for tag, items in state["events"].items()} == {
        "test-repo": ["DEPLOY_FAILED"],
        "hello-world": ["RELEASE", "WORKFLOW_FAILED"],
        "example-project": ["RELEASE"],
        "webapp": ["RECONCILIATION_FAILED"],
        "my-pipeline": ["PIPELINE_FAILED"],
        "my-app": ["INCIDENT_DETECTED"],
    }
    # Every fixture's metric point predates Cortex's six-month window: each one is accounted for
    # as a dead letter ("too_old"), none stored, none lost.
    assert state["counts"]["metric_points"] == 0
    dead = await running.dead_records()
    assert {r["kind"] for r in dead} == {"metric"}
    assert Counter((r["key"], r["entity"]) for r in dead) == Counter({
        ("ci-workflow-duration", "octo-repo"): 1,
        ("ci-pipeline-duration", "gitlab-test"): 1,
        ("ci-job-duration", "release-tools"): 1,
        ("ci-pipeline-duration", "my-pipeline"): 1,
        ("ci-workflow-duration", "webhook-service"): 1,
        ("ci-workflow-duration", "hello-world"): 1,
        ("ci-job-duration", "webhook-service"): 1,
        ("ci-job-duration", "hello-world"): 1,
        ("ci-build-duration", "my-pipeline"): 1,
        ("ci-pipeline-duration", "test-ci"): 1,
    })
    assert {reason for _, reason in await running.dead_letters()} == {"too_old"}

    # Replaying every delivery (redeliveries, retries after a lost answer) changes nothing.
    replay = await send_everything(running)
    assert [(what, got) for what, expected, got in replay if got != expected] == []
    again = await running.settled()
    assert (again["deploys"], again["events"], again["counts"]) == (state["deploys"], state["events"], state["counts"])
    assert len(await running.dead_records()) == len(dead)
