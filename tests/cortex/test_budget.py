"""The request budget: burst, refill, strict sliding window, and 429 pauses."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cortex.budget import TokenBucket


async def _send(bucket: TokenBucket, n: int, latency: float = 0.0) -> list[float]:
    """Acquire ``n`` permits one after another; return the completion times."""
    done = []
    for _ in range(n):
        permit = await bucket.acquire()
        if latency:
            await asyncio.sleep(latency)
        permit.done()
        done.append(time.monotonic())
    return done


async def test_burst_then_refill_rate() -> None:
    bucket = TokenBucket(600, 5, window_seconds=60)  # 10 per second, 5 back to back
    start = time.monotonic()
    times = await _send(bucket, 10)
    assert times[4] - start < 0.1  # the burst leaves at once
    assert times[9] - start >= 0.45  # the next five wait for refill at 10/s


async def test_sliding_window_is_never_exceeded() -> None:
    # 6 requests per 1 s window; a naive bucket (burst 6 + refill 6/s) would let ~12 through in 1 s.
    bucket = TokenBucket(6, 6, window_seconds=1.0)
    start = time.monotonic()
    times = await _send(bucket, 14, latency=0.01)
    for i, t in enumerate(times):
        in_window = [u for u in times[: i + 1] if u > t - 1.0]
        assert len(in_window) <= 6, f"{len(in_window)} completions within 1 s at {t - start:.2f}"
    assert times[-1] - start >= 2.0


async def test_cancelled_permit_gives_its_token_back() -> None:
    bucket = TokenBucket(60, 2, window_seconds=60)
    (await bucket.acquire()).cancel()
    (await bucket.acquire()).cancel()
    start = time.monotonic()
    await _send(bucket, 2)
    assert time.monotonic() - start < 0.1


async def test_pause_stops_every_sender_until_retry_after() -> None:
    bucket = TokenBucket(6000, 50, window_seconds=60)
    bucket.pause(0.5)
    start = time.monotonic()
    times = await asyncio.gather(*[_send(bucket, 1) for _ in range(5)])
    assert min(t[0] for t in times) - start >= 0.49
    assert bucket.paused_for == 0


async def test_in_flight_requests_count_against_the_window() -> None:
    bucket = TokenBucket(3, 3, window_seconds=1.0)
    held = [await bucket.acquire() for _ in range(3)]
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.2)
    assert not waiter.done()  # three still in flight: a fourth would exceed the window
    for permit in held:
        permit.done()
    await asyncio.sleep(0.05)
    assert not waiter.done()  # completions now occupy the window for 1 s
    permit = await asyncio.wait_for(waiter, 2.0)
    permit.done()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _take_available(bucket: TokenBucket) -> int:
    """Acquire (and complete) every permit the bucket grants without the clock moving."""
    taken = 0
    while True:
        try:
            permit = await asyncio.wait_for(bucket.acquire(), timeout=0.005)
        except TimeoutError:
            return taken
        permit.done()
        taken += 1


@settings(max_examples=12, deadline=None)
@given(pause=st.floats(0.5, 120), idle_before=st.floats(0, 30), step=st.sampled_from([0.1, 0.25]))
def test_no_burst_after_a_pause(pause: float, idle_before: float, step: float) -> None:
    # 10 requests/s with a burst of 50: before the fix, tokens accrued during the pause and a
    # full burst of 50 left the moment it ended.
    async def scenario() -> None:
        clock = FakeClock()
        bucket = TokenBucket(600, 50, window_seconds=60, clock=clock, ramp_seconds=10)
        clock.now += idle_before
        bucket.pause(pause)
        resume = clock.now + pause
        for at in (0.0, pause / 2, pause - 0.01):
            clock.now = resume - pause + at
            assert await _take_available(bucket) == 0, f"a request left {at:.2f} s into the pause"
        granted: list[tuple[float, int]] = []
        for i in range(round(15 / step)):
            t = round(i * step, 6)  # exact bins: accumulated float steps put 8.9999 into second 8
            clock.now = resume + t
            granted.append((t, await _take_available(bucket)))
        # First second after the pause: the rate starts at 10 % (1/s) and rises; without a ramp
        # (or with accrual during the pause) this is 50+.
        first = sum(n for t, n in granted if t < 1)
        assert first <= 3, f"{first} requests in the first second after the pause"
        # Never more than the ramped rate allows in any second (plus one for rounding).
        for t0 in (0, 2, 4, 6, 8):
            n = sum(k for t, k in granted if t0 <= t < t0 + 1)
            allowed = 10 * (0.1 + 0.09 * (t0 + 1)) + 1
            assert n <= allowed, f"{n} requests in second {t0} after the pause (ramp allows {allowed:.1f})"
        # ...and the full rate is back once the ramp is over.
        late = sum(n for t, n in granted if 11 <= t < 15)
        assert late >= 36, f"only {late} requests in 4 s at full rate"

    asyncio.run(scenario())
