"""Every refused delivery is a warning line (rate-limited), naming its delivery id, never its body or a secret."""

from __future__ import annotations

import json
import uuid
from collections.abc import MutableMapping
from typing import Any

import aiohttp
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import metrics
from bridge.sources import admit
from bridge.sources.admit import RefusalLog
from tests.support.webhooks import SECRET, Running, StartBridge, fixture_bytes, github_signature

WRONG_SECRET = "wrong-secret-5f3a9c"
BODY_MARKER = "body-marker-7d1e0b"


def unique(name: str) -> str:
    # The process's refusal log is rate-limited per source: each test gets sources of its own.
    return f"{name}-{uuid.uuid4().hex[:8]}"


def refusals(events: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == "input_refused"]


def github_body() -> bytes:
    payload = json.loads(fixture_bytes("github/deployment_status.success.json"))
    payload["deployment"]["description"] = BODY_MARKER
    return json.dumps(payload).encode()


async def test_a_wrong_github_secret_is_one_warning_with_the_delivery_id(start_bridge: StartBridge) -> None:
    name = unique("github")
    running = await start_bridge({"name": name, "type": "github", "secrets": [SECRET]})
    body = github_body()
    signature = github_signature(body, WRONG_SECRET)
    delivery = str(uuid.uuid4())
    with structlog.testing.capture_logs() as events:
        status, answer = await running.post(name, body, {"X-GitHub-Event": "deployment_status",
                                                         "X-GitHub-Delivery": delivery,
                                                         "X-Hub-Signature-256": signature})
    assert status == 401, answer
    (line,) = refusals(events)
    assert line["log_level"] == "warning"
    assert (line["source"], line["status"], line["delivery_id"]) == (name, 401, delivery)
    assert "authentication failed" in line["reason"]
    logged = json.dumps(events)
    for leaked in (WRONG_SECRET, SECRET, signature, signature.removeprefix("sha256="), BODY_MARKER):
        assert leaked not in logged


async def test_a_wrong_gitlab_token_is_logged_without_the_token(start_bridge: StartBridge) -> None:
    name = unique("gitlab")
    running = await start_bridge({"name": name, "type": "gitlab", "secrets": [SECRET]})
    delivery = str(uuid.uuid4())
    with structlog.testing.capture_logs() as events:
        status, _ = await running.post(name, BODY_MARKER.encode(), {"X-Gitlab-Token": WRONG_SECRET,
                                                                    "X-Gitlab-Event-UUID": delivery})
    assert status == 401
    (line,) = refusals(events)
    assert (line["source"], line["status"], line["delivery_id"]) == (name, 401, delivery)
    logged = json.dumps(events)
    assert WRONG_SECRET not in logged and SECRET not in logged and BODY_MARKER not in logged


async def test_repeats_are_suppressed_per_source_and_status_but_other_classes_are_logged(
        start_bridge: StartBridge) -> None:
    name = unique("gitlab")
    running = await start_bridge({"name": name, "type": "gitlab", "secrets": [SECRET]})
    with structlog.testing.capture_logs() as events:
        for _ in range(5):
            assert (await running.post(name, b"{}", {"X-Gitlab-Token": WRONG_SECRET}))[0] == 401
        status, _ = await running.post(name, b"not json", {"X-Gitlab-Token": SECRET,
                                                           "X-Gitlab-Event": "Deployment Hook"})
        assert status == 400
        assert (await running.post(name, b"{}", {"X-Gitlab-Token": SECRET}, content_type="text/plain"))[0] == 415
    assert [line["status"] for line in refusals(events)] == [401, 400, 415]


def test_the_line_after_a_quiet_interval_counts_what_was_suppressed() -> None:
    now = [1000.0]
    refusal_log = RefusalLog(interval_seconds=60, clock=lambda: now[0])
    with structlog.testing.capture_logs() as events:
        assert refusal_log.refused("s", 401, "authentication failed: x")
        assert not refusal_log.refused("s", 401, "authentication failed: x")
        assert not refusal_log.refused("s", 401, "authentication failed: x")
        assert refusal_log.refused("other", 401, "authentication failed: x")
        now[0] += 61
        assert refusal_log.refused("s", 401, "authentication failed: x", delivery_id="d" * 500)
    lines = refusals(events)
    assert [(e["source"], e["suppressed_since_last"]) for e in lines] == [("s", 0), ("other", 0), ("s", 2)]
    assert len(lines[-1]["delivery_id"]) == 200


