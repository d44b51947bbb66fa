"""Alertmanager, PagerDuty and Opsgenie deliveries (real payloads) over HTTP into a running bridge."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from tests.support.webhooks import FIXTURES, SECRET, StartBridge, derived, fixture_bytes

BEARER = {"Authorization": f"Bearer {SECRET}"}
ALERTMANAGER: dict[str, Any] = {
    "name": "alertmanager", "type": "alertmanager", "secrets": [SECRET], "restore_metric": "time-to-restore",
    "environment": "production", "entity_labels": ["service", "host", "alertname"],
    "entity": {"static": {"andromeda": "hello-world", "Fire": "octo-repo"}, "lookup": False},
}
PAGERDUTY: dict[str, Any] = {
    "name": "pagerduty", "type": "pagerduty", "secrets": [SECRET], "restore_metric": "time-to-restore",
    "entity": {"static": {"pig208": "test-repo"}, "lookup": False},
}
OPSGENIE: dict[str, Any] = {
    "name": "opsgenie", "type": "opsgenie", "secrets": [SECRET], "restore_metric": "time-to-restore",
    "entity": {"template": "{alias}", "lookup": False},
}
#: PagerDuty/go-pagerduty webhookv3_test.go: the secret, and the signature of the signed fixture.
PD_VECTOR_SECRET = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK"
PD_VECTOR_SIGNATURE = "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd"


def pd_signature(body: bytes, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pd_headers(body: bytes, webhook_id: str) -> dict[str, str]:
    return {"X-PagerDuty-Signature": pd_signature(body), "X-Webhook-Id": webhook_id,
            "User-Agent": "PagerDuty-Webhook/V3.0"}


def recent(relative: str) -> bytes:
    """A fixture with its 2018-11-04 dates moved to yesterday."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    return fixture_bytes(relative).replace(b"2018-11-04T", yesterday.encode() + b"T")


def stripped(item: dict[str, Any]) -> dict[str, Any]:
    item = dict(item)
    item.pop("uuid", None)
    item["customData"] = {k: v for k, v in item["customData"].items() if k != "cortexBridgeId"}
    return item


async def test_alertmanager_firing_alerts_become_one_event_each_and_repeats_are_stored_once(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(ALERTMANAGER)
    body = fixture_bytes("alertmanager/zulip.firing.2-alerts.High-CPU-Temperature.json")
    status, first_answer = await running.post("alertmanager", body, BEARER)
    assert status == 202, first_answer
    # Alertmanager repeats a firing group every repeat_interval: the same episodes, stored once.
    status, answer = await running.post("alertmanager", body, BEARER)
    assert status == 202 and answer["ids"] == first_answer["ids"], answer
    events = (await running.settled())["events"]["hello-world"]
    assert len(events) == 2
    assert sorted(e["customData"]["incident"] for e in events) == [
        "a1bc48475b20e73d@2020-02-06T00:17:58.432911368Z", "c2ea85182f28cbd9@2020-02-06T00:17:58.432911368Z"]
    first = min(events, key=lambda e: e["customData"]["incident"])
    bridge_id = first["customData"]["cortexBridgeId"]
    first = stripped(first)
    assert first == {
        "title": "High CPU core temperature", "description": "CPU core temperature is 34.75C",
        "type": "ALERT", "timestamp": "2020-02-06T00:17:58.432Z",
        "url": first["url"],
        "customData": {
            "system": "alertmanager", "incident": "a1bc48475b20e73d@2020-02-06T00:17:58.432911368Z",
            "state": "opened", "severity": "critical", "environment": "production", "url": first["url"],
            "alertname": "High CPU Temperature", "receiver": "ops-zulip", "groupKey": "{}/{}:{}",
            "labels": {"alertname": "High CPU Temperature", "host": "andromeda", "severity": "critical"},
            "opened_event": bridge_id,  # it names itself: its resolution will update it (test_incident_updates.py)
        },
    }
    assert first["url"].startswith("http://cobalt:9090/graph?g0.expr=")


async def test_alertmanager_resolution_updates_the_opening_and_gives_a_time_to_restore_point(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(ALERTMANAGER)
    # This pair is from 2018: moved to yesterday (same times of day), since Cortex keeps metric
    # points of the last six months only and the bridge dead-letters older ones (too_old).
    firing, resolved = (recent(f"alertmanager/alertmanager-bot.{name}.Fire.json") for name in ("firing", "resolved"))
    assert (await running.post("alertmanager", firing, BEARER))[0] == 202
    assert (await running.post("alertmanager", resolved, BEARER))[0] == 202
    assert (await running.post("alertmanager", resolved, BEARER))[0] == 202  # repeated: once
    state = await running.settled()
    [event] = state["events"]["octo-repo"]  # one event: the resolution updated the opening by uuid
    assert event["type"] == "ALERT" and event["customData"]["state"] == "resolved"
    assert event["customData"]["opened_event"] == event["customData"]["cortexBridgeId"]
    assert event["customData"]["restore_seconds"] == 255.0  # 22:43:58 -> 22:48:13
    assert state["metrics"]["time-to-restore"]["octo-repo"] == [
        {"timestamp": event["customData"]["resolvedAt"], "value": 255.0}]


async def test_alertmanager_match_labels_keep_only_matching_alerts_and_a_non_notification_is_refused(
    start_bridge: StartBridge,
) -> None:
    only_critical = {**ALERTMANAGER, "match_labels": {"severity": "critical"},
                     "entity": {"template": "{labels.namespace}", "lookup": False}}
    running = await start_bridge(only_critical)
    body = fixture_bytes("alertmanager/kubesphere.firing.9-alerts.CPUThrottlingHigh.no-version-groupKey.json")
    status, answer = await running.post("alertmanager", body, BEARER)
    assert status == 202 and answer["ignored"].startswith("no-alert-mapped"), answer  # all are warnings
    status, answer = await running.post("alertmanager", b'{"status": "firing"}', BEARER)
    assert status == 400 and "no alerts list" in json.dumps(answer), answer


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET + "x"}])
async def test_alertmanager_without_its_token_is_refused(start_bridge: StartBridge, headers: dict[str, str]) -> None:
    running = await start_bridge(ALERTMANAGER)
    body = fixture_bytes("alertmanager/alertmanager-bot.firing.Fire.json")
    assert (await running.post("alertmanager", body, headers))[0] == 401
    assert await running.queued_ids() == set()


