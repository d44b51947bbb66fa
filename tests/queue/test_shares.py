"""Deploys jump a bulk backlog, and bulk kinds keep their share: weighted fair claiming by kind."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.queue import BatchPolicy, DurableQueue
from bridge.queue.shares import KindShares
from bridge.records import Record
from bridge.sources.native import parse_native

KINDS = ("deploy", "event", "metric", "custom_data")
POLICY = BatchPolicy(max_items={"deploy": 1, "event": 1, "metric": 100, "custom_data": 100})
WEIGHTED = BatchPolicy(max_items=POLICY.max_items, kind_weights={"deploy": 16, "event": 16, "metric": 1,
                                                                 "custom_data": 1})


def serve(shares: KindShares, due: set[str]) -> str | None:
    """One claim as the queue makes it: the most owed kind with due work."""
    idle: list[str] = []
    for kind in shares.order():
        if kind in due:
            shares.served(kind, idle)
            return kind
        idle.append(kind)
    return None


@settings(max_examples=200, deadline=None)
@given(weights=st.dictionaries(st.sampled_from(KINDS), st.integers(1, 50), min_size=1),
       claims=st.integers(1, 400))
def test_kinds_always_due_get_claims_in_proportion_to_their_weight(weights: dict[str, int], claims: int) -> None:
    shares = KindShares(weights, KINDS)
    served = {kind: 0 for kind in KINDS}
    for _ in range(claims):
        kind = serve(shares, set(KINDS))
        assert kind is not None
        served[kind] += 1
    total = sum(weights.get(kind, 1) for kind in KINDS)
    for kind in KINDS:
        weight = weights.get(kind, 1)
        fair = claims * weight / total
        # Stride scheduling's bound: at most one claim behind, at most n*w/W ahead (n kinds).
        assert -1 - 1e-9 <= served[kind] - fair <= len(KINDS) * weight / total + 1e-9, (kind, served, fair)


@settings(max_examples=100, deadline=None)
@given(alone=st.integers(1, 500), weights=st.tuples(st.integers(1, 20), st.integers(1, 20)))
def test_a_kind_idle_for_a_while_does_not_come_back_with_a_burst(alone: int, weights: tuple[int, int]) -> None:
    shares = KindShares({"metric": weights[0], "deploy": weights[1]})
    for _ in range(alone):
        assert serve(shares, {"metric"}) == "metric"
    # From now on both have work: neither may take more than its share plus one in a row.
    longest: dict[str, int] = {"metric": 0, "deploy": 0}
    run_kind, run = None, 0
    for _ in range(200):
        kind = serve(shares, {"metric", "deploy"})
        assert kind is not None
        run = run + 1 if kind == run_kind else 1
        run_kind = kind
        longest[kind] = max(longest[kind], run)
    assert longest["deploy"] <= weights[1] // weights[0] + 1 if weights[1] >= weights[0] else longest["deploy"] <= 1
    assert longest["metric"] <= weights[0] // weights[1] + 1 if weights[0] >= weights[1] else longest["metric"] <= 1


def metric_points(lanes: int, per_lane: int) -> list[Record]:
    return [r for lane in range(lanes) for i in range(per_lane) for r in parse_native(
        {"kind": "metric", "entity": f"svc-{lane}", "key": "lead-time", "value": float(i),
         "timestamp": 1_700_000_000 + i}, source="bulk")]


def deploy(n: int) -> Record:
    return parse_native({"kind": "deploy", "entity": "svc-0", "title": f"deploy {n}", "timestamp": 1_700_000_000 + n},
                        source="ci")[0]


async def test_a_deploy_appended_behind_a_metric_backlog_is_claimed_first() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "q.db")
        try:
            await queue.append(metric_points(lanes=50, per_lane=20))
            await queue.append([deploy(1)])
            assert (await queue.claim(WEIGHTED))[0].record.kind == "deploy"
            # Without weights the oldest due record's lane goes first: a metric lane.
            assert (await queue.claim(POLICY))[0].record.kind == "metric"
        finally:
            await queue.close()


async def test_bulk_kinds_keep_their_share_under_a_stream_of_deploys() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "q.db")
        try:
            await queue.append(metric_points(lanes=5, per_lane=1))
            await queue.append([deploy(n) for n in range(100)])
            kinds = [(await queue.claim(WEIGHTED))[0].record.kind for _ in range(34)]
            # deploy 16 : metric 1 (events and custom data have nothing due and bank nothing)
            assert kinds.count("metric") == 2, kinds
        finally:
            await queue.close()
