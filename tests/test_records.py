"""The normalized model: validation, timestamps, deterministic ids; and what bodies carry of it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.cortex.endpoints import deploy_or_event_body
from bridge.records import (
    BRIDGE_ID_KEY,
    RECORD_ADAPTER,
    RECORD_ID_NAMESPACE,
    DeployRecord,
    canonical_json,
    format_timestamp,
    lane_of,
    parse_timestamp,
    record_from_json,
    record_id,
    record_to_json,
)
from bridge.storable import json_problem, walk_for_problem

PROV = {"source": "test"}


def test_timestamps_are_sent_as_utc_with_z() -> None:
    ts = datetime(2026, 7, 13, 20, 26, 52, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(ts) == "2026-07-13T18:26:52.123Z"
    rec = DeployRecord(id="a", entity="svc", provenance=PROV, title="t", timestamp="2026-07-13T18:26:52+02:00")
    assert deploy_or_event_body(rec)["timestamp"] == "2026-07-13T16:26:52.000Z"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1767323045, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1767323045000, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_timestamp_inputs(raw: object, expected: datetime) -> None:
    assert parse_timestamp(raw) == expected  # type: ignore[arg-type]


def test_invalid_records_are_rejected_with_field_names() -> None:
    with pytest.raises(ValidationError) as info:
        RECORD_ADAPTER.validate_python(
            {"kind": "deploy", "id": "x", "entity": "svc", "provenance": PROV, "title": "t",
             "timestamp": "2026-01-01T00:00:00Z", "type": "UPGRADE"})
    assert "type" in str(info.value)
    with pytest.raises(ValidationError):
        RECORD_ADAPTER.validate_python(
            {"kind": "metric", "id": "x", "entity": "svc", "provenance": PROV, "key": "k-1",
             "timestamp": "2026-01-01T00:00:00Z", "value": float("nan")})
    with pytest.raises(ValidationError):
        RECORD_ADAPTER.validate_python(
            {"kind": "custom_data", "id": "x", "entity": "a/b", "provenance": PROV, "key": "k", "value": 1})


def test_record_ids_are_deterministic_and_distinct() -> None:
    assert record_id("github", "deploy", 42, "prod") == record_id("github", "deploy", 42, "prod")
    assert record_id("github", "deploy", 42, "prod") != record_id("github", "deploy", 42, "staging")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


#: What record ids are derived from, and what makes orjson's text differ from json.dumps's: floats
#: of small magnitude, non-finite ones, integers beyond 64 bits, non-ASCII and control text, DEL,
#: keys that are not text, datetimes (written through ``str``), tuples, depth beyond orjson's limit.
_ID_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats()
    | st.floats(1e-12, 1e-3) | st.text() | st.text(st.characters(max_codepoint=0x80))
    | st.sampled_from(["\x7f", "\ud800", "1e-7", "0.00001", "service-1", "null"])
    | st.datetimes() | st.datetimes(timezones=st.just(UTC)) | st.dates()
)
_ID_PARTS = st.recursive(
    _ID_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(st.characters(max_codepoint=0x80)) | st.text(), inner, max_size=4)
    | st.dictionaries(st.integers(), inner, max_size=2),
    max_leaves=20)


@given(st.lists(_JSON, min_size=1, max_size=4))
def test_record_ids_are_the_uuid5_of_the_canonical_json_they_always_were(parts: list[object]) -> None:
    # Ids must not change across versions: a producer's retry after an upgrade is still a duplicate.
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    assert record_id(*parts) == str(uuid.uuid5(RECORD_ID_NAMESPACE, canonical))


@given(st.lists(_ID_PARTS, min_size=1, max_size=4))
def test_the_fast_canonical_text_is_json_dumps_byte_for_byte(parts: list[object]) -> None:
    assert canonical_json(tuple(parts)) == json.dumps(
        tuple(parts), sort_keys=True, separators=(",", ":"), default=str).encode()


def test_the_canonical_text_of_what_orjson_writes_otherwise_is_json_dumps() -> None:
    # orjson writes these unlike json.dumps (0.00001, 1e-7, null for NaN, raw DEL and UTF-8) or
    # refuses them (2**64): the fallback must catch every one.
    for value in (1e-5, 1.234e-5, 9.99e-5, 1e-6, 3e-7, 1e-9, -2.5e-8, 1e-10, 1e-4, 1e16, 1e-300,
                  float("nan"), float("-inf"), 2**64, "\x7f", "é"):
        assert canonical_json((value, {"v": [value]})) == json.dumps(
            (value, {"v": [value]}), sort_keys=True, separators=(",", ":")).encode()
    deep: object = 1
    for _ in range(300):  # deeper than orjson writes
        deep = [deep]
    assert canonical_json((deep,)) == json.dumps((deep,), separators=(",", ":")).encode()


_HOSTILE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sampled_from(["\ud800", "a\udfff"]),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(
        st.text() | st.sampled_from(["\ud800"]) | st.integers(), inner, max_size=3), max_leaves=30)


def nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


@given(_HOSTILE_JSON, st.integers(0, 70))
def test_the_fast_storable_check_passes_only_what_the_walk_passes(value: object, depth: int) -> None:
    # The fast check may defer to the walk, never wave through what the walk refuses.
    deep = nested(value, depth)
    assert json_problem(deep) == walk_for_problem(deep)


def test_json_round_trip_keeps_every_field() -> None:
    rec = RECORD_ADAPTER.validate_python(
        {"kind": "deploy", "id": "r1", "entity": "svc", "provenance": PROV, "title": "t",
         "timestamp": "2026-01-01T00:00:00Z", "sha": "abc", "customData": {"n": 1},
         "deployer": {"name": "a", "email": "a@example.com"}})
    assert record_from_json(record_to_json(rec)) == rec


def test_deploy_body_carries_bridge_id_without_touching_user_custom_data() -> None:
    rec = DeployRecord(id="r2", entity="svc", provenance=PROV, title="t", timestamp="2026-01-01T00:00:00Z",
                       custom_data={"branch": "main"})
    body = deploy_or_event_body(rec)
    assert body["customData"] == {"branch": "main", BRIDGE_ID_KEY: "r2"}
    assert rec.custom_data == {"branch": "main"}


def test_lanes_group_what_can_share_a_request() -> None:
    a = RECORD_ADAPTER.validate_python({"kind": "metric", "id": "1", "entity": "svc", "provenance": PROV,
                                        "key": "lead-time", "timestamp": 0, "value": 1})
    b = RECORD_ADAPTER.validate_python({"kind": "metric", "id": "2", "entity": "svc", "provenance": PROV,
                                        "key": "lead-time", "timestamp": 1, "value": 2})
    c = RECORD_ADAPTER.validate_python({"kind": "metric", "id": "3", "entity": "other", "provenance": PROV,
                                        "key": "lead-time", "timestamp": 1, "value": 2})
    assert lane_of(a) == lane_of(b) != lane_of(c)


@pytest.mark.parametrize("bad", [None, [], {}, True, 1e20, 1e308, float("nan"), "2026-13-01T00:00:00Z", "soon"])
def test_bad_timestamps_are_validation_errors_not_crashes(bad: object) -> None:
    with pytest.raises(ValidationError):
        RECORD_ADAPTER.validate_python({"kind": "event", "id": "x", "entity": "svc", "provenance": PROV,
                                        "type": "T", "title": "t", "timestamp": bad})


@given(st.datetimes(timezones=st.timezones()))
def test_format_timestamp_is_strftime_to_the_millisecond(ts: datetime) -> None:
    utc = ts.astimezone(UTC)
    assert format_timestamp(ts) == utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


#: 24 characters ending in Z (the fast path's shape), well formed or nearly so
_STAMP_LIKE = st.builds(
    lambda ts, cut, noise: (format_timestamp(ts)[:cut] + noise + format_timestamp(ts)[cut:])[-24:-1] + "Z",
    st.datetimes(timezones=st.just(UTC)), st.integers(0, 24), st.text(max_size=2))


@given(st.one_of(_STAMP_LIKE, st.datetimes(timezones=st.timezones()).map(format_timestamp)))
def test_the_queues_own_timestamp_text_reads_as_the_general_parser_reads_it(text: str) -> None:
    # "…Z" text takes a fast path; the general parser reads the same instant written with
    # "+00:00" (which is how it always read a "Z"). Same value, same refusals.
    try:
        expected = parse_timestamp(text[:-1] + "+00:00")
    except ValueError:
        with pytest.raises(ValueError):
            parse_timestamp(text)
        return
    parsed = parse_timestamp(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()