async def test_pagerduty_triggered_and_resolved_incident_with_retries_deduplicated(start_bridge: StartBridge) -> None:
    running = await start_bridge(PAGERDUTY)
    triggered = fixture_bytes("pagerduty/v3.incident.triggered.json")
    assert (await running.post("pagerduty", triggered, pd_headers(triggered, "wh-1")))[0] == 202
    status, answer = await running.post("pagerduty", triggered, pd_headers(triggered, "wh-1"))  # a retry
    assert status == 202 and answer.get("duplicate_delivery"), answer
    resolved = fixture_bytes("pagerduty/v3.incident.resolved.json")
    assert (await running.post("pagerduty", resolved, pd_headers(resolved, "wh-2")))[0] == 202
    state = await running.settled()
    events = {e["type"]: stripped(e) for e in state["events"]["test-repo"]}
    assert events["INCIDENT"]["title"] == "Test Incident 3"
    assert events["INCIDENT"]["timestamp"] == "2021-06-04T13:35:29.781Z"
    assert events["INCIDENT"]["customData"]["incident"] == "PFQZPSY"
    assert events["INCIDENT"]["customData"]["severity"] == "high"
    assert events["INCIDENT_RESOLVED"]["customData"]["incident"] == "PCPZE64"
    # These captures carry no data.created_at: the open time is unknown, so no time-to-restore.
    assert "restore_seconds" not in events["INCIDENT_RESOLVED"]["customData"]
    assert "time-to-restore" not in state.get("metrics", {})


async def test_pagerduty_resolution_with_created_at_gives_a_time_to_restore_point(start_bridge: StartBridge) -> None:
    running = await start_bridge(PAGERDUTY)

    resolved_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def created_an_hour_before(payload: dict[str, Any]) -> None:
        # Recent times: Cortex keeps metric points of the last six months only.
        payload["event"]["occurred_at"] = resolved_at.isoformat()
        payload["event"]["data"]["created_at"] = (resolved_at - timedelta(hours=1)).isoformat()

    body = derived("pagerduty/v3.incident.resolved.json", created_an_hour_before)
    assert (await running.post("pagerduty", body, pd_headers(body, "wh-3")))[0] == 202
    state = await running.settled()
    assert state["metrics"]["time-to-restore"]["test-repo"] == [
        {"timestamp": resolved_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "value": 3600.0}]