async def post_native(running: Running, body: bytes, headers: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{running.bridge.ingest_port}/v1/records"
    async with aiohttp.ClientSession() as http, \
            http.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status


async def test_native_refusals_are_logged_with_the_idempotency_key(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh limiter: earlier tests of this process may have had a "native" 401 this minute.
    monkeypatch.setattr(admit, "REFUSALS", RefusalLog())
    running = await start_bridge(ingest={"token": SECRET})
    with structlog.testing.capture_logs() as events:
        status = await post_native(running, BODY_MARKER.encode(),
                                   {"Authorization": f"Bearer {WRONG_SECRET}", "Idempotency-Key": "key-1"})
        assert status == 401
        status = await post_native(running, b'{"kind": "deploy", "entity": "' + BODY_MARKER.encode() + b'"',
                                   {"Authorization": f"Bearer {SECRET}", "Idempotency-Key": "key-2"})
        assert status == 400
    lines = [e for e in refusals(events) if e["source"] == "native"]
    assert [(e["status"], e["delivery_id"]) for e in lines] == [(401, "key-1"), (400, "key-2")]
    logged = json.dumps(events)
    assert WRONG_SECRET not in logged and SECRET not in logged and BODY_MARKER not in logged


async def test_an_unknown_source_is_a_json_404_naming_it_and_counted(start_bridge: StartBridge) -> None:
    running = await start_bridge({"name": unique("gitlab"), "type": "gitlab", "secrets": [SECRET]})
    before = metrics.sample("cortex_bridge_inputs_rejected_total", {"source": "unknown", "status": "404"})
    status, answer = await running.post("nope", b"{}")
    assert status == 404
    assert answer == {"error": "no webhook source named 'nope' is configured", "source": "nope"}
    after = metrics.sample("cortex_bridge_inputs_rejected_total", {"source": "unknown", "status": "404"})
    assert after == before + 1


@pytest.fixture
async def gitlab(start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch) -> tuple[Running, str]:
    # No rate limit, so every example below writes its line (the assertions see it).
    monkeypatch.setattr(admit, "REFUSALS", RefusalLog(interval_seconds=0))
    name = unique("gitlab")
    return await start_bridge({"name": name, "type": "gitlab", "secrets": [SECRET]}), name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
       noise=st.binary(max_size=200))
async def test_no_wrong_token_or_body_ever_reaches_a_log_line(gitlab: tuple[Running, str], token: str,
                                                              noise: bytes) -> None:
    running, name = gitlab
    token = f"<{token}>"  # never a substring of anything the bridge itself writes
    body = noise + BODY_MARKER.encode() + noise
    with structlog.testing.capture_logs() as events:
        status, _ = await running.post(name, body, {"X-Gitlab-Token": token, "X-Gitlab-Event-UUID": "d-1"})
    assert status == 401
    (line,) = refusals(events)
    assert line["delivery_id"] == "d-1"
    logged = json.dumps(events)
    assert token not in logged and SECRET not in logged and BODY_MARKER not in logged


async def test_input_kept_as_a_dead_letter_is_one_warning_named_for_any_transport(start_bridge: StartBridge) -> None:
    # "input_", not "webhook_": the same pipeline logs it for native records and Kafka messages.
    name = unique("mapped")
    running = await start_bridge({
        "name": name, "type": "mapping", "allow_unauthenticated": True, "subject": {"keys": ["body.service"]},
        "entity": {"lookup": False},
        "rules": [{"name": "build", "when": "body.ok", "kind": "event", "id": ["body.n"],
                   "fields": {"title": "body.service"}, "constants": {"type": "BUILD"}}]})
    with structlog.testing.capture_logs() as events:
        status, answer = await running.post(name, json.dumps({"service": "nowhere", "ok": True, "n": 1}).encode())
    assert status == 202 and answer["dead_lettered"] == 1, answer
    (line,) = [e for e in events if e["event"] == "input_dead_lettered"]
    assert (line["source"], line["reason"], line["log_level"]) == (name, "entity-unresolved", "warning")
