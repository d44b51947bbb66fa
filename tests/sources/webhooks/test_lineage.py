"""Lineage over HTTP on real payloads: CI tells the bridge which commit an image holds and when a
commit was made; Argo CD deploys of that image get the sha; lead time is stored once per deploy."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from bridge.records import record_id
from bridge.sources.lineage import Lineage, LineageSettings
from tests.support.queue_file import stored_rows
from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    application,
    fixture_bytes,
    fixture_json,
    github_signature,
    only,
    records_for,
    render_argocd,
)

PACKAGE_SHA = "6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
#: The image the real registry_package payload published, as a pod spec pins it.
PACKAGE_IMAGE = "ghcr.io/codertocat/hello-world@sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
RUN = fixture_json("github/workflow_run.completed.success.json")["workflow_run"]
LEAD = {"lead_time_metric": "lead-time"}
GITHUB: dict[str, Any] = {"name": "github", "type": "github", "secrets": [SECRET], "lineage": LEAD,
                          "deploy_workflows": [{"workflow": "test.yml", "environment": "production"}]}
ARGOCD: dict[str, Any] = {"name": "argocd", "type": "argocd", "secrets": [SECRET], "lineage": LEAD}


async def github(running: Running, event: str, fixture: str) -> tuple[int, Any]:
    body = fixture_bytes(f"github/{fixture}")
    return await running.post("github", body, {"X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                                                "X-Hub-Signature-256": github_signature(body)})


def helm_sync(images: list[str], **changes: Any) -> bytes:
    """The real Application synced to a Helm chart version (no commit in the revision) running ``images``."""
    app = application("application.with-operationState.yaml")
    app["status"]["operationState"]["syncResult"]["revision"] = changes.pop("revision", "5.14.1")
    app["status"]["summary"]["images"] = images
    for key, value in changes.items():
        app["spec"]["source" if key == "repoURL" else "destination"][key if key == "repoURL" else "name"] = value
    return render_argocd(app, "sync-succeeded")


async def argocd(running: Running, body: bytes) -> int:
    status, _ = await running.post("argocd", body, {"Authorization": f"Bearer {SECRET}"})
    return status


async def test_registry_package_gives_an_image_only_argocd_deploy_its_sha(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, ARGOCD)
    assert await github(running, "registry_package", "registry_package.published.docker.json") == (
        202, {"ignored": "lineage: registry_package published"})
    assert await argocd(running, helm_sync([PACKAGE_IMAGE])) == 202
    deploy = only((await running.settled())["deploys"], "velero")
    assert deploy["sha"] == PACKAGE_SHA
    assert deploy["customData"]["images"] == {"hello-world": PACKAGE_IMAGE}
    assert deploy["customData"]["revision"] == "5.14.1"


async def test_an_unknown_image_goes_out_without_a_sha(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, ARGOCD)
    await github(running, "registry_package", "registry_package.published.docker.json")
    assert await argocd(running, helm_sync(["ghcr.io/codertocat/hello-world:never-published"])) == 202
    deploy = only((await running.settled())["deploys"], "velero")
    assert "sha" not in deploy
    assert deploy["customData"]["images"] == {"hello-world": "ghcr.io/codertocat/hello-world:never-published"}


async def test_push_and_gitlab_pipeline_commit_times_are_kept(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, {"name": "gitlab", "type": "gitlab", "secrets": [SECRET]})
    assert await github(running, "push", "push.new-branch.json") == (202, {"ignored": "lineage: push commit times kept"})
    body = fixture_bytes("gitlab-docs/pipeline.success.json")
    assert (await running.post("gitlab", body, {"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET}))[0] == 202
    lineage = Lineage(running.bridge.queue, LineageSettings())
    assert await lineage.commit_time("6113728f27ae82c7b1a177c8d03f9e96e0adf246") == datetime(
        2019, 5, 15, 15, 19, 25, tzinfo=UTC)
    assert await lineage.commit_time("bcbb5ec396a2c0f828686f14fac9b80b780504f2") == datetime(
        2016, 8, 12, 15, 23, 21, tzinfo=UTC)


async def test_cdevents_artifact_without_a_commit_teaches_nothing(start_bridge: StartBridge) -> None:
    running = await start_bridge({"name": "cdevents", "type": "cloudevents", "secrets": [SECRET]})
    for fixture, kind in (("artifact_published.json", "artifact.published"), ("build_finished.json", "build.finished")):
        status, answer = await running.post("cdevents", fixture_bytes(f"cdevents/{fixture}"),
                                            {"Authorization": f"Bearer {SECRET}"})
        assert (status, answer) == (202, {"ignored": f"lineage: {kind} (names no commit)"})
    assert await running.bridge.queue.get_states("lineage/") == {}


def metric_rows(running: Running) -> list[tuple[str, str]]:
    return [(r[0], json.loads(r[1])["key"]) for r in stored_rows(
        running.bridge.queue, "SELECT id, body FROM records WHERE kind = 'metric' UNION ALL "
        "SELECT id, body FROM dead WHERE kind = 'metric' UNION ALL SELECT id, '{\"key\": \"delivered\"}' "
        "FROM delivered WHERE kind = 'metric'")]


async def test_lead_time_of_a_workflow_run_deploy_is_stored_once_across_repeats_and_sources(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(GITHUB, ARGOCD)
    body = fixture_bytes("github/workflow_run.completed.success.json")
    records = await records_for(running, "github", body, {"X-GitHub-Event": "workflow_run"})
    [point] = [r for r in records if r["kind"] == "metric"]
    # head_commit.timestamp 16:32:07 -> run completed (updated_at) 16:33:49
    assert (point["key"], point["value"], point["timestamp"]) == ("lead-time", 102.0, "2020-10-05T16:33:49.000Z")
    assert point["id"] == record_id("lead-time", "lead-time", "octo-repo", "production", RUN["head_sha"])
    for _ in range(2):  # a redelivery with a new delivery id
        assert (await github(running, "workflow_run", "workflow_run.completed.success.json"))[0] == 202
    # Argo CD reports the same commit to the same environment of the same entity.
    sync = helm_sync([], revision=RUN["head_sha"], repoURL="https://github.com/octo-org/octo-repo",
                     name="production")
    assert await argocd(running, sync) == 202
    state = await running.settled()
    # The fixture's sync finished years after the run: outside the coalescing window, two deploys.
    assert len(state["deploys"]["octo-repo"]) == 2
    assert [rid for rid, _ in metric_rows(running)] == [point["id"]]
