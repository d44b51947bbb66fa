"""Change failures end to end: real payloads over HTTP into a running bridge (SQLite and
PostgreSQL), what the simulated Cortex ends with.

The deploy is GitHub's ``deployment_status`` capture with its time set; the failures are the
Alertmanager ``alertmanager-bot`` firing capture (moved to yesterday, as in test_incidents.py), an
Argo CD ``sync-failed`` rendered from the real Application fixture, and a ROLLBACK posted to
``/v1/records``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.cortex.simulator import SimFaults
from tests.sources.conftest import StartOnQueue
from tests.sources.webhooks.test_coalesce import ARGOCD, ENTITY, GITHUB, SHA, github_status, report_github
from tests.sources.webhooks.test_incidents import ALERTMANAGER, BEARER, recent
from tests.support.cortex import post_records, sim_requests
from tests.support.webhooks import SECRET, Running, application, render_argocd

Start = Callable[..., Awaitable[Running]]
FIRING = "alertmanager/alertmanager-bot.firing.Fire.json"
#: When the firing capture's alert started, once moved to yesterday (22:43:58.283 at +01:00).
ALERT_AT = datetime.combine((datetime.now(UTC) - timedelta(days=1)).date(), datetime.min.time(), UTC) + timedelta(
    hours=21, minutes=43, seconds=58, milliseconds=283)


def at(delta: timedelta) -> str:
    """A GitHub timestamp ``delta`` from the alert's start."""
    return (ALERT_AT + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def start(start_on_queue: StartOnQueue) -> Start:
    """Start bridges on one queue (a restart is a stop and a start); all are stopped at teardown."""

    async def _start(alert_entity: str = ENTITY, **deploys: Any) -> Running:
        alerts = {**ALERTMANAGER, "entity": {"static": {"Fire": alert_entity}, "lookup": False}}
        return await start_on_queue([GITHUB, ARGOCD, alerts], deploys)

    return _start


async def fire(running: Running) -> None:
    status, answer = await running.post("alertmanager", recent(FIRING), BEARER)
    assert status == 202, answer


def change_failures(state: dict[str, Any], entity: str = ENTITY) -> list[dict[str, Any]]:
    return [e for e in state["events"].get(entity, []) if e["type"] == "change-failure"]


def writes(log: list[dict[str, Any]], what: str) -> list[str]:
    return [e["method"] for e in log if e["path"].endswith(what) or f"{what}/" in e["path"] if e["method"] != "GET"]


async def test_an_incident_after_a_deploy_is_one_change_failure_across_a_restart(start: Start) -> None:
    running = await start()
    await report_github(running, github_status(at=at(-timedelta(minutes=20))))
    [deploy] = (await running.settled())["deploys"][ENTITY]
    await running.bridge.stop(deadline=2)
    running = await start()
    await fire(running)
    await fire(running)  # repeated by Alertmanager: one incident, one change failure
    state = await running.settled()
    [alert] = [e for e in state["events"][ENTITY] if e["type"] == "ALERT"]
    [event] = change_failures(state)
    custom = event["customData"]
    assert custom["deploy"] == {"bridgeId": deploy["customData"]["cortexBridgeId"], "environment": "production",
                                "uuid": deploy["uuid"], "sha": SHA}
    assert custom["failure"] == {"id": alert["customData"]["cortexBridgeId"], "kind": "event", "type": "ALERT",
                                 "title": "Fire"}
    assert custom["secondsAfterDeploy"] == 20 * 60 + 0.283  # GitHub's time has whole seconds
    assert event["timestamp"] == alert["timestamp"]
    [marked] = state["deploys"][ENTITY]
    assert marked["uuid"] == deploy["uuid"]
    assert marked["customData"]["changeFailure"]["event"] == event["customData"]["cortexBridgeId"]
    assert marked["customData"]["changeFailure"]["failure"] == custom["failure"]
    assert "sources" in marked["customData"] and [s["source"] for s in marked["customData"]["sources"]] == ["github"]
    assert {k: marked[k] for k in ("sha", "timestamp", "title")} == {k: deploy[k] for k in ("sha", "timestamp", "title")}
    log = await sim_requests(running.cortex)
    assert writes(log, "/deploys") == ["POST", "PUT"]


async def test_outside_the_window_or_in_another_environment_nothing_is_linked(start: Start) -> None:
    running = await start()
    await report_github(running, github_status(at=at(-timedelta(hours=2))))  # production, too long before
    await report_github(running, github_status(sha="1" * 40, environment="staging", at=at(-timedelta(minutes=5))))
    await fire(running)  # the Alertmanager source says production
    state = await running.settled()
    assert change_failures(state) == []
    assert all("changeFailure" not in d["customData"] for d in state["deploys"][ENTITY])
    assert "PUT" not in writes(await sim_requests(running.cortex), "/deploys")


async def test_another_entitys_incident_is_not_a_failure_of_this_deploy(start: Start) -> None:
    running = await start(alert_entity="octo-repo")
    await report_github(running, github_status(at=at(-timedelta(minutes=5))))
    await fire(running)
    state = await running.settled()
    assert change_failures(state) == [] and change_failures(state, "octo-repo") == []
    assert "changeFailure" not in state["deploys"][ENTITY][0]["customData"]


async def test_change_failures_off(start: Start) -> None:
    running = await start(change_failure_window_seconds=0)
    await report_github(running, github_status(at=at(-timedelta(minutes=5))))
    await fire(running)
    state = await running.settled()
    assert change_failures(state) == []


def sync_failed() -> bytes:
    app = application("application.with-operationState.yaml")
    app["status"]["operationState"]["syncResult"]["revision"] = SHA
    app["status"]["operationState"]["finishedAt"] = "2019-05-15T15:40:00Z"
    app["spec"]["destination"]["name"] = "production"
    app["spec"]["source"]["repoURL"] = "https://github.com/Codertocat/Hello-World"  # the entity, by catalog lookup
    return render_argocd(app, "sync-failed")


async def test_a_failed_sync_and_a_rollback_queued_with_the_deploy_are_each_one_change_failure(start: Start) -> None:
    running = await start(change_failure_event_type="CHANGE_FAILURE")
    await report_github(running)  # 2019-05-15T15:20:55Z, production
    status, answer = await running.post("argocd", sync_failed(), {"Authorization": f"Bearer {SECRET}"})
    assert status == 202, answer
    rollback = {"kind": "deploy", "entity": ENTITY, "title": "Roll back", "timestamp": "2019-05-15T15:45:00Z",
                "sha": "0" * 40, "type": "ROLLBACK", "environment": "production"}
    status, answer = await post_records(running.bridge, [rollback])
    assert status == 202, answer
    state = await running.settled(timeout=20)
    events = [e for e in state["events"][ENTITY] if e["type"] == "CHANGE_FAILURE"]
    assert sorted((e["customData"]["failure"]["kind"], e["customData"]["failure"]["type"]) for e in events) == [
        ("deploy", "ROLLBACK"), ("event", "SYNC_FAILED")]
    deploys = {d["sha"]: d for d in state["deploys"][ENTITY]}
    assert all(e["customData"]["deploy"]["uuid"] == deploys[SHA]["uuid"] for e in events)
    assert deploys[SHA]["customData"]["changeFailure"]["failure"]["type"] in ("SYNC_FAILED", "ROLLBACK")
    assert "changeFailure" not in deploys["0" * 40]["customData"], "a rollback is not a failure of itself"
    log = await sim_requests(running.cortex)
    assert writes(log, "/deploys").count("POST") == 2 and writes(log, "/deploys").count("PUT") <= 2


async def test_a_failure_of_a_deploy_cortex_refused_is_posted_without_a_uuid_and_marks_nothing(
    start: Start,
) -> None:
    running = await start()
    # GitHub's deploy is refused for good (400: dead-lettered) before the alert arrives.
    running.cortex.config.faults = SimFaults(reject_bodies_containing="Codertocat/Hello-World/deployments")
    await report_github(running, github_status(at=at(-timedelta(minutes=20))))
    await running.settled()
    running.cortex.config.faults = SimFaults()
    await fire(running)
    state = await running.settled()
    [event] = change_failures(state)
    # Named by its bridge id only: no Cortex deploy, and its dead-lettered report is not a member any more.
    assert event["customData"]["deploy"]["uuid"] is None and "sha" not in event["customData"]["deploy"]
    assert state["deploys"].get(ENTITY, []) == []
    # The mark had no deploy to go on: settled unsent, never POSTed as a deploy of its own.
    assert writes(await sim_requests(running.cortex), "/deploys") == ["POST"]
    assert await running.bridge.queue.dead_counts_by_kind() == {"deploy": 1}
