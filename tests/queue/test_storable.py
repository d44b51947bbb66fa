"""What is acknowledged is deliverable: a record is refused at the door unless it reads back.

The class of input: deep nesting (past pydantic-core's JSON reader limit of ~200 levels and its
serializer limit of ~255), lone surrogates in any string (a JSON ``\\ud800`` escape decodes to
one; it has no UTF-8 form), non-finite numbers (JSON has none: they were stored as ``null``).
And what the queue does with a stored row that does not read back anyway (written by an older
bridge): dead-letter it with a reason, and keep delivering its batch-mates.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.cortex.simulator import SimulatorServer
from bridge.queue import BatchPolicy, DurableQueue, inspect
from bridge.queue.schema import State
from bridge.records import (
    RECORD_ADAPTER,
    Record,
    UnstorableRecord,
    encode_record,
    record_from_json,
)
from bridge.sources.native import RecordErrors, parse_native
from bridge.storable import MAX_JSON_DEPTH
from tests.support.cortex import BridgeFactory, sim_config, sim_state, wait_until
from tests.support.queue_file import sqlite_queue

POLICY = BatchPolicy(max_items={"metric": 100, "deploy": 1}, ambiguous_kinds=frozenset({"deploy", "metric"}))

lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
hostile_text = st.text(max_size=8) | st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), lone_surrogates,
                                               st.text(max_size=4))
hostile_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                   | st.sampled_from([float("nan"), float("inf"), -float("inf")]) | hostile_text)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """A value wrapped in lists/objects to a depth around the limits that matter."""
    depth = draw(st.sampled_from([0, 1, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 199, 200, 254,
                                  255, 300, 900]) | st.integers(0, 1000))
    value = draw(hostile_scalars)
    wrap_in_dict = draw(st.booleans())
    for _ in range(depth):
        value = {draw(hostile_text): value} if wrap_in_dict else [value]
    return value


hostile_values = st.recursive(hostile_scalars | nested(), lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=8)

BASE: dict[str, dict[str, Any]] = {
    "deploy": {"kind": "deploy", "entity": "svc", "title": "t", "timestamp": 1_760_000_000},
    "event": {"kind": "event", "entity": "svc", "type": "T", "title": "t", "timestamp": 1_760_000_000},
    "metric": {"kind": "metric", "entity": "svc", "key": "lead-time", "timestamp": 1_760_000_000, "value": 1},
    "custom_data": {"kind": "custom_data", "entity": "svc", "key": "k", "value": 1},
}
FIELDS = {"deploy": ["title", "sha", "environment", "url", "customData", "deployer", "entity", "id"],
          "event": ["title", "type", "description", "url", "customData", "entity"],
          "metric": ["value", "key", "entity"],
          "custom_data": ["value", "key", "description", "entity"]}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])
@given(data=st.data())
def test_a_record_is_refused_or_reads_back_exactly(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(BASE)))
    fields = dict(BASE[kind], id="r1", provenance={"source": "t"})
    for name in data.draw(st.lists(st.sampled_from(FIELDS[kind]), min_size=1, max_size=3)):
        value = data.draw(hostile_values)
        if name == "deployer":
            value = {"name": value}
        fields[name] = value
    try:
        record = RECORD_ADAPTER.validate_python(fields)
    except ValidationError as exc:
        message = str(exc)
        assert len(message) < 4000, "a hostile depth must not make a hostile error message"
        return
    # Accepted: it must serialize, read back with the sender's own code, and be the same record.
    assert record_from_json(encode_record(record)) == record


def test_the_audited_inputs_are_refused_with_a_reason() -> None:
    deep: Any = "x"
    for _ in range(230):
        deep = {"a": deep}
    cases = {
        "custom data value NaN": {**BASE["custom_data"], "value": float("nan")},
        "nested NaN in customData": {**BASE["deploy"], "customData": {"a": [1.0, float("inf")]}},
        "lone surrogate in a title": {**BASE["event"], "title": "deploy \ud800"},
        "lone surrogate in a key of customData": {**BASE["deploy"], "customData": {"\udfff": 1}},
        "230 levels in customData": {**BASE["deploy"], "customData": deep},
        "230 levels in a custom data value": {**BASE["custom_data"], "value": deep},
    }
    for name, fields in cases.items():
        try:
            parse_native(json.loads(json.dumps(fields)), source="t")
        except RecordErrors as exc:
            reason = json.dumps(exc.errors).lower()
            assert "nested deeper" in reason or "unicode" in reason or "json number" in reason, (name, reason)
        else:
            raise AssertionError(f"{name}: accepted")


async def test_append_proves_a_record_reads_back_before_anything_is_stored(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    good = parse_native(BASE["metric"], source="t")[0]
    # model_construct skips validation, as a record built by a future code path might.
    bad = type(good).model_construct(**{**dict(good), "id": "bad", "value": float("nan")})
    try:
        await queue.append([good, bad])
    except UnstorableRecord as exc:
        assert exc.record_id == "bad"
    else:
        raise AssertionError("an unreadable record was stored")
    assert queue.depth == 0, "a refused append must store nothing"
    await queue.close()


def corrupt(path: Path, seq_filter: str, body: str) -> None:
    """Overwrite stored bodies, as a file written by an older bridge (or a bit flip) would hold."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE records SET body = ? WHERE {seq_filter}", (body,))
    conn.close()


