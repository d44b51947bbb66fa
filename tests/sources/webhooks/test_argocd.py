"""Argo CD notifications over HTTP: bodies rendered from real Application objects.

Argo CD has no fixed payload; the body is what the documented template renders from the
Application. ``render_argocd`` does what the template in config/examples/argocd-notifications-cm.yaml
does (``dig`` with "" as default, then JSON), and a test keeps the two in step.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support.webhooks import (
    EXAMPLES,
    SECRET,
    Running,
    StartBridge,
    application,
    only,
    render_argocd,
    without_bridge_id,
)

ARGOCD: dict[str, Any] = {"name": "argocd", "type": "argocd", "secrets": [SECRET]}


async def notify(running: Running, body: bytes, token: str = SECRET) -> tuple[int, Any]:
    return await running.post("argocd", body, {"Authorization": f"Bearer {token}"})


def test_render_matches_the_shipped_templates() -> None:
    data = yaml.safe_load((EXAMPLES / "argocd-notifications-cm.yaml").read_text())["data"]
    rendered = json.loads(render_argocd(application("application.with-operationState.yaml"), "x"))
    for event in ("sync-succeeded", "sync-failed", "health-degraded"):
        body = yaml.safe_load(data[f"template.cortex-{event}"])["webhook"]["cortex-bridge"]["body"]
        skeleton = json.loads(re.sub(r"\{\{.*?\}\}", "null", body))
        assert skeleton["event"] == event
        assert skeleton.keys() == rendered.keys()
        assert skeleton["destination"].keys() == rendered["destination"].keys()


async def test_sync_succeeded_is_a_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(ARGOCD)
    body = render_argocd(application("application.with-operationState.yaml"), "sync-succeeded")
    assert (await notify(running, body))[0] == 202
    assert without_bridge_id(only((await running.settled())["deploys"], "velero")) == {
        "title": "Sync velero-test to ea8759964626",
        "timestamp": "2024-03-05T07:33:04.000Z",
        "type": "DEPLOY",
        "sha": "ea8759964626a583667a2bfd08f334ec2070040a",
        "environment": "gke-alpha-01-europe-west1",
        "url": "https://argocd.example.com/applications/velero-test",
        "deployerName": "foo@example.com",
        "customData": {"application": "velero-test", "namespace": "argo-cd", "project": "sre",
                       "revision": "ea8759964626a583667a2bfd08f334ec2070040a", "syncStatus": "Synced",
                       "healthStatus": "Healthy", "destinationNamespace": "test-lla",
                       "images": {"nginx": "nginx:latest"}},
    }


async def test_sync_failed_is_an_event(start_bridge: StartBridge) -> None:
    # The real Application with its last operation in phase Failed, as on-sync-failed sees it.
    app = application("application.with-operationState.yaml")
    app["status"]["operationState"]["phase"] = "Failed"
    running = await start_bridge({**ARGOCD, "environment": "alpha"})
    assert (await notify(running, render_argocd(app, "sync-failed")))[0] == 202
    state = await running.settled()
    event = without_bridge_id(only(state["events"], "velero"))
    assert (event["type"], event["title"], event["timestamp"]) == (
        "SYNC_FAILED", "Sync of velero-test failed (Failed)", "2024-03-05T07:33:04.000Z")
    assert event["customData"]["environment"] == "alpha"
    assert state["deploys"] == {}


async def test_health_degraded_is_an_event(start_bridge: StartBridge) -> None:
    app = application("application.with-operationState.yaml")
    app["status"]["health"] = application("application.health-degraded.minimal.yaml")["status"]["health"]
    running = await start_bridge(ARGOCD)
    assert (await notify(running, render_argocd(app, "health-degraded")))[0] == 202
    event = only((await running.settled())["events"], "velero")
    assert (event["type"], event["title"], event["customData"]["healthStatus"]) == (
        "HEALTH_DEGRADED", "velero-test is degraded", "Degraded")


async def test_application_without_a_name_is_rejected(start_bridge: StartBridge) -> None:
    running = await start_bridge(ARGOCD)
    body = render_argocd(application("application.health-degraded.minimal.yaml"), "health-degraded")
    assert await notify(running, body) == (
        400, {"error": "payload has no app name (see the documented notification template)"})


async def test_unknown_event_is_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge(ARGOCD)
    body = render_argocd(application("application.with-operationState.yaml"), "sync-running")
    assert await notify(running, body) == (202, {"ignored": "event-not-mapped: sync-running"})


@pytest.mark.parametrize("token", ["", "wrong"])
async def test_wrong_or_missing_token_is_refused(start_bridge: StartBridge, token: str) -> None:
    running = await start_bridge(ARGOCD)
    body = render_argocd(application("application.with-operationState.yaml"), "sync-succeeded")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _ = await running.post("argocd", body, headers)
    assert status == 401
    assert await running.queued_ids() == set()
