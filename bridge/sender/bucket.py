"""The process-wide request budget for Cortex: a token bucket inside a strict sliding window.

Cortex allows ``rate_limit_per_minute`` requests per minute per client. A plain token bucket
with capacity ``burst`` lets ``burst + rate`` requests through in one minute, which a strict
sliding-window limiter on the server answers with 429. So two rules hold at once:

* the bucket (capacity ``burst``, refill ``rate/60`` per second) shapes bursts;
* a window of the last ``rate`` requests' *completion* times admits a new request only when
  fewer than ``rate`` requests completed in the last 60 s or are still in flight. Using
  completion (not send) time keeps the bound even when network latency shifts arrival times.

A 429 pauses everything for ``Retry-After``: no request leaves during the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from bridge import metrics

WINDOW_SECONDS = 60.0


class Permit:
    """The right to send one request; :meth:`done` when its answer (or failure) is in."""

    __slots__ = ("_bucket", "_open")

    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket
        self._open = True

    def done(self) -> None:
        """The request finished: it now counts in the window at this instant."""
        if self._open:
            self._open = False
            self._bucket._finish(used=True)

    def cancel(self) -> None:
        """The request was never sent: give the token back."""
        if self._open:
            self._open = False
            self._bucket._finish(used=False)


class TokenBucket:
    """Rate limiter shared by every Cortex request of the process (reads and retries too)."""

    def __init__(
        self,
        rate_per_minute: int,
        burst: int,
        *,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = rate_per_minute
        self.window = window_seconds
        self.rate = rate_per_minute / window_seconds
        self.capacity = float(max(1, min(burst, rate_per_minute)))
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._paused_until = 0.0
        self._completed: deque[float] = deque()
        self._in_flight = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def tokens(self) -> float:
        self._refill(self._clock())
        return self._tokens

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self) -> Permit:
        """Wait (first come, first served) until one request may be sent."""
        async with self._lock:
            while True:
                wait = self._wait_needed(self._clock())
                if wait <= 0:
                    self._tokens -= 1
                    self._in_flight += 1
                    metrics.RATE_LIMIT_TOKENS.set(self._tokens)
                    return Permit(self)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)

    def _wait_needed(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        while self._completed and self._completed[0] <= now - self.window:
            self._completed.popleft()
        if len(self._completed) + self._in_flight >= self.limit:
            if not self._completed:
                return 0.05  # every slot is in flight: a completion will wake us
            return self._completed[0] + self.window - now
        if self._tokens < 1:
            return (1 - self._tokens) / self.rate
        return 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _finish(self, *, used: bool) -> None:
        self._in_flight -= 1
        if used:
            self._completed.append(self._clock())
        else:
            self._refill(self._clock())
            self._tokens = min(self.capacity, self._tokens + 1)
        self._changed.set()

    def pause(self, seconds: float) -> None:
        """Stop all sending for ``seconds`` (a 429's Retry-After) and empty the bucket."""
        now = self._clock()
        until = now + max(0.0, seconds)
        if until > self._paused_until:
            metrics.RATE_LIMIT_PAUSE_SECONDS.inc(until - max(now, self._paused_until))
            self._paused_until = until
        metrics.RATE_LIMIT_PAUSES.inc()
        self._refill(now)
        self._tokens = 0.0
        metrics.RATE_LIMIT_TOKENS.set(0)