UNREADABLE_BODIES = [
    json.dumps({"kind": "metric", "id": "x", "entity": "svc", "key": "lead-time", "timestamp": "2026-01-01T00:00:00Z",
                "value": None, "provenance": {"source": "t", "received_at": "2026-01-01T00:00:00Z"}}),
    '{"kind": "metric", "deep": ' + "[" * 250 + "]" * 250 + "}",
    "not json at all",
]


async def test_an_unreadable_row_is_dead_lettered_and_its_batch_mates_are_claimed(tmp_path: Path) -> None:
    for n, body in enumerate(UNREADABLE_BODIES):
        path = tmp_path / f"q{n}.db"
        queue = await DurableQueue.open(path)
        records: list[Record] = [parse_native({**BASE["metric"], "timestamp": 1_760_000_000 + i, "value": i},
                                              source="t")[0] for i in range(5)]
        await queue.append(records)
        await queue.close()
        corrupt(path, "seq = 3", body)
        queue = await DurableQueue.open(path)
        claimed = await queue.claim(POLICY)
        assert [q.record.id for q in claimed] == [r.id for i, r in enumerate(records) if i != 2]
        entry = inspect.dlq_show(queue.conn, records[2].id)
        assert entry is not None and entry["reason"] == "unreadable", entry
        assert "does not read back" in entry["detail"]
        assert await queue.claim(POLICY) == [], "nothing else is due"
        await queue.close()


async def test_an_unreadable_ambiguous_row_never_stops_the_read_back(tmp_path: Path,
                                                                     make_bridge: BridgeFactory) -> None:
    # A crash left deploys SENDING; one of their rows no longer reads back. After the restart the
    # reconcile loop must dead-letter that one, read the rest back, deliver them once, and the
    # bridge must stop cleanly.
    path = tmp_path / "queue.db"
    queue = await DurableQueue.open(path)
    deploys = [parse_native({**BASE["deploy"], "entity": "checkout-service", "title": f"d{i}",
                             "timestamp": 1_760_000_000 + i}, source="t")[0] for i in range(4)]
    await queue.append(deploys)
    for _ in deploys:
        assert await queue.claim(POLICY)  # SENDING: the crash happened with these in flight
    await queue.close()
    corrupt(path, "seq = 2", UNREADABLE_BODIES[1])
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records WHERE state = ?", (State.SENDING,)).fetchone()[0] == 4
    conn.close()
    async with SimulatorServer(sim_config()) as sim:
        bridge = await make_bridge(sim, queue_path=path)
        await wait_until(lambda: bridge.queue.depth == 0, timeout=30)
        state = await sim_state(sim)
        titles = sorted(d["title"] for d in state["deploys"]["checkout-service"])
        assert titles == ["d0", "d2", "d3"]
        later = parse_native({**BASE["deploy"], "entity": "checkout-service", "title": "after"}, source="t")[0]
        await bridge.queue.append([later])
        await wait_until(lambda: bridge.queue.depth == 0, timeout=30)
        assert (await sim_state(sim))["counts"]["deploys"] == 4
        entry = inspect.dlq_show(sqlite_queue(bridge.queue).conn, deploys[1].id)
        assert entry is not None and entry["reason"] == "unreadable"
        await bridge.stop(deadline=2)  # must not raise: every loop is still alive