async def test_pagerduty_signature_vector_rotation_and_unmapped_events(start_bridge: StartBridge) -> None:
    running = await start_bridge({**PAGERDUTY, "secrets": [SECRET, PD_VECTOR_SECRET]})
    signed = fixture_bytes("pagerduty/v3.incident.priority_updated.go-pagerduty-signed.json")
    ok = {"X-PagerDuty-Signature": PD_VECTOR_SIGNATURE, "X-Webhook-Id": "wh-4"}
    status, answer = await running.post("pagerduty", signed, ok)
    assert status == 202 and answer["ignored"] == "event-not-mapped: incident.priority_updated", answer
    # One v1 entry per active secret of the subscription: any may match.
    rotated = {"X-PagerDuty-Signature": f"v1={'0' * 64},{PD_VECTOR_SIGNATURE}", "X-Webhook-Id": "wh-5"}
    assert (await running.post("pagerduty", signed, rotated))[0] == 202
    bad = "v1=7020c8a7ec668a9b7012bc3dd82e483394b038f4230acc6785efbf2a7d8bcaf5"
    assert (await running.post("pagerduty", signed, {"X-PagerDuty-Signature": bad}))[0] == 401
    assert (await running.post("pagerduty", signed, {}))[0] == 401
    ping = fixture_bytes("pagerduty/v3.pagey.ping.json")
    status, answer = await running.post("pagerduty", ping, pd_headers(ping, "wh-6"))
    assert status == 202 and answer["ignored"] == "event-not-mapped: pagey.ping", answer
    assert await running.queued_ids() == set()


async def test_opsgenie_create_and_close_with_nanosecond_update_time(start_bridge: StartBridge) -> None:
    running = await start_bridge({**OPSGENIE, "entity": {"static": {"server": "asgard", "aliastest": "asgard"},
                                                          "lookup": False}})
    create = fixture_bytes("opsgenie/webhook.Create.json")
    close = fixture_bytes("opsgenie/webhook.Close.json")
    ack = fixture_bytes("opsgenie/webhook.Acknowledge.json")
    assert (await running.post("opsgenie", create, BEARER))[0] == 202
    status, answer = await running.post("opsgenie", ack, BEARER)
    assert status == 202 and answer["ignored"] == "action-not-mapped: Acknowledge", answer
    status, answer = await running.post("opsgenie", close, BEARER)
    assert status == 202, answer
    state = await running.settled()
    events = {e["customData"]["incident"]: stripped(e) for e in state["events"]["asgard"]}
    opened = events["ec03dad6-62c8-4c94-b38b-d88f398e900f"]
    assert (opened["type"], opened["title"], opened["timestamp"]) == ("INCIDENT", "another alert",
                                                                      "2017-08-14T11:25:56.288Z")
    assert opened["customData"]["severity"] == "P3"
    closed = events["052652ac-5d1c-464a-812a-7dd18bbfba8c"]
    # updatedAt 1420452374669001603 ns; createdAt 1420452191104 ms: 183.565 s to restore.
    assert (closed["type"], closed["timestamp"]) == ("INCIDENT_RESOLVED", "2015-01-05T10:06:14.669Z")
    assert closed["customData"]["restore_seconds"] == 183.565
    # A point from 2015 is older than Cortex keeps: made, and dead-lettered rather than sent.
    assert "time-to-restore" not in state.get("metrics", {})
    assert await running.dead_letters() == [("metric", "too_old")]


@pytest.mark.parametrize(("source", "fixture", "kinds"), [
    (ALERTMANAGER, "alertmanager/alertmanager-bot.resolved.Fire.json", ["event", "metric"]),
    (PAGERDUTY, "pagerduty/v3.incident.triggered.json", ["event"]),
    ({**OPSGENIE, "entity": {"static": {"server": "asgard"}, "lookup": False}}, "opsgenie/webhook.Create.json",
     ["event"]),
])
def test_preview_shows_what_an_incident_delivery_becomes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: dict[str, Any], fixture: str, kinds: list[str],
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump({"queue": {"path": str(tmp_path / "queue.db")},
                                      "ingest": {"token": "ingest-token"}, "sources": [source]}))
    code = main(["--config", str(config), "preview", "--source", source["name"], str(FIXTURES / fixture)])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["outcome"] == "records", result
    assert [r["kind"] for r in result["records"]] == kinds
    assert not (tmp_path / "queue.db").exists()
