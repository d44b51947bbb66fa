"""An incident's resolution updates its opening event by uuid: real payloads over HTTP, a running
bridge on SQLite and PostgreSQL, a restart in between, faults on the update.

Alertmanager's firing/resolved pair of one alert (tests/fixtures/webhooks/alertmanager, moved to
yesterday so that the time-to-restore point is within Cortex's six months), PagerDuty's triggered
and resolved captures (two different incidents: the resolution's opening was never seen).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge.cortex.simulator import SimFaults
from tests.sources.conftest import StartOnQueue
from tests.sources.webhooks.test_incidents import ALERTMANAGER, BEARER, PAGERDUTY, pd_headers, recent
from tests.support.cortex import sim_requests, wait_until
from tests.support.webhooks import Running, fixture_bytes

Start = Callable[..., Awaitable[Running]]
FIRING, RESOLVED = (f"alertmanager/alertmanager-bot.{name}.Fire.json" for name in ("firing", "resolved"))


@pytest.fixture
def start(start_on_queue: StartOnQueue) -> Start:
    """Start bridges on one queue (a restart is a stop and a start); all are stopped at teardown."""

    async def _start() -> Running:
        return await start_on_queue([ALERTMANAGER, PAGERDUTY], {})

    return _start


def event_writes(log: list[dict[str, Any]]) -> list[str]:
    return [e["method"] for e in log if "/custom-events" in e["path"] and e["method"] != "GET"]


async def alert(running: Running, name: str) -> None:
    status, answer = await running.post("alertmanager", recent(name), BEARER)
    assert status == 202, answer


def assert_resolved(event: dict[str, Any]) -> None:
    """The opening event, resolved: the opening's type, title and time, the resolution's state."""
    custom = event["customData"]
    assert (event["type"], event["title"]) == ("ALERT", "Fire")
    assert ":43:58." in event["timestamp"]  # the alert's startsAt, not endsAt
    assert custom["state"] == "resolved" and custom["restore_seconds"] == 255.0
    assert ":48:13." in custom["resolvedAt"]
    assert custom["opened_event"] == custom["events"][0]
    assert len(custom["events"]) == 2


async def test_a_resolution_after_a_restart_puts_the_delivered_opening(start: Start) -> None:
    running = await start()
    await alert(running, FIRING)
    [opened] = (await running.settled())["events"]["octo-repo"]
    assert opened["customData"]["state"] == "opened"
    # The uuid is the one the opening's delivery stored with it: it survives the restart.
    await running.bridge.stop(deadline=2)
    running = await start()
    await alert(running, RESOLVED)
    await alert(running, RESOLVED)  # repeated: stored once
    state = await running.settled()
    [event] = state["events"]["octo-repo"]
    assert event["uuid"] == opened["uuid"]
    assert_resolved(event)
    assert event["customData"]["cortexBridgeId"] == opened["customData"]["cortexBridgeId"]
    assert event_writes(await sim_requests(running.cortex)) == ["POST", "PUT"]
    # Time to restore stays a metric point of its own.
    assert state["metrics"]["time-to-restore"]["octo-repo"] == [
        {"timestamp": event["customData"]["resolvedAt"], "value": 255.0}]


async def test_a_resolution_queued_with_its_opening_waits_for_its_uuid(start: Start) -> None:
    running = await start()
    await alert(running, FIRING)
    await alert(running, RESOLVED)
    [event] = (await running.settled())["events"]["octo-repo"]
    assert_resolved(event)
    assert event_writes(await sim_requests(running.cortex)) == ["POST", "PUT"]


async def test_a_resolution_whose_opening_was_never_seen_is_posted_and_a_late_opening_updates_it(
    start: Start,
) -> None:
    running = await start()
    await alert(running, RESOLVED)
    [alone] = (await running.settled())["events"]["octo-repo"]
    assert (alone["type"], alone["customData"]["state"]) == ("ALERT_RESOLVED", "resolved")
    # The opening arrives after all (Alertmanager resent it late): the same event, not a second.
    await alert(running, FIRING)
    [event] = (await running.settled())["events"]["octo-repo"]
    assert event["uuid"] == alone["uuid"]
    assert_resolved(event)
    assert event_writes(await sim_requests(running.cortex)) == ["POST", "PUT"]


async def test_other_incidents_are_not_merged(start: Start) -> None:
    running = await start()
    # Two alerts firing in one group; the resolution of one of them (zero-time endsAt).
    status, _ = await running.post("alertmanager", fixture_bytes("alertmanager/zulip.firing.2-alerts.High-CPU-Temperature.json"),
                                   BEARER)
    assert status == 202
    await running.settled()
    await alert(running, FIRING)  # another alert on another entity
    status, _ = await running.post(
        "alertmanager", fixture_bytes("alertmanager/zulip.resolved.1-alert.High-CPU-Temperature.edited.json"), BEARER)
    assert status == 202
    # PagerDuty: the resolved capture is of another incident than the triggered one.
    triggered, resolved = (fixture_bytes(f"pagerduty/v3.incident.{s}.json") for s in ("triggered", "resolved"))
    assert (await running.post("pagerduty", triggered, pd_headers(triggered, "wh-1")))[0] == 202
    assert (await running.post("pagerduty", resolved, pd_headers(resolved, "wh-2")))[0] == 202
    state = await running.settled()
    states = {e["customData"]["incident"]: e["customData"]["state"] for e in state["events"]["hello-world"]}
    assert states == {"a1bc48475b20e73d@2020-02-06T00:17:58.432911368Z": "resolved",
                      "c2ea85182f28cbd9@2020-02-06T00:17:58.432911368Z": "opened"}
    [fire] = state["events"]["octo-repo"]
    assert fire["customData"]["state"] == "opened"
    pd = sorted((e["type"], e["customData"]["incident"]) for e in state["events"]["test-repo"])
    assert pd == [("INCIDENT", "PFQZPSY"), ("INCIDENT_RESOLVED", "PCPZE64")]
    assert event_writes(await sim_requests(running.cortex)).count("PUT") == 1


async def test_an_unanswered_put_is_repeated(start: Start) -> None:
    running = await start()
    await alert(running, FIRING)
    await running.settled()
    running.cortex.config.faults = SimFaults(drop_after_commit_every=1)
    await alert(running, RESOLVED)
    await wait_until(lambda: _lost(running, "PUT"))
    running.cortex.config.faults = SimFaults()
    state = await running.settled(timeout=20)
    [event] = state["events"]["octo-repo"]
    assert_resolved(event)
    writes = event_writes(await sim_requests(running.cortex))
    assert writes.count("POST") == 1 and writes.count("PUT") >= 2


async def _lost(running: Running, method: str) -> bool:
    return any(e["method"] == method and "/custom-events" in e["path"] and e["status"] == 0
               for e in await sim_requests(running.cortex))
