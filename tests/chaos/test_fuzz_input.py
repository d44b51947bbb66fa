"""Scenario 6: bad input at volume, property-based (hypothesis).

Against a running bridge process (``cortex-bridge run``; Cortex unreachable, so whatever is
accepted stays queued and the queue depth is an exact count of what was stored):

* native record bodies: arbitrary JSON, valid records with fields mutated, deleted or added,
  batches mixing good and bad records, non-JSON bytes;
* headers: content types, bearer tokens, body sizes around the limit, idempotency keys.

Properties: the answer is one of the documented statuses (never a 5xx, never a dropped
connection), a refusal stores nothing, an acceptance stores exactly the ids it returns, and the
process is still alive at the end. The record parser is also fuzzed in-process at higher volume.
The webhook parsers are fuzzed by the webhook suite.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.queue import inspect
from bridge.sources.native import RecordErrors, parse_native
from tests.support.ledger import BASE_TS, make_record, scaled
from tests.support.processes import BridgeProcess, free_port

TOKEN = "fuzz-ingest-token"
MAX_BODY = 64 * 1024
HTTP_EXAMPLES = scaled(150, 3000)
SETTINGS = settings(max_examples=HTTP_EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Target:
    """The bridge under fuzz, a keep-alive connection to it, and what it has stored so far."""

    bridge: BridgeProcess
    db: sqlite3.Connection
    stored_ids: set[str] = field(default_factory=set)
    conn: http.client.HTTPConnection | None = None

    def depth(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.bridge.port, timeout=30)
        try:
            self.conn.request("POST", "/v1/records", body=body, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    # Cortex is a closed port and retries are hours apart: accepted records stay in the queue.
    bridge = BridgeProcess(tmp, f"http://127.0.0.1:{free_port()}", ingest={"token": TOKEN},
                           http={"max_body_bytes": MAX_BODY},
                           cortex={"verify_token_on_start": False},
                           retry={"initial_backoff_seconds": 3600, "max_backoff_seconds": 3600},
                           log={"level": "warning"})
    asyncio.run(bridge.start())
    db = inspect.open_file(bridge.queue)
    try:
        yield Target(bridge, db)
        assert bridge.proc is not None and bridge.proc.poll() is None, "the bridge died under fuzz"
    finally:
        db.close()
        bridge.cleanup()


# -- strategies ------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = ["kind", "entity", "title", "timestamp", "type", "key", "value", "sha", "environment", "url",
          "deployer", "customData", "description", "id", "provenance"]


@st.composite
def mutated_record(draw: st.DrawFn) -> Any:
    """A valid record of some kind, then some of its fields replaced, removed or added."""
    record = make_record(draw(st.sampled_from(["deploy", "event", "metric", "custom_data"])),
                         draw(st.integers(0, 10**6)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["replace", "delete", "odd"]))
        if action == "delete":
            record.pop(name, None)
        elif action == "replace":
            record[name] = draw(json_values)
        else:
            record[name] = draw(st.sampled_from([
                "", " x ", "a/b", "9" * 400, BASE_TS * 1000, -1, 1e308, "2026-13-45T99:00:00Z",
                "NaN", {"$ref": "#"}, ["DEPLOY"], "ROLLBACK", "\u0000", "\ud7ff" * 50, True]))
    return record


bodies = st.one_of(
    mutated_record(),
    st.builds(lambda recs: {"records": recs}, st.lists(mutated_record(), max_size=6)),
    st.lists(mutated_record(), max_size=4),
    json_values,
    st.builds(lambda extra: {"records": extra}, json_values),
)


def encode(body: Any) -> bytes:
    # allow_nan: NaN/Infinity tokens are what a careless producer sends; they must get a 400.
    return json.dumps(body, allow_nan=True).encode()


def check_answer(target: Target, status: int, answer: Any, depth_before: int, *, stores: bool) -> None:
    """A refusal stores nothing; an acceptance stores exactly the ids it names."""
    assert status < 500, (status, answer)
    if status == 202 and stores:
        assert isinstance(answer, dict) and isinstance(answer.get("ids"), list), answer
        if not answer.get("duplicate_delivery"):
            target.stored_ids.update(answer["ids"])
        assert target.depth() == len(target.stored_ids), "an accepted record was not stored (or stored twice)"
    else:
        assert target.depth() == depth_before, f"a {status} answer changed the queue"


# -- tests ---------------------------------------------------------------------------------------


#: Found by this suite: an epoch timestamp beyond what the platform's time_t holds, and a
#: timestamp that is not a string or a number (null, list, object).
OUT_OF_RANGE = {**make_record("event", 1), "timestamp": 1e20}
NULL_TIMESTAMP = {**make_record("deploy", 2), "timestamp": None}
#: A field name that is a lone surrogate (a JSON escape): a 400, never a 500.
SURROGATE_FIELD = {**make_record("event", 3), "\ud800": 1}


@SETTINGS
@given(body=bodies)
@example(body=OUT_OF_RANGE)
@example(body=NULL_TIMESTAMP)
@example(body=SURROGATE_FIELD)
def test_fuzzed_record_bodies_get_202_or_400_and_store_only_what_is_acknowledged(target: Target, body: Any) -> None:
    before = target.depth()
    status, answer = target.post(encode(body), {"Content-Type": "application/json",
                                                "Authorization": f"Bearer {TOKEN}"})
    assert status in (202, 400), (status, answer, body)
    check_answer(target, status, answer, before, stores=True)


media_types = st.sampled_from(["application/json", "application/cloudevents+json", "application/vnd.x+json",
                               "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                               "application/json; charset=utf-8", "APPLICATION/JSON", "", "*/*"])
tokens = st.sampled_from([TOKEN, f"{TOKEN} ", TOKEN.upper(), "", "x" * 300]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=40)


@SETTINGS
@given(ctype=media_types | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
       token=st.none() | tokens, scheme=st.sampled_from(["Bearer", "bearer", "Basic", "Token"]),
       size=st.sampled_from([0, 1, 300, MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY]),
       raw=st.booleans(), key=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20))
def test_fuzzed_headers_get_the_documented_status_and_refusals_store_nothing(
    target: Target, ctype: str, token: str | None, scheme: str, size: int, raw: bool, key: str | None
) -> None:
    if raw:
        body = (b"\xff{\x00" * (size // 3 + 1))[:size]
    else:  # a valid batch, padded with description text up to about `size` bytes
        record = make_record("event", size)
        record["description"] = "x" * max(0, size - len(encode({"records": [record]})))
        body = encode({"records": [record]})
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    before = target.depth()
    status, answer = target.post(body, headers)
    # A header value's surrounding whitespace is not part of it (RFC 9110 §5.5), and an auth
    # scheme is case-insensitive (RFC 9110 §11.1).
    authorized = token is not None and scheme.lower() == "bearer" and token.strip() == TOKEN
    if not authorized:
        assert status == 401, (status, answer)
    elif len(body) > MAX_BODY:
        assert status == 413, (status, answer)
    else:
        assert status in (202, 400, 415), (status, answer)
    check_answer(target, status, answer, before, stores=True)


@settings(max_examples=scaled(2000, 50_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
@example(body=OUT_OF_RANGE)
@example(body=NULL_TIMESTAMP)
def test_record_parser_returns_records_or_record_errors_only(body: Any) -> None:
    # Through the JSON round trip, as the endpoint sees it (NaN survives as float('nan')).
    payload = json.loads(encode(body))
    try:
        records = parse_native(payload, source="fuzz")
    except RecordErrors as exc:
        assert exc.errors and all("errors" in e for e in exc.errors)
        return
    assert records
    for record in records:
        if record.kind == "metric":
            assert math.isfinite(record.value)
