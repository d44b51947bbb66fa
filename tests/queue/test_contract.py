"""The queue contract: every QueueBackend operation, run against SQLite and PostgreSQL alike.

The docstrings of DurableQueue's methods are the contract; each test states one clause of it
and runs on both backends (``backend`` is parameterized), so a second backend cannot drift.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge.queue import BatchPolicy, QueueFull, RawInput
from bridge.queue.outcomes import point_key
from bridge.records import lane_of
from tests.queue.contract import Opener, events, points, postgres_opener, sqlite_opener

ONE_EVENT = BatchPolicy(max_items={"event": 1, "metric": 100})
MANY = BatchPolicy(max_items={"event": 10, "metric": 100})


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "q.db")
    dsn: str = request.getfixturevalue("pg_dsn")
    return postgres_opener(dsn)


async def test_append_dedupes_by_delivery_id_and_by_record_id(backend: Opener) -> None:
    queue = await backend()
    first = await queue.append(events(1, 2), delivery=("gh", "d-1"))
    again = await queue.append(events(1, 2, 3), delivery=("gh", "d-1"))
    overlap = await queue.append(events(2, 3))
    assert first.new_ids == [r.id for r in events(1, 2)] and not first.duplicate_delivery
    assert again.duplicate_delivery and again.new_ids == []
    assert overlap.new_ids == [events(3)[0].id] and overlap.duplicate_ids == [events(2)[0].id]
    assert queue.depth == 3
    await queue.close()


async def test_concurrent_appends_of_one_delivery_store_it_once(backend: Opener) -> None:
    queue = await backend()
    results = await asyncio.gather(*(queue.append(events(1, 2), delivery=("gh", "same")) for _ in range(8)))
    assert sum(1 for r in results if not r.duplicate_delivery) == 1
    assert sum(len(r.new_ids) for r in results) == 2 and queue.depth == 2
    await queue.close()


async def test_append_refuses_when_full_and_stores_nothing(backend: Opener) -> None:
    queue = await backend(max_records=2)
    await queue.append(events(1, 2))
    with pytest.raises(QueueFull):
        await queue.append(events(3))
    assert queue.depth == 2 and queue.is_full
    await queue.close()


async def test_source_state_is_written_with_records_and_read_forgotten_purged(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1), state_updates={"k8s/a/1": "v1", "k8s/a/2": ""})
    await queue.put_state({"k8s/b/1": "", "cdevents:x": "7", "k8s/a/1": "v2"})
    assert await queue.get_state("k8s/a/1") == "v2" and await queue.get_state("never") is None
    assert await queue.get_states("k8s/") == {"k8s/a/1": "v2", "k8s/a/2": "", "k8s/b/1": ""}
    assert await queue.purge_empty_states("k8s/a/") == 1
    assert await queue.forget_state(["k8s/a/1", "never"]) == 1
    assert await queue.get_states("k8s/") == {"k8s/b/1": ""}
    await queue.close()


async def test_hostile_state_keys_find_their_own_rows(backend: Opener) -> None:
    queue = await backend()
    key = "cdevents:\ud800sub\x00ject"
    await queue.put_state({key: "started"})
    assert await queue.get_state(key) == "started"
    assert list(await queue.get_states("cdevents:")) != []
    assert await queue.get_states_of([key, "cdevents:other"]) == {key: "started"}
    assert await queue.forget_state([key]) == 1
    await queue.close()


async def test_state_of_many_keys_is_read_by_key(backend: Opener) -> None:
    queue = await backend()
    await queue.put_state({f"edges/a/{n}": str(n) for n in range(1200)} | {"edges/b/1": "other"})
    wanted = [f"edges/a/{n}" for n in range(0, 1300, 3)]  # beyond the stored ones too
    assert await queue.get_states_of(wanted) == {k: k.rsplit("/", 1)[1] for k in wanted if int(k.rsplit("/", 1)[1]) < 1200}
    assert await queue.get_states_of([]) == {}
    await queue.close()


async def test_claim_takes_the_oldest_due_lane_up_to_the_policy(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2, 3, entity="a"))
    await queue.append(events(4, entity="b"))
    first = await queue.claim(BatchPolicy(max_items={"event": 2}))
    assert [q.record.id for q in first] == [r.id for r in events(1, 2, entity="a")]
    second = await queue.claim(BatchPolicy(max_items={"event": 2}))
    assert [q.record.id for q in second] == [events(3, entity="a")[0].id]
    third = await queue.claim(BatchPolicy(max_items={"event": 2}))
    assert [q.record.id for q in third] == [events(4, entity="b")[0].id]
    assert await queue.claim(MANY) == []
    await queue.close()


async def test_claim_respects_the_byte_cap_but_takes_at_least_one(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2, 3))
    claimed = await queue.claim(BatchPolicy(max_items={"event": 10}, max_bytes={"event": 1}))
    assert len(claimed) == 1
    await queue.close()


async def test_a_lane_with_an_ambiguous_record_is_held_when_the_policy_says_so(backend: Opener) -> None:
    queue = await backend()
    await queue.append(points(1))
    (held,) = await queue.claim(MANY)
    await queue.mark_ambiguous([held.seq], "timeout")
    await queue.append(points(2))
    hold = BatchPolicy(max_items={"metric": 100}, hold_ambiguous_lanes=frozenset({"metric"}))
    assert await queue.claim(hold) == []
    assert [q.record.id for q in await queue.claim(MANY)] == [points(2)[0].id]
    await queue.close()


async def test_delivered_records_leave_the_queue_and_stay_deduplicated(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1) + points(5))
    batch = await queue.claim(MANY) + await queue.claim(MANY)
    await queue.mark_delivered([(q.seq, "uuid-1") for q in batch])
    assert queue.depth == 0
    assert (await queue.append(events(1))).new_ids == []
    counts, moving = await queue.delivered_points(lane_of(points(5)[0]), time.time() - 60)
    assert counts == {point_key(1_700_000_005, 5.0): 1} and moving
    stats = await queue.stats()
    assert stats["delivered_history"] == 2 and stats["undelivered"] == 0
    await queue.close()


async def test_reschedule_puts_back_due_later_and_counts_the_attempt(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1))
    (q,) = await queue.claim(MANY)
    due = time.time() + 100
    await queue.reschedule([q.seq], next_attempt_at=due, error="503", count_attempt=True)
    assert await queue.claim(MANY) == []
    assert await queue.next_due_at() == pytest.approx(due)
    (again,) = await queue.claim(MANY, now=due + 1)
    assert again.attempts == 1 and again.first_failure_at is not None
    await queue.reschedule([again.seq], next_attempt_at=0, error="429", count_attempt=False)
    (third,) = await queue.claim(MANY)
    assert third.attempts == 1
    await queue.close()


async def test_retry_now_releases_waiting_records_all_by_id_or_only_the_parked(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2, 3))
    claimed = [(await queue.claim(ONE_EVENT))[0] for _ in range(3)]
    later = time.time() + 1000
    await queue.reschedule([claimed[0].seq], next_attempt_at=later, error="entity not found", count_attempt=True,
                           parked=True)
    await queue.reschedule([q.seq for q in claimed[1:]], next_attempt_at=later, error="503", count_attempt=True)
    assert await queue.retry_now(parked=True) == 1
    (parked,) = await queue.claim(ONE_EVENT)
    assert parked.seq == claimed[0].seq and parked.attempts == 1
    assert await queue.retry_now(ids=[claimed[1].record.id]) == 1
    assert [q.seq for q in await queue.claim(ONE_EVENT)] == [claimed[1].seq]
    assert await queue.retry_now() == 1  # the last one; the claimed ones are never touched
    assert [q.seq for q in await queue.claim(ONE_EVENT)] == [claimed[2].seq]
    assert await queue.retry_now() == 0
    await queue.close()


async def test_stats_count_records_parked_after_a_404_apart(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2, 3))
    first, _ = [(await queue.claim(ONE_EVENT))[0] for _ in range(2)]
    later = time.time() + 1000
    await queue.reschedule([first.seq], next_attempt_at=later, error="entity not found", count_attempt=True,
                           parked=True)
    assert (await queue.stats())["by_state"] == {"parked": 1, "ready": 1, "claimed": 1}
    assert await queue.retry_now(parked=True) == 1
    assert (await queue.stats())["by_state"] == {"ready": 2, "claimed": 1}
    await queue.close()


async def test_weighted_claims_let_a_later_event_jump_a_metric_backlog(backend: Opener) -> None:
    queue = await backend()
    await queue.append([p for lane in range(5) for p in points(*range(lane * 10, lane * 10 + 10),
                                                              entity=f"svc-{lane}")])
    await queue.append(events(1))
    weighted = BatchPolicy(max_items=ONE_EVENT.max_items, kind_weights={"event": 16, "metric": 1})
    assert (await queue.claim(weighted))[0].record.kind == "event"
    assert (await queue.claim(weighted))[0].record.kind == "metric"
    await queue.close()


async def test_weighted_claims_still_serve_a_kind_the_policy_does_not_name(backend: Opener) -> None:
    # A 202'd record must never wait forever because its kind has no weight or batch size.
    queue = await backend()
    await queue.append(points(1, 2))
    only_events = BatchPolicy(max_items={"event": 1}, kind_weights={"event": 16})
    assert [q.record.kind for q in await queue.claim(only_events)] == ["metric"]
    await queue.close()


async def test_weighted_claims_take_turns_among_the_entities_of_a_kind(backend: Opener) -> None:
    # One noisy entity's backlog, queued first, must not hold the whole metric share.
    queue = await backend()
    await queue.append(points(*range(500), entity="noisy"))
    for quiet in ("a", "b", "c"):
        await queue.append(points(*range(1000, 1010), entity=quiet))
    weighted = BatchPolicy(max_items={"metric": 100}, kind_weights={"metric": 1})
    entities = [(await queue.claim(weighted))[0].record.entity for _ in range(8)]
    assert sorted(entities[:4]) == ["a", "b", "c", "noisy"], entities
    assert entities[4:] == ["noisy"] * 4, entities
    assert await queue.claim(weighted) == []
    await queue.close()


async def test_weighted_claims_take_turns_among_the_sources_of_a_kind(backend: Opener) -> None:
    # A storm of many lanes from one source must not hold the kind's share either: the quiet
    # source's one lane (last in lane order) gets every other claim.
    queue = await backend()
    for n in range(6):
        await queue.append(points(*range(n * 200, n * 200 + 200), entity=f"storm-{n}", source="storm"))
    await queue.append(points(*range(5000, 5300), entity="zzz-quiet", source="quiet"))
    weighted = BatchPolicy(max_items={"metric": 100}, kind_weights={"metric": 1})
    served = [(await queue.claim(weighted))[0].record.provenance.source for _ in range(6)]
    assert served.count("quiet") == 3 and served[0] != served[1], served
    await queue.close()


async def test_turns_skip_held_and_backing_off_lanes_however_many(backend: Opener) -> None:
    # More lanes backing off than one choice may probe: the claim still finds the due lane,
    # and never one held by an ambiguous record.
    queue = await backend()
    await queue.append([p for n in range(40) for p in points(n, entity=f"later-{n:02}")])
    waiting = [q.seq for _ in range(40) for q in await queue.claim(MANY)]
    await queue.reschedule(waiting, next_attempt_at=time.time() + 3600, error="503", count_attempt=True)
    await queue.append(points(100, entity="held"))
    (held,) = await queue.claim(MANY)
    await queue.mark_ambiguous([held.seq], "timeout")
    await queue.append(points(101, entity="held") + points(102, entity="zz-due"))
    weighted = BatchPolicy(max_items={"metric": 100}, kind_weights={"metric": 1},
                           hold_ambiguous_lanes=frozenset({"metric"}))
    assert [q.record.entity for q in await queue.claim(weighted)] == ["zz-due"]
    assert await queue.claim(weighted) == []
    await queue.close()


async def test_ambiguous_records_wait_their_settle_time(backend: Opener) -> None:
    queue = await backend(settle_seconds=100)
    await queue.append(events(1, 2))
    batch = await queue.claim(MANY)
    await queue.mark_ambiguous([q.seq for q in batch], "timeout")
    assert await queue.ambiguous(settled_by=time.time()) == []
    settled_at = await queue.next_settled_at()
    assert settled_at is not None and settled_at > time.time() + 90
    assert [q.seq for q in await queue.ambiguous()] == [q.seq for q in batch]
    assert await queue.claim(MANY) == []  # ambiguous is not ready
    await queue.close()


async def test_in_flight_records_are_resolved_when_the_queue_opens_again(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1) + points(1))
    policy = BatchPolicy(max_items={"event": 1, "metric": 100}, ambiguous_kinds=frozenset({"event"}))
    sending = await queue.claim(policy)
    claimed = await queue.claim(policy)
    await queue.close()  # as after a crash: neither request's outcome was recorded
    queue = await backend()
    assert [q.seq for q in await queue.ambiguous()] == [q.seq for q in sending]
    assert [q.seq for q in await queue.claim(policy)] == [q.seq for q in claimed]
    await queue.close()


async def test_dead_letters_by_seq_by_input_and_raw(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2))
    batch = await queue.claim(MANY)
    await queue.dead_letter([batch[0].seq], reason="rejected", detail="400 \x00 bad \ud800", status=400)
    await queue.dead_letter_input(events(3, 3) + events(2), reason="entity-unresolved", detail="x")
    raw = RawInput(source="events", input_id="t/0/1", reason="invalid_json", detail="bad", payload=b"\x00{")
    ids = await queue.dead_letter_raw([raw])
    assert await queue.dead_letter_raw([raw]) == ids
    assert await queue.dead_counts_by_kind() == {"event": 2, "raw_input": 1}
    assert queue.depth == 1
    assert (await queue.append(events(1, 3))).new_ids == []  # dead-lettered ids stay known
    stats = await queue.stats()
    assert stats["dead_letters"] == 3 and stats["dead_by_reason"] == {
        "rejected": 1, "entity-unresolved": 1, "invalid_json": 1}
    await queue.close()


async def test_history_is_pruned_and_a_pruned_id_may_come_again(backend: Opener) -> None:
    queue = await backend(history_seconds=0.001)
    await queue.append(events(1), delivery=("gh", "d"))
    batch = await queue.claim(MANY)
    await queue.mark_delivered([(q.seq, None) for q in batch])
    await asyncio.sleep(0.01)
    assert await queue.prune_history(chunk=1) == 2  # the delivered id and the delivery id
    assert (await queue.append(events(1), delivery=("gh", "d"))).new_ids == [events(1)[0].id]
    await queue.close()


async def test_stats_gauges_and_probe(backend: Opener) -> None:
    queue = await backend()
    await queue.append(events(1, 2) + points(1))
    await queue.claim(ONE_EVENT)
    stats = await queue.stats()
    assert stats["by_state"] == {"claimed": 1, "ready": 2} and stats["by_kind"] == {"event": 2, "metric": 1}
    assert stats["undelivered_bytes"] > 0 and stats["oldest_age_seconds"] >= 0
    await queue.refresh_gauges()
    assert queue.depth == 3 and await queue.probe_writable() and queue.writable
    await queue.close()


async def test_spend_log_records_at_the_clock_and_expires_when_asked(backend: Opener) -> None:
    queue = await backend()
    await queue.record_spends(2, clock=lambda: 100.0, expiry=lambda stamp: None)
    await queue.record_spends(1, clock=lambda: 200.0, expiry=lambda stamp: None)
    assert await queue.load_spends(150.0) == [200.0]
    await queue.record_spends(1, clock=lambda: 300.0, expiry=lambda stamp: stamp - 150.0)
    assert await queue.load_spends(0.0) == [200.0, 300.0]
    await queue.close()


async def test_newest_in_lane_sees_every_undelivered_state(backend: Opener) -> None:
    queue = await backend()
    lane = lane_of(points(1)[0])
    assert await queue.newest_in_lane(lane) is None
    await queue.append(points(1, 2, 3))
    claimed = await queue.claim(BatchPolicy(max_items={"metric": 3}), now=time.time() + 1)
    seqs = sorted(q.seq for q in claimed)
    assert len(seqs) == 3
    await queue.append(events(9))  # another lane, a higher seq: not counted
    assert await queue.newest_in_lane(lane) == seqs[2]  # claimed records are undelivered too
    await queue.mark_delivered([(seqs[2], None)])
    assert await queue.newest_in_lane(lane) == seqs[1]
    await queue.mark_delivered([(seqs[0], None), (seqs[1], None)])
    assert await queue.newest_in_lane(lane) is None
    await queue.close()
