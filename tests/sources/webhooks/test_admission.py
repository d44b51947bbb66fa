"""The shared webhook pipeline over HTTP: size, content type, parsing, entity resolution, dead letters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.queue import inspect
from tests.support.queue_file import stored_rows
from tests.support.webhooks import SECRET, Running, StartBridge, fixture_bytes, github_signature, only

GITHUB: dict[str, Any] = {"name": "github", "type": "github", "secrets": [SECRET]}
RELEASE = "github/release.published.json"


async def deliver(running: Running, body: bytes, content_type: str | None = "application/json",
                  event: str = "release", source: str = "github") -> tuple[int, Any]:
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": github_signature(body)}
    return await running.post(source, body, headers, content_type)


async def test_body_over_the_source_limit_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "max_body_bytes": 2048})
    status, answer = await deliver(running, fixture_bytes(RELEASE))
    assert (status, answer) == (413, {"error": "body larger than 2048 bytes"})
    assert await running.queued_ids() == set()


async def test_body_over_the_ingest_limit_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB, max_body_bytes=4096)
    body = fixture_bytes(RELEASE)
    assert len(body) > 4096
    assert (await deliver(running, body))[0] == 413
    assert await running.queued_ids() == set()


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_wrong_content_type_is_refused(start_bridge: StartBridge, content_type: str | None) -> None:
    running = await start_bridge(GITHUB)
    status, answer = await deliver(running, fixture_bytes(RELEASE), content_type)
    assert status == 415 and "is not accepted (application/json)" in answer["error"]
    assert await running.queued_ids() == set()


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b'{"action": "published"', b"[" * 100_000 + b"]" * 100_000])
async def test_malformed_json_is_refused(start_bridge: StartBridge, body: bytes) -> None:
    running = await start_bridge(GITHUB)
    status, answer = await deliver(running, body)
    assert status == 400 and answer["error"].startswith("body is not valid JSON")
    assert await running.queued_ids() == set()


@pytest.mark.parametrize("body", [b"[]", b"42", b'"text"', b"null"])
async def test_json_that_is_not_an_object_is_refused(start_bridge: StartBridge, body: bytes) -> None:
    running = await start_bridge(GITHUB)
    assert await deliver(running, body) == (400, {"error": "payload must be a JSON object"})


async def test_missing_event_header_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes(RELEASE)
    answer = await running.post("github", body, {"X-Hub-Signature-256": github_signature(body)})
    assert answer == (400, {"error": "missing X-GitHub-Event header"})


async def test_unknown_source_name_is_not_found(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    assert (await deliver(running, fixture_bytes(RELEASE), source="gitlab"))[0] == 404


async def test_static_map_wins_over_template_and_catalog(start_bridge: StartBridge) -> None:
    entity = {"static": {"codertocat/hello-world": "octo-repo"}, "template": "{repository.name}"}
    running = await start_bridge({**GITHUB, "entity": entity})
    assert (await deliver(running, fixture_bytes(RELEASE)))[0] == 202
    assert list((await running.settled())["events"]) == ["octo-repo"]


async def test_template_wins_over_catalog(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "entity": {"template": "{repository.owner.login}-{repository.id}"}})
    status, answer = await deliver(running, fixture_bytes(RELEASE))
    assert status == 202
    # No such entity in Cortex: the record waits for it (404s are retried), it is not lost.
    records = stored_rows(running.bridge.queue, "SELECT body FROM records")
    assert [json.loads(r[0])["entity"] for r in records] == ["Codertocat-186853002"]


async def test_catalog_lookup_resolves_the_repository(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    assert (await deliver(running, fixture_bytes(RELEASE)))[0] == 202
    assert only((await running.settled())["events"], "hello-world")["type"] == "RELEASE"


async def test_unresolvable_entity_is_kept_as_a_dead_letter(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "entity": {"lookup": False}})
    status, answer = await deliver(running, fixture_bytes(RELEASE))
    assert status == 202 and (answer["accepted"], answer["dead_lettered"]) == (0, 1)
    assert answer["reasons"] == ["entity-unresolved"]
    dead = inspect.dlq_list(inspect.open_file(running.bridge.settings.queue.path), limit=10, reason=None)
    assert [(d["reason"], d["detail"]) for d in dead] == [
        ("entity-unresolved",
         "no static entry for Codertocat/Hello-World; no template; catalog lookup disabled (entity.lookup: false)")]
    [record] = await running.dead_records()
    # The best guess (the repository name) is the tag: create that entity and `dlq replay`.
    assert (record["kind"], record["entity"], record["type"]) == ("event", "Hello-World", "RELEASE")
    assert (await running.settled())["counts"]["events"] == 0


async def test_repository_unknown_to_the_catalog_is_a_dead_letter(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes("github/release.published.json").replace(b"Codertocat/Hello-World", b"Codertocat/Unknown")
    status, answer = await deliver(running, body)
    assert status == 202 and answer["reasons"] == ["entity-unresolved"]
    dead = stored_rows(running.bridge.queue, "SELECT reason, detail FROM dead")
    assert dead == [("entity-unresolved", "no static entry for Codertocat/Unknown; no template; "
                                          "no catalog entity has git repository Codertocat/Unknown")]


async def test_failed_catalog_lookup_is_a_dead_letter(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    await running.cortex.outage(None)
    try:
        status, answer = await deliver(running, fixture_bytes(RELEASE))
    finally:
        await running.cortex.resume()
    assert status == 202 and answer["reasons"] == ["entity-lookup-failed"]
    [(reason, detail)] = stored_rows(running.bridge.queue, "SELECT reason, detail FROM dead")
    assert reason == "entity-lookup-failed" and detail.startswith("catalog lookup of Codertocat/Hello-World failed")


async def test_redelivery_after_a_mapping_fix_is_not_taken_for_the_dead_letter(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "entity": {"lookup": False}},
                                 {**GITHUB, "name": "github-fixed"})
    body = fixture_bytes(RELEASE)
    assert (await deliver(running, body))[1]["dead_lettered"] == 1
    status, answer = await deliver(running, body, source="github-fixed")
    assert status == 202 and answer["accepted"] == 1 and "duplicate_delivery" not in answer
    assert only((await running.settled())["events"], "hello-world")["type"] == "RELEASE"
