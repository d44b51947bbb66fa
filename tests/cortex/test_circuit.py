"""The circuit breaker in front of Cortex: open on consecutive failures, one probe, close on an answer."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cortex.circuit import Attempt, CircuitBreaker, CircuitState


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.just(0)),
        st.tuples(st.sampled_from(["ok", "fail", "abandon"]), st.integers(0, 10)),
        st.tuples(st.just("wait"), st.integers(1, 40)),  # tenths of a second
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, threshold=st.integers(1, 6))
def test_the_breaker_never_lets_more_than_one_probe_out(ops: list[tuple[str, int]], threshold: int) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold, 0.5, 2.0, clock=clock, rng=random.Random(1))
    out: list[Attempt] = []
    consecutive = 0
    for op, arg in ops:
        state = breaker.state
        if op == "admit":
            attempt = breaker.admit()
            if state is CircuitState.OPEN:
                assert attempt is None, "a request was let through an open breaker"
            elif state is CircuitState.CLOSED:
                assert attempt is not None and not attempt.probe
            if attempt is not None:
                out.append(attempt)
        elif op == "wait":
            clock.now += arg / 10
        elif out:
            attempt = out.pop(arg % len(out))
            was_closed = state is CircuitState.CLOSED
            fresh = attempt._generation == breaker._generation
            {"ok": attempt.succeeded, "fail": attempt.failed, "abandon": attempt.abandoned}[op]()
            if attempt.probe and op == "ok":
                assert breaker.state is CircuitState.CLOSED, "a successful probe closes the breaker"
            if attempt.probe and op == "fail":
                assert breaker.state is CircuitState.OPEN, "a failed probe reopens the breaker"
            if was_closed and fresh and not attempt.probe and op != "abandon":
                consecutive = consecutive + 1 if op == "fail" else 0
                if consecutive >= threshold:
                    assert breaker.state is CircuitState.OPEN, f"{consecutive} failures in a row left it closed"
                    consecutive = 0
        if breaker.state is not CircuitState.CLOSED:
            consecutive = 0
        probes = [a for a in out if a.probe and a._generation == breaker._generation]
        assert len(probes) <= 1, "two probes out at once"


def test_open_intervals_double_up_to_the_cap_with_jitter() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, 30.0, clock=clock, rng=random.Random(3))
    first = breaker.admit()
    assert first is not None
    first.failed()
    intervals = []
    for _ in range(8):
        intervals.append(breaker.open_for)
        assert breaker.admit() is None
        clock.now += breaker.open_for
        probe = breaker.admit()
        assert probe is not None and probe.probe
        assert breaker.admit() is None, "only one probe"
        probe.failed()
    nominal = [1, 2, 4, 8, 16, 30, 30, 30]
    for got, cap in zip(intervals, nominal, strict=True):
        assert cap * 0.5 <= got <= cap
    clock.now += breaker.open_for
    probe = breaker.admit()
    assert probe is not None
    probe.succeeded()
    assert breaker.state is CircuitState.CLOSED
    again = breaker.admit()
    assert again is not None
    again.failed()
    assert breaker.open_for <= 1.0, "a close resets the interval"


async def test_one_waiter_gets_the_probe_the_others_wait_for_its_outcome() -> None:
    breaker = CircuitBreaker(1, 0.05, 0.05)
    first = breaker.admit()
    assert first is not None
    first.failed()
    passed: list[int] = []
    held: dict[int, Attempt] = {}

    async def worker(i: int) -> None:
        await breaker.wait_ready()
        passed.append(i)
        attempt = breaker.admit()  # the sender's worker sends from the same task
        if attempt is not None:
            held[i] = attempt

    tasks = [asyncio.create_task(worker(i)) for i in range(8)]
    await asyncio.sleep(0.3)
    assert len(passed) == 1 and len(held) == 1, "exactly one worker may probe"
    assert breaker.admit() is None, "another caller may not take the reserved probe"
    held.popitem()[1].succeeded()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert len(passed) == 8
