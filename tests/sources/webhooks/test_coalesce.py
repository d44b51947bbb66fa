"""One Cortex deploy per change, whoever reports it: real payloads over HTTP, SQLite and PostgreSQL.

GitHub ``deployment_status`` (tests/fixtures/webhooks/github), an Argo CD notification rendered
from the real Application fixture (its sync times moved next to GitHub's, so both fall in one
window), and a Kubernetes-style rollout posted as a native deploy with ``customData.images`` and
the same sha, in either order, with a bridge restart on the same queue in between.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge import metrics
from bridge.cortex.simulator import SimFaults
from tests.sources.conftest import StartOnQueue
from tests.support.cortex import post_records, sim_requests, wait_until
from tests.support.webhooks import (
    SECRET,
    Running,
    application,
    fixture_bytes,
    github_signature,
    render_argocd,
)

STATUS = json.loads(fixture_bytes("github/deployment_status.success.json"))
SHA = STATUS["deployment"]["sha"]
ENTITY = "hello-world"
GITHUB = {"name": "github", "type": "github", "secrets": [SECRET]}
ARGOCD = {"name": "argocd", "type": "argocd", "secrets": [SECRET]}
IMAGE = "ghcr.io/codertocat/hello-world:1.4.2"

Report = Callable[[Running], Awaitable[None]]
Start = Callable[..., Awaitable[Running]]


def github_status(*, sha: str = SHA, environment: str = "production", at: str | None = None) -> bytes:
    document = json.loads(fixture_bytes("github/deployment_status.success.json"))
    document["deployment"]["sha"] = sha
    document["deployment"]["environment"] = document["deployment_status"]["environment"] = environment
    if at is not None:
        document["deployment_status"]["created_at"] = document["deployment_status"]["updated_at"] = at
    return json.dumps(document).encode()


def argocd_sync(*, sha: str = SHA, finished: str = "2019-05-15T15:24:10Z") -> bytes:
    app = application("application.with-operationState.yaml")
    app["status"]["operationState"]["syncResult"]["revision"] = sha
    app["status"]["operationState"]["startedAt"] = "2019-05-15T15:23:30Z"
    app["status"]["operationState"]["finishedAt"] = finished
    app["spec"]["source"]["repoURL"] = "https://github.com/Codertocat/Hello-World"
    app["spec"]["destination"]["name"] = "production"
    return render_argocd(app, "sync-succeeded")


async def report_github(running: Running, body: bytes | None = None) -> None:
    body = body or github_status()
    status, answer = await running.post("github", body, {
        "X-GitHub-Event": "deployment_status", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": github_signature(body)})
    assert status == 202, answer


async def report_argocd(running: Running, body: bytes | None = None) -> None:
    status, answer = await running.post("argocd", body or argocd_sync(), {"Authorization": f"Bearer {SECRET}"})
    assert status == 202, answer


async def report_rollout(running: Running, *, sha: str = SHA, at: str = "2019-05-15T15:25:02Z") -> Any:
    record = {"kind": "deploy", "entity": ENTITY, "title": "Rollout hello-world", "timestamp": at, "sha": sha,
              "environment": "production", "customData": {"images": {"hello-world": IMAGE}}}
    status, answer = await post_records(running.bridge, [record])
    assert status == 202, answer
    return answer


@pytest.fixture
def start(start_on_queue: StartOnQueue) -> Start:
    """Start bridges on one queue (a restart is a stop and a start); all are stopped at teardown."""

    async def _start(**deploys: Any) -> Running:
        return await start_on_queue([GITHUB, ARGOCD], deploys)

    return _start


async def restart(running: Running, start: Start, **deploys: Any) -> Running:
    await running.bridge.stop(deadline=2)
    return await start(**deploys)


def deploy_writes(log: list[dict[str, Any]]) -> list[str]:
    return [entry["method"] for entry in log if "/deploys" in entry["path"] and entry["method"] != "GET"]


ORDERS: dict[str, tuple[Callable[[Running], Awaitable[None]], ...]] = {"github-argocd-rollout": (report_github, report_argocd, report_rollout),
          "rollout-argocd-github": (report_rollout, report_argocd, report_github)}


@pytest.mark.parametrize("order", ORDERS)
async def test_three_sources_of_one_change_are_one_deploy_across_a_restart(start: Start, order: str) -> None:
    first, second, third = ORDERS[order]
    running = await start()
    await first(running)
    await running.settled()
    running = await restart(running, start)
    await second(running)
    await third(running)
    state = await running.settled()
    [deploy] = state["deploys"][ENTITY]
    assert deploy["sha"] == SHA and deploy["environment"] == "production"
    sources = deploy["customData"]["sources"]
    assert sorted(s["source"] for s in sources) == ["argocd", "github", "native"]
    assert len({s["id"] for s in sources}) == 3
    assert "images" in deploy["customData"]  # Argo CD's or the rollout's, whichever came first
    assert deploy["timestamp"] == min(["2019-05-15T15:20:55.000Z", "2019-05-15T15:24:10.000Z",
                                       "2019-05-15T15:25:02.000Z"])
    writes = deploy_writes(await sim_requests(running.cortex))
    assert writes.count("POST") == 1 and writes.count("PUT") <= 2


async def test_later_reports_wait_for_the_uuid_of_the_first(start: Start) -> None:
    # All three before anything is delivered: one POST, the others PUT once it answered.
    running = await start()
    await report_github(running)
    await report_argocd(running)
    await report_rollout(running)
    state = await running.settled()
    assert len(state["deploys"][ENTITY]) == 1
    assert len(state["deploys"][ENTITY][0]["customData"]["sources"]) == 3
    assert deploy_writes(await sim_requests(running.cortex)).count("POST") == 1


async def test_rollout_complete_takes_the_latest_time(start: Start) -> None:
    running = await start(timestamp="rollout-complete")
    await report_github(running)
    await report_rollout(running)
    [deploy] = (await running.settled())["deploys"][ENTITY]
    assert deploy["timestamp"] == "2019-05-15T15:25:02.000Z"


async def test_different_sha_environment_or_time_are_separate_deploys(start: Start) -> None:
    running = await start()
    await report_github(running)
    await report_rollout(running, sha="0" * 40)  # another change
    await report_github(running, github_status(environment="staging"))  # another environment
    await report_argocd(running, argocd_sync(finished="2019-05-15T16:20:56Z"))  # an hour later: outside the window
    deploys = (await running.settled())["deploys"][ENTITY]
    assert len(deploys) == 4
    assert all("sources" not in d["customData"] for d in deploys), "a report alone is POSTed as it is"


async def test_the_same_sha_after_another_is_a_new_deploy(start: Start) -> None:
    running = await start()
    await report_github(running)
    await running.settled()
    await report_rollout(running, sha="1" * 40, at="2019-05-15T15:22:00Z")
    await running.settled()
    await report_argocd(running)  # SHA again, within the window of the first: a redeploy, not a merge
    deploys = (await running.settled())["deploys"][ENTITY]
    assert [d["sha"] for d in deploys] == [SHA, "1" * 40, SHA]


async def test_enrich_only_and_off(start: Start) -> None:
    running = await start(sources={"argocd": "enrich-only", "native": "off"})
    await report_argocd(running)  # nothing to enrich: not stored
    answer = await report_rollout(running)  # off
    assert (await running.settled())["counts"]["deploys"] == 0
    # The 2xx says so: the id is not among the accepted, it is skipped with the reason, and counted.
    assert answer["accepted"] == 0 and answer["ids"] == [] and len(answer["skipped"]["ids"]) == 1
    assert "deploys are `off`" in answer["skipped"]["reason"]
    assert metrics.RECORDS_SKIPPED.labels("native", "deploy")._value.get() >= 1
    await report_github(running)
    await report_argocd(running, argocd_sync(finished="2019-05-15T15:24:11Z"))  # enriches GitHub's
    [deploy] = (await running.settled())["deploys"][ENTITY]
    assert sorted(s["source"] for s in deploy["customData"]["sources"]) == ["argocd", "github"]


async def test_coalescing_off_posts_every_report(start: Start) -> None:
    running = await start(coalesce=False)
    await report_github(running)
    await report_argocd(running)
    await report_rollout(running)
    assert len((await running.settled())["deploys"][ENTITY]) == 3


async def test_a_dead_lettered_first_report_leaves_the_next_to_create(start: Start) -> None:
    running = await start()
    running.cortex.config.faults = SimFaults(reject_bodies_containing="Codertocat/Hello-World/deployments")
    await report_github(running)  # its URL is refused: 400, dead-lettered
    await running.settled()
    assert await running.bridge.queue.dead_counts_by_kind() == {"deploy": 1}
    running.cortex.config.faults = SimFaults()
    await report_argocd(running)
    await report_rollout(running)
    [deploy] = (await running.settled())["deploys"][ENTITY]
    assert sorted(s["source"] for s in deploy["customData"]["sources"]) == ["argocd", "native"]
    assert deploy_writes(await sim_requests(running.cortex)).count("POST") == 2  # the refused one, then argocd's


async def test_an_unanswered_put_is_repeated_and_an_unanswered_post_read_back(start: Start) -> None:
    running = await start()
    running.cortex.config.faults = SimFaults(drop_after_commit_every=1)
    await report_github(running)  # the POST is stored, its answer lost: read back for the uuid
    await report_argocd(running)  # waits, queued, until the read-back named the uuid
    await wait_until(lambda: _lost(running, "POST"))
    running.cortex.config.faults = SimFaults()
    await running.settled(timeout=20)
    running.cortex.config.faults = SimFaults(drop_after_commit_every=1)
    await report_rollout(running)  # the PUT is stored, its answer lost: simply repeated
    await wait_until(lambda: _lost(running, "PUT"))
    running.cortex.config.faults = SimFaults()
    [deploy] = (await running.settled(timeout=20))["deploys"][ENTITY]
    assert sorted(s["source"] for s in deploy["customData"]["sources"]) == ["argocd", "github", "native"]
    assert deploy_writes(await sim_requests(running.cortex)).count("POST") == 1


async def _lost(running: Running, method: str) -> bool:
    return any(e["method"] == method and e["status"] == 0 for e in await sim_requests(running.cortex))
