"""The end-to-end property: for random mixed input — valid, hostile and borderline — under a
misbehaving Cortex, every acknowledged record ends delivered exactly once or dead-lettered with
a reason, never stuck, within a bounded time.

Hostile records (lone surrogates, NaN, nesting past the limit) must be refused (400, nothing
stored). Borderline records are accepted and have one right ending each: nesting just inside the
limit and huge integers are delivered; a metric point older than Cortex's window is
dead-lettered ``too_old``; an unknown entity ``max_age`` after its retries; a body Cortex rejects
``rejected``. Cortex meanwhile drops answers after committing (ambiguous), answers 503 at random
and rejects one marked body.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cortex.simulator import SimFaults, SimulatorServer
from bridge.queue import inspect
from bridge.records import BRIDGE_ID_KEY
from bridge.storable import MAX_JSON_DEPTH
from tests.support.cortex import BridgeFactory, hostile_json, sim_config, sim_state, wait_until
from tests.support.ledger import make_record, scaled

POISON = "cortex-says-no"
#: What each kind of input must end as: "delivered", or the dead-letter reason.
VALID, TOO_OLD, UNKNOWN_ENTITY, CORTEX_REJECTS, DEEP_OK, BIG_INT = (
    "valid", "too_old", "unknown_entity", "cortex_rejects", "deep_ok", "big_int")
ENDING = {VALID: "delivered", DEEP_OK: "delivered", BIG_INT: "delivered", TOO_OLD: "too_old",
          UNKNOWN_ENTITY: "max_age", CORTEX_REJECTS: "rejected"}
HOSTILE = ["surrogate", "nan", "too_deep"]


def nest(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


def build(kind: str, shape: str, n: int) -> dict[str, Any]:
    """Record ``n`` of ``kind``, unique by n, shaped as the borderline/hostile case says."""
    record = make_record(kind, n)
    if shape == TOO_OLD:
        record = make_record("metric", n)
        record["timestamp"] = int(time.time()) - 200 * 86400
    elif shape == UNKNOWN_ENTITY:
        record["entity"] = f"not-in-the-catalog-{n % 3}"
    elif shape == CORTEX_REJECTS:
        record = make_record("deploy", n)
        record["title"] = f"{POISON} {n}"
    elif shape == DEEP_OK:
        record = make_record("deploy", n)
        record["customData"] = {"tree": nest(MAX_JSON_DEPTH - 2)}
    elif shape == BIG_INT:
        record = make_record("custom_data", n)
        record["value"] = {"n": n, "big": 2**70}
    elif shape == "surrogate":
        record["title" if kind in ("deploy", "event") else "entity"] = "x\ud800"
    elif shape == "nan":
        record = make_record("custom_data", n)
        record["value"] = float("nan")
    elif shape == "too_deep":
        record = make_record("custom_data", n)
        record["value"] = nest(300)
    return record


batches = st.lists(
    st.lists(st.tuples(st.sampled_from(["deploy", "event", "metric", "custom_data"]),
                       st.sampled_from([VALID] * 6 + [TOO_OLD, UNKNOWN_ENTITY, CORTEX_REJECTS, DEEP_OK, BIG_INT]
                                       + HOSTILE)),
             min_size=1, max_size=6),
    min_size=15, max_size=scaled(30, 120))




def delivered_copies(state: dict[str, Any], acked: dict[str, tuple[str, str, dict[str, Any]]]) -> Counter[str]:
    """How many times Cortex holds each acknowledged record."""
    copies: Counter[str] = Counter()
    for table in ("deploys", "events"):
        for items in state[table].values():
            for item in items:
                copies[str(item.get("customData", {}).get(BRIDGE_ID_KEY))] += 1
    by_point = {(r["key"], r["entity"], float(r["value"])): rid for rid, (kind, _, r) in acked.items()
                if kind == "metric"}
    for key, by_entity in state["metrics"].items():
        for entity, series in by_entity.items():
            for point in series:
                rid = by_point.get((key, entity, float(point["value"])))
                if rid is not None:
                    copies[rid] += 1
    for rid, (kind, _, r) in acked.items():
        if kind == "custom_data":
            stored = state["custom_data"].get(r["entity"], {}).get(r["key"])
            if stored is not None and stored["value"] == r["value"]:
                copies[rid] += 1  # an overwrite is harmless: custom data is a PUT
    return copies


@settings(max_examples=scaled(3, 12), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(plan=batches, seed=st.integers(0, 1000))
async def test_every_acknowledged_record_ends_delivered_once_or_dead_lettered_with_a_reason(
    make_bridge: BridgeFactory, tmp_path: Path, plan: list[list[tuple[str, str]]], seed: int
) -> None:
    faults = SimFaults(drop_after_commit_every=5, error_rate=0.05, seed=seed, latency_ms=2,
                       reject_bodies_containing=POISON)
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=faults)) as sim:
        bridge = await make_bridge(
            sim, cortex={"rate_limit_per_minute": 60_000, "burst": 200, "request_timeout_seconds": 2,
                         "reconcile_settle_seconds": 2.5},
            retry={"max_backoff_seconds": 0.3, "not_found_retry_seconds": 0.5, "max_age_seconds": 4},
            queue={"path": tmp_path / f"queue-{uuid.uuid4().hex}.db"})  # one per example
        acked: dict[str, tuple[str, str, dict[str, Any]]] = {}
        n = seed * 10_000
        url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
        async with aiohttp.ClientSession() as http:
            for batch in plan:
                records = []
                for kind, shape in batch:
                    n += 1
                    records.append((kind, shape, build(kind, shape, n)))
                body = hostile_json({"records": [r for _, _, r in records]})
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.json(content_type=None)
                    hostile = any(shape in HOSTILE for _, shape, _ in records)
                    if hostile:
                        assert resp.status == 400, (resp.status, answer)
                        continue
                    assert resp.status == 202, (resp.status, answer)
                    for rid, (_, shape, record) in zip(answer["ids"], records, strict=True):
                        acked[rid] = (record["kind"], shape, record)
        assert acked, "nothing was acknowledged: the example tested nothing"
        # Never stuck: everything ends within a bounded time.
        await wait_until(lambda: bridge.queue.depth == 0, timeout=90)
        state = await sim_state(sim)
        copies = delivered_copies(state, acked)
        conn = inspect.open_file(bridge.settings.queue.path)
        try:
            for rid, (kind, shape, _) in acked.items():
                entry = inspect.dlq_show(conn, rid)
                want = ENDING[shape]
                if want == "delivered":
                    assert entry is None, (shape, kind, entry)
                    assert copies[rid] == 1, f"{shape} {kind} {rid} is in Cortex {copies[rid]} times"
                else:
                    assert entry is not None and entry["reason"] == want and entry["detail"], (shape, kind, entry)
                    assert copies[rid] == 0, f"dead-lettered {rid} is also in Cortex"
        finally:
            conn.close()
        await bridge.stop(deadline=2)

