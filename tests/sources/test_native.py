"""The native endpoint: 202 only when durable; every bad input a clear 4xx that stores nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.cortex.simulator import SimulatorServer
from bridge.sources.admit import json_answer
from bridge.sources.native import RecordErrors, parse_native
from tests.support.cortex import BridgeFactory, post_records, sim_state, wait_until
from tests.support.queue_file import queue_pragma
from tests.support.records import event


async def depth(bridge: Any) -> int:
    return int((await bridge.queue.stats())["undelivered"])


async def test_accepts_single_object_and_list_and_returns_ids(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    await sim.outage(None)  # keep records queued so the test sees them
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False})
    status, body = await post_records(bridge, event(1))
    assert status == 202 and body["accepted"] == 1 and len(body["ids"]) == 1
    status, body2 = await post_records(bridge, {"records": [event(1), event(2)]})
    assert status == 202 and body2["ids"][0] == body["ids"][0]  # same content -> same id
    assert await depth(bridge) == 2  # ...stored once


async def test_bad_inputs_get_4xx_and_leave_the_queue_unchanged(sim: SimulatorServer,
                                                                make_bridge: BridgeFactory) -> None:
    await sim.outage(None)
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False}, http={"max_body_bytes": 10_000})
    await post_records(bridge, event(1))
    cases: list[tuple[dict[str, Any], int]] = [
        ({"raw": b"{not json"}, 400),
        ({"raw": b"[]"}, 400),
        ({"raw": json.dumps({"records": [event(2), {**event(3), "timestamp": "yesterday"}]}).encode()}, 400),
        ({"raw": json.dumps({"kind": "deploy", "entity": "svc", "title": 5, "timestamp": 0, "type": "X"}).encode()}, 400),
        ({"raw": json.dumps({"kind": "metric", "entity": "svc", "key": "k1", "timestamp": 0, "value": "NaN"}).encode()}, 400),
        ({"raw": json.dumps({"kind": "nope", "entity": "svc"}).encode()}, 400),
        ({"raw": b"[" * 100_000}, 413),
        ({"raw": b"x" * 20_000}, 413),
        ({"raw": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
    ]
    for case, expected in cases:
        status, body = await post_records(bridge, None, raw=case["raw"], headers=case.get("headers"))
        assert status == expected, (case, status, body)
        assert isinstance(body, dict) and body["error"]
    assert await depth(bridge) == 1


async def test_invalid_record_in_a_batch_is_named_and_nothing_is_stored(sim: SimulatorServer,
                                                                       make_bridge: BridgeFactory) -> None:
    await sim.outage(None)
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False})
    status, body = await post_records(bridge, {"records": [event(1), {**event(2), "type": ""}, event(3)]})
    assert status == 400
    assert [e["index"] for e in body["errors"]] == [1]
    assert "type" in body["errors"][0]["errors"][0]
    assert await depth(bridge) == 0


async def test_bearer_token_is_required_when_configured(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    await sim.outage(None)
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False}, ingest={"token": "s3cret"})
    assert (await post_records(bridge, event(1)))[0] == 401
    assert (await post_records(bridge, event(1), headers={"Authorization": "Bearer wrong"}))[0] == 401
    assert (await post_records(bridge, event(1), headers={"Authorization": "Bearer s3cret"}))[0] == 202
    assert await depth(bridge) == 1


async def test_full_queue_answers_503_with_retry_after(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    await sim.outage(None)
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False},
                               queue={"max_records": 2, "retry_after_seconds": 7})
    assert (await post_records(bridge, {"records": [event(1), event(2)]}))[0] == 202
    url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
    async with aiohttp.ClientSession() as http, http.post(url, json=event(3)) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    assert await depth(bridge) == 2
    await sim.resume()


async def test_idempotency_key_makes_a_repost_a_no_op(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    await sim.outage(None)
    bridge = await make_bridge(sim, cortex={"verify_token_on_start": False})
    first = await post_records(bridge, event(1), headers={"Idempotency-Key": "abc"})
    second = await post_records(bridge, event(2), headers={"Idempotency-Key": "abc"})
    assert first[0] == second[0] == 202 and second[1]["duplicate_delivery"] is True
    assert await depth(bridge) == 1


async def test_probes(sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    bridge = await make_bridge(sim)
    base = f"http://127.0.0.1:{bridge.ingest_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        async with http.get(f"http://127.0.0.1:{bridge.metrics_port}/metrics") as resp:
            text = await resp.text()
            assert resp.status == 200 and "cortex_bridge_queue_depth" in text
        bridge.draining = True
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503 and "draining" in (await resp.json())["reasons"]
        async with http.post(f"{base}/v1/records", json=event(1)) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers
        bridge.draining = False


async def test_not_ready_at_start_when_the_queue_cannot_write(sim: SimulatorServer, tmp_path: Path) -> None:
    """A restart on a full disk: /readyz must not say ready before any write went through."""
    from bridge.app import Bridge
    from bridge.config import load_settings
    from tests.support.cortex import SIM_TOKEN

    settings = load_settings(None, cortex={"url": sim.url, "token": SIM_TOKEN}, queue={"path": tmp_path / "q.db"},
                             http={"host": "127.0.0.1", "port": 0}, metrics={"host": "127.0.0.1", "port": 0},
                             ingest={"allow_unauthenticated": True}, log={"level": "warning"})
    bridge = await Bridge.create(settings)
    # Every write now fails inside SQLite, as on a full volume (reads still work).
    await queue_pragma(bridge.queue, "query_only = ON")
    await bridge.start()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{bridge.ingest_port}/readyz") as resp:
            assert resp.status == 503
            assert "queue cannot write to disk" in (await resp.json())["reasons"]
        await queue_pragma(bridge.queue, "query_only = OFF")  # space is back
        assert await bridge.queue.probe_writable()
        assert bridge.readiness() == (True, [])
    finally:
        await bridge.stop(deadline=2)


async def test_setting_a_value_back_is_a_new_record_and_cortex_ends_with_it(sim: SimulatorServer,
                                                                            make_bridge: BridgeFactory) -> None:
    # Custom data A, then B, then A again: the third is a restatement, not a repeat of the first.
    bridge = await make_bridge(sim)
    ids = []
    for value in ("tier-1", "tier-2", "tier-1"):
        status, body = await post_records(bridge, {"kind": "custom_data", "entity": "inventory", "key": "tier",
                                                   "value": value})
        assert status == 202 and body["accepted"] == 1
        ids.append(body["ids"][0])
        await wait_until(lambda: _custom_value(sim, "inventory", "tier", value))  # noqa: B023 (awaited here)
    assert len(set(ids)) == 3
    # a deploy posted twice is still one record: only replaced values are restated
    first = await post_records(bridge, {"kind": "deploy", "entity": "inventory", "title": "v1", "timestamp": 1_700_000_000})
    second = await post_records(bridge, {"kind": "deploy", "entity": "inventory", "title": "v1", "timestamp": 1_700_000_000})
    assert first[1]["ids"] == second[1]["ids"]


async def _custom_value(sim: SimulatorServer, entity: str, key: str, value: Any) -> bool:
    stored = (await sim_state(sim))["custom_data"].get(entity, {})
    return bool(stored.get(key, {}).get("value") == value)


@pytest.mark.parametrize("kind", [[], {}, None, 3, ["custom_data"], {"custom_data": 1}])
def test_a_kind_of_any_json_type_is_a_validation_error(kind: Any) -> None:
    # found by the fuzz test: an unhashable kind once raised TypeError (a 500) before validation
    with pytest.raises(RecordErrors) as caught:
        parse_native({"kind": kind, "entity": "inventory", "key": "k", "value": 1}, source="native")
    assert caught.value.errors[0]["index"] == 0


@given(body=st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers() | st.none(), max_size=4),
       quoted=st.text(st.characters(exclude_categories=()), max_size=8))
@example(body={}, quoted="\ud800")
def test_any_answer_body_is_written_as_the_json_it_holds(body: dict[str, Any], quoted: str) -> None:
    """Answers are written by orjson, and by json.dumps what orjson refuses (a lone surrogate a
    reason may quote): either way the client reads back what was meant, never a 500."""
    response = json_answer({**body, "error": quoted}, 400)
    assert response.status == 400 and response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {**body, "error": quoted}
