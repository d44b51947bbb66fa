"""Helpers of the webhook tests: fixture files, signatures, a running bridge's endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

from bridge.app import Bridge
from bridge.cortex.simulator import SimulatorServer
from bridge.sources.webhooks.source import WebhookSource, describe, header_map
from tests.support.paths import EXAMPLES as EXAMPLES
from tests.support.paths import FIXTURES as ALL_FIXTURES
from tests.support.queue_file import stored_rows

FIXTURES = ALL_FIXTURES / "webhooks"
SIM_TOKEN = "sim-token"
SECRET = "It's a Secret to Everybody"

#: Tags of the simulated tenant and the repositories the catalog links them to.
ENTITIES = {
    "hello-world": "Codertocat/Hello-World",
    "octo-repo": "octo-org/octo-repo",
    "test-repo": "Pritesh-30/test-repo",
    "deployment-webhooks": "root/test-deployment-webhooks",
    "gitlab-test": "gitlab-org/gitlab-test",
    "release-tools": "jsmithy2/release-tools-fake",
    "example-project": "exm-namespace/example-project",
    "asgard": "evgeny-goldin/asgard",
    "velero": "foo/manifests-velero",
    "webapp": None,
    "my-service": None,
    "my-app": None,
    "webhook-service": "circleci/webhook-service",
    "my-pipeline": None,
    "fabrikam": None,
    "test-ci": None,
}
METRIC_KEYS = ["ci-workflow-duration", "ci-pipeline-duration", "ci-job-duration", "ci-build-duration", "time-to-restore"]


def fixture_bytes(relative: str) -> bytes:
    """A fixture file, byte for byte."""
    return (FIXTURES / relative).read_bytes()


def fixture_json(relative: str) -> Any:
    return json.loads(fixture_bytes(relative))


def example_source(file: str, name: str) -> dict[str, Any]:
    """A source from config/examples, with its secret files replaced by the test secret."""
    sources = yaml.safe_load((EXAMPLES / file).read_text())["sources"]
    config = dict(next(s for s in sources if s["name"] == name))
    config.pop("secret_files", None)
    config["secrets"] = [SECRET]
    return config


def github_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Running:
    """A started bridge and how to reach its webhook endpoints."""

    bridge: Bridge
    cortex: SimulatorServer

    def url(self, source: str) -> str:
        return f"http://127.0.0.1:{self.bridge.ingest_port}/webhooks/{source}"

    async def post(self, source: str, body: bytes, headers: dict[str, str] | None = None,
                   content_type: str | None = "application/json") -> tuple[int, Any]:
        """POST raw bytes; returns (status, parsed JSON body or text)."""
        sent = dict(headers or {})
        if content_type is not None:
            sent.setdefault("Content-Type", content_type)
        async with aiohttp.ClientSession() as http, http.post(self.url(source), data=body, headers=sent) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def state(self) -> dict[str, Any]:
        """What the simulated Cortex stored."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.cortex.url}/_sim/state") as resp:
            document: dict[str, Any] = await resp.json()
            return document

    async def settled(self, timeout: float = 10.0) -> dict[str, Any]:
        """Cortex's state once the queue is empty (everything accepted was delivered)."""
        end = time.monotonic() + timeout
        while True:
            stats = await self.bridge.queue.stats()
            if stats["undelivered"] == 0:
                return await self.state()
            if time.monotonic() > end:
                raise AssertionError(f"queue not drained within {timeout} s: {stats}")
            await asyncio.sleep(0.02)

    async def dead_letters(self) -> list[tuple[str, str]]:
        """(kind, reason) of every dead letter, in id order."""
        rows = stored_rows(self.bridge.queue, "SELECT kind, reason FROM dead ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def dead_records(self) -> list[dict[str, Any]]:
        """The records in the dead-letter set, as queued."""
        rows = stored_rows(self.bridge.queue, "SELECT body FROM dead ORDER BY id")
        return [json.loads(r[0]) for r in rows]

    async def queued_ids(self) -> set[str]:
        """Ids the queue knows: undelivered, delivered or dead."""
        rows = stored_rows(
            self.bridge.queue, "SELECT id FROM records UNION SELECT id FROM delivered UNION SELECT id FROM dead")
        return {r[0] for r in rows}


#: ``await start_bridge(source, ...)`` (the fixture of conftest.py).
StartBridge = Callable[..., Awaitable[Running]]


def only(items: dict[str, list[dict[str, Any]]], tag: str) -> dict[str, Any]:
    """The single item stored for ``tag`` (fails unless there is exactly one)."""
    found = items.get(tag, [])
    assert len(found) == 1, f"expected one item for {tag}, got {found}"
    return found[0]


def without_bridge_id(item: dict[str, Any]) -> dict[str, Any]:
    """A stored deploy/event without Cortex's uuid/id and the bridge's id in customData."""
    kept = {k: v for k, v in item.items() if k not in ("uuid", "id", "serviceId")}
    custom = dict(kept.get("customData") or {})
    custom.pop("cortexBridgeId", None)
    if custom:
        kept["customData"] = custom
    else:
        kept.pop("customData", None)
    return kept


def source_of(running: Running, name: str) -> WebhookSource:
    """The running bridge's source object (to look at records it would build)."""
    found = next(s for s in running.bridge.sources if s.name == name)
    assert isinstance(found, WebhookSource)
    return found


async def records_for(running: Running, name: str, body: bytes, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The records a delivery maps to (no signature check, nothing stored), as queued JSON."""
    outcome = await source_of(running, name).evaluate(
        header_map([("Content-Type", "application/json"), *headers.items()]), body, authenticate=False)
    described = describe(outcome)
    assert described["outcome"] == "records", described
    records: list[dict[str, Any]] = described["records"]
    return records


def derived(relative: str, change: Callable[[Any], None]) -> bytes:
    """A real fixture with one documented change applied (for states no public capture has)."""
    document = fixture_json(relative)
    change(document)
    return json.dumps(document, indent=2).encode()


def application(name: str) -> dict[str, Any]:
    """A real Argo CD Application object (YAML fixture)."""
    document: dict[str, Any] = yaml.safe_load((FIXTURES / "argocd" / name).read_text())
    return document


def render_argocd(app: dict[str, Any], event: str) -> bytes:
    """The documented template's body for ``app``."""

    def dig(*path: str) -> Any:
        value: Any = app
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return ""
            value = value[key]
        return value

    body = {
        "event": event,
        "app": dig("metadata", "name"),
        "namespace": dig("metadata", "namespace"),
        "project": dig("spec", "project"),
        "revision": dig("status", "operationState", "syncResult", "revision"),
        "repoURL": dig("spec", "source", "repoURL"),
        "destination": {
            "server": dig("spec", "destination", "server"),
            "name": dig("spec", "destination", "name"),
            "namespace": dig("spec", "destination", "namespace"),
        },
        "syncStatus": dig("status", "sync", "status"),
        "healthStatus": dig("status", "health", "status"),
        "phase": dig("status", "operationState", "phase"),
        "message": dig("status", "operationState", "message"),
        "startedAt": dig("status", "operationState", "startedAt"),
        "finishedAt": dig("status", "operationState", "finishedAt"),
        "healthChangedAt": dig("status", "health", "lastTransitionTime"),
        "initiatedBy": dig("status", "operationState", "operation", "initiatedBy", "username"),
        "url": f"https://argocd.example.com/applications/{dig('metadata', 'name')}",
        # The template's default here is an empty list, not "".
        "images": dig("status", "summary", "images") or [],
    }
    return json.dumps(body).encode()


SOURCES: list[dict[str, Any]] = [
    {"name": "github", "type": "github", "secrets": [SECRET],
     "deploy_workflows": [{"workflow": "test.yml", "environment": "production"}],
     "workflow_duration_metric": "ci-workflow-duration"},
    {"name": "gitlab", "type": "gitlab", "secrets": [SECRET], "pipeline_duration_metric": "ci-pipeline-duration"},
    {"name": "jenkins", "type": "jenkins", "secrets": [SECRET], "deploy_jobs": [{"job": "*"}]},
    {"name": "argocd", "type": "argocd", "secrets": [SECRET]},
    {"name": "flux", "type": "flux", "secrets": [SECRET]},
    {"name": "cloudevents", "type": "cloudevents", "secrets": [SECRET], "pipeline_duration_metric": "ci-pipeline-duration"},
    example_source("circleci.yaml", "circleci"),
    {"name": "alertmanager", "type": "alertmanager", "secrets": [SECRET], "restore_metric": "time-to-restore"},
    {"name": "pagerduty", "type": "pagerduty", "secrets": [SECRET], "restore_metric": "time-to-restore"},
    {"name": "opsgenie", "type": "opsgenie", "secrets": [SECRET], "restore_metric": "time-to-restore"},
]


def credentials(source: str, body: bytes) -> dict[str, str]:
    """Valid credentials for ``body`` on ``source``: the fuzz gets past authentication."""
    if source in ("github", "flux"):
        return {"X-Hub-Signature-256" if source == "github" else "X-Signature": github_signature(body)}
    if source == "gitlab":
        return {"X-Gitlab-Token": SECRET}
    if source == "circleci":
        return {"circleci-signature": "v1=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    if source == "pagerduty":
        return {"X-PagerDuty-Signature": "v1=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    return {"Authorization": f"Bearer {SECRET}"}


FIXTURES_BY_SOURCE: dict[str, list[tuple[str | None, str]]] = {
    "github": [("deployment_status", "github/deployment_status.success.json"),
               ("workflow_run", "github/workflow_run.completed.success.json"),
               ("release", "github/release.published.json")],
    "gitlab": [("Deployment Hook", "gitlab-docs/deployment.success.json"),
               ("Pipeline Hook", "gitlab-docs/pipeline.success.json"),
               ("Job Hook", "gitlab-go-gitlab/job.json")],
    "jenkins": [(None, "jenkins/notification-plugin.completed.success.json")],
    "flux": [(None, "flux/event.kustomization.validation-failed.v1.json")],
    "cloudevents": [(None, "cdevents/service_deployed.json"), (None, "cdevents/pipelinerun_finished.json"),
                    (None, "cdevents/incident_detected.json")],
    "circleci": [(None, "circleci/workflow-completed.github-oauth.json"), (None, "circleci/job-completed.github-oauth.json")],
    "alertmanager": [(None, "alertmanager/zulip.firing.2-alerts.High-CPU-Temperature.json"),
                     (None, "alertmanager/alertmanager-bot.resolved.Fire.json")],
    "pagerduty": [(None, "pagerduty/v3.incident.triggered.json"), (None, "pagerduty/v3.incident.resolved.json")],
    "opsgenie": [(None, "opsgenie/webhook.Create.json"), (None, "opsgenie/webhook.Close.json")],
}


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a JSON document."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found.extend(paths(value, (*prefix, index)))
    return found
