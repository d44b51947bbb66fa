"""Flux notification-controller events (generic-hmac provider) over HTTP into a running bridge."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.webhooks import (
    SECRET,
    Running,
    StartBridge,
    derived,
    fixture_bytes,
    github_signature,
    only,
)

FLUX: dict[str, Any] = {
    "name": "flux",
    "type": "flux",
    "secrets": [SECRET],
    "environment": "production",
    "entity": {"template": "{involvedObject.name}"},
}
ERRORS = [
    "flux/event.kustomization.validation-failed.v1.json",
    "flux/event.kustomization.validation-failed.v1beta2.json",
    "flux/generic-webhook.body.with-reportingInstance.json",
]


async def deliver(running: Running, body: bytes) -> tuple[int, Any]:
    # generic-hmac: X-Signature: sha256=<hex HMAC-SHA256(token, body)>, like GitHub's scheme.
    headers = {"X-Signature": github_signature(body), "Gotk-Component": "kustomize-controller",
               "User-Agent": "Go-http-client/1.1"}
    return await running.post("flux", body, headers)


def reconciled(kind: str = "Kustomization", reason: str = "ReconciliationSucceeded") -> bytes:
    # Flux's documented events are all errors; a successful reconciliation has the same shape
    # with severity info and a success reason (the revision metadata is the real one).
    def succeed(event: dict[str, Any]) -> None:
        event.update(severity="info", reason=reason)
        event["involvedObject"]["kind"] = kind

    return derived("flux/event.kustomization.validation-failed.v1.json", succeed)


@pytest.mark.parametrize("fixture", ERRORS)
async def test_error_event_is_a_reconciliation_failure(start_bridge: StartBridge, fixture: str) -> None:
    running = await start_bridge(FLUX)
    assert (await deliver(running, fixture_bytes(fixture)))[0] == 202
    event = only((await running.settled())["events"], "webapp")
    event.pop("uuid")
    event["customData"].pop("cortexBridgeId")
    assert event == {
        "title": "Kustomization apps/webapp: ValidationFailed",
        "type": "RECONCILIATION_FAILED",
        "timestamp": "2022-10-28T07:26:19.000Z",
        "description": "service/apps/webapp validation error: spec.type: Unsupported value: Ingress",
        "customData": {"kind": "Kustomization", "namespace": "apps", "name": "webapp", "reason": "ValidationFailed",
                       "revision": "main/731f7eaddfb6af01cb2173e18f0f75b0ba780ef1",
                       "controller": "kustomize-controller", "environment": "production"},
    }


async def test_one_event_in_three_api_versions_is_stored_once(start_bridge: StartBridge) -> None:
    running = await start_bridge(FLUX)
    for fixture in ERRORS:
        assert (await deliver(running, fixture_bytes(fixture)))[0] == 202
    assert (await running.settled())["counts"]["events"] == 1


async def test_successful_reconciliation_of_a_revision_is_one_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(FLUX)
    assert (await deliver(running, reconciled()))[0] == 202
    # The same revision reconciled again is not a new deploy.
    assert (await deliver(running, reconciled()))[0] == 202
    deploy = only((await running.settled())["deploys"], "webapp")
    assert (deploy["title"], deploy["type"], deploy["sha"], deploy["environment"], deploy["timestamp"]) == (
        "Kustomization apps/webapp reconciled main/731f7eaddfb6af01cb2173e18f0f75b0ba780ef1", "DEPLOY",
        "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1", "production", "2022-10-28T07:26:19.000Z")


async def test_helm_rollback_is_a_rollback_deploy(start_bridge: StartBridge) -> None:
    running = await start_bridge(FLUX)
    assert (await deliver(running, reconciled("HelmRelease", "RollbackSucceeded")))[0] == 202
    assert only((await running.settled())["deploys"], "webapp")["type"] == "ROLLBACK"


async def test_info_event_that_is_not_a_deploy_is_ignored(start_bridge: StartBridge) -> None:
    running = await start_bridge(FLUX)
    assert await deliver(running, reconciled("GitRepository")) == (
        202, {"ignored": "event-not-mapped: info ReconciliationSucceeded from GitRepository"})


async def test_documentation_sample_with_trailing_commas_is_rejected(start_bridge: StartBridge) -> None:
    running = await start_bridge(FLUX)
    status, answer = await deliver(running, fixture_bytes("flux/generic-webhook.gitrepository.info.INVALID-trailing-commas.json"))
    assert status == 400 and answer["error"].startswith("body is not valid JSON")


async def test_generic_provider_with_bearer_token(start_bridge: StartBridge) -> None:
    running = await start_bridge({**FLUX, "signature": "token"})
    body = fixture_bytes(ERRORS[0])
    assert (await running.post("flux", body, {"Authorization": f"Bearer {SECRET}"}))[0] == 202
    assert (await running.post("flux", body, {"X-Signature": github_signature(body)}))[0] == 401
