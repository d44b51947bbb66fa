"""How long a later report of a deploy waits for its creator's uuid (bridge/sender/coalesce.py).

A creator backing off through a Cortex outage, or parked on a 404, is not due for minutes; its
later reports must not be claimed four times a second each meanwhile (a claim, a group read and a
reschedule every time), nor wait past the creator's next attempt, nor longer than the cap.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.config import DeploySettings
from bridge.queue import BatchPolicy, DurableQueue
from bridge.queue.deploy_groups import DeployGroup, DeployPolicy
from bridge.sender.coalesce import WAIT_FOR_UUID_MAX_SECONDS, WAIT_FOR_UUID_SECONDS, Coalescer, resume_at
from bridge.sources.native import parse_native

ONE = BatchPolicy(max_items={"deploy": 1})


def group(due: float | None) -> DeployGroup:
    return DeployGroup(1, "creator", "queued" if due is not None else "dead", None, [], creator_due_at=due)


def test_a_waiting_report_looks_again_after_its_creators_next_attempt_within_the_cap() -> None:
    now = 1_000.0
    assert resume_at(group(None), now) == now + WAIT_FOR_UUID_SECONDS
    assert resume_at(group(now - 5), now) == now + WAIT_FOR_UUID_SECONDS  # due now, or in flight
    assert resume_at(group(now + 5), now) == now + 5 + WAIT_FOR_UUID_SECONDS
    assert resume_at(group(now + 3600), now) == now + WAIT_FOR_UUID_MAX_SECONDS


@pytest.mark.parametrize("creator_delay", [5.0, 600.0])
async def test_a_report_of_a_creator_backing_off_is_put_back_until_then(tmp_path: Path, creator_delay: float) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    queue.deploy_policy = DeployPolicy.of(DeploySettings())
    reports = parse_native({"records": [
        {"kind": "deploy", "entity": "svc", "title": f"report {n}", "sha": "abc", "environment": "prod",
         "timestamp": 1_700_000_000 + n} for n in (1, 2)]}, source="ci")
    try:
        await queue.append(reports)
        [creator] = await queue.claim(ONE)
        creator_due = time.time() + creator_delay
        await queue.reschedule([creator.seq], next_attempt_at=creator_due, error="503", count_attempt=True)
        [later] = await queue.claim(ONE)
        assert later.record.id == reports[1].id
        coalescer = Coalescer(queue, DeploySettings())
        async with coalescer.turn(later) as planned:
            assert planned.write is None  # no uuid yet: it waits
            await coalescer.wait(later, planned)
        expected = min(creator_due + WAIT_FOR_UUID_SECONDS, time.time() + WAIT_FOR_UUID_MAX_SECONDS)
        resumed = planned.resume_at
        assert resumed is not None and resumed == pytest.approx(expected, abs=1.0)
        # Not claimable before then (the creator, not due either, stays put too) ...
        assert await queue.claim(ONE, now=resumed - 1.0) == []
        # ... and claimable then: the creator first when it is due too.
        [next_claimed] = await queue.claim(ONE, now=resumed + 0.01)
        assert next_claimed.record.id == (reports[0].id if creator_due <= resumed else reports[1].id)
    finally:
        await queue.close()
