"""The process-wide request budget for Cortex: a token bucket inside a strict sliding window.

Cortex allows ``rate_limit_per_minute`` requests per minute per client. A plain token bucket
with capacity ``burst`` lets ``burst + rate`` requests through in one minute, which a strict
sliding-window limiter on the server answers with 429. So two rules hold at once:

* the bucket (capacity ``burst``, refill ``rate/60`` per second) shapes bursts;
* a window of the last ``rate`` requests' *completion* times admits a new request only when
  fewer than ``rate`` requests completed in the last 60 s or are still in flight. Using
  completion (not send) time keeps the bound even when network latency shifts arrival times.

**Restarts.** The server's window does not restart with the process, so with a
:class:`SpendLog` every request is recorded durably (before it is sent) and a new process,
at its first :meth:`TokenBucket.acquire`, loads what its predecessors sent in the last window.
A restored request was recorded at wall time ``s`` just before it left; the server counted it
at arrival, some time in ``[s, s + request_timeout]`` (the client gives up at the timeout). So a
restored request counts as if it had *completed* at ``s + request_timeout + RESTORE_MARGIN``
(the margin covers the time between stamp and send and small wall-clock steps) and occupies its
slot until a whole window after that. That over-counts a little in the first ~90 s after a
restart and never under-counts. If the log cannot be read, the bucket assumes the whole window
was spent (it waits rather than risk a 429); if a spend cannot be recorded, the request is sent
anyway and ``cortex_bridge_rate_limit_spend_log_errors`` counts it (only a restart within the
next minute could then over-send).

**Replicas.** When several processes spend from one log at once (the PostgreSQL queue), restoring
at start is not enough: each must see what the others spend *now*. Then the log is ``shared``
and every request, once this process's own window and bucket allow it, also takes its slot in
the log (:meth:`SpendLog.admit`): admitted only while the other processes' requests of the last
``window + request_timeout + RESTORE_MARGIN`` seconds (counted from their stamps, as restored
ones are) and this process's own (counted exactly) leave room under the limit. That check and
the insert are one transaction under a database lock, so the whole deployment stays inside
one quota even when every replica calls Cortex (token checks, catalog lookups, a new sender
after a failover). A log that cannot be reached admits nothing: the request waits.

**429 pauses.** A 429 pauses everything for ``Retry-After``: no request leaves during the pause
and no tokens accrue during it. After the pause the refill rate and the bucket's capacity ramp
linearly from ``RAMP_FLOOR`` (10 %) to 100 % over ``ramp_seconds`` (10 s by default), so the
backlog that built up during the pause is released gradually instead of as one burst into the
limiter that just refused us.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import structlog

from bridge import metrics
from bridge.config import CortexSettings

log = structlog.get_logger("bridge.cortex.budget")

WINDOW_SECONDS = 60.0
#: After a pause the rate starts at this fraction of the configured rate...
RAMP_FLOOR = 0.1
#: ...and reaches the full rate this many seconds after the pause ended.
RAMP_SECONDS = 10.0
#: Added to a restored request's timeout: stamp-to-send delay and small wall-clock steps.
RESTORE_MARGIN = 2.0


class SpendLog(Protocol):
    """Durable record of the requests sent, shared by every process using one queue database."""

    async def load(self, since: float) -> list[float]:
        """Wall-clock send stamps (``time.time()``) of the requests recorded at or after ``since``."""
        ...

    async def record(self) -> None:
        """Record, durably across a process kill, one request about to be sent now.

        Returns once it is durable; the stamp is taken as late as possible before that.
        """
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes spend from this log at the same time."""
        ...

    async def admit(self, room: int, span: float) -> float:
        """Record one request now if other processes' requests of the last ``span`` seconds are
        fewer than ``room``: 0 once recorded, else the seconds until asking again may succeed."""
        ...


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
        spend_log: SpendLog | None = None,
        request_timeout_seconds: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        ramp_seconds: float = RAMP_SECONDS,
    ) -> None:
        self.limit = rate_per_minute
        self.window = window_seconds
        self.rate = rate_per_minute / window_seconds
        self.capacity = float(max(1, min(burst, rate_per_minute)))
        self.ramp_seconds = max(0.0, ramp_seconds)
        self._clock = clock
        self._wall = wall_clock
        self._tokens = self.capacity
        self._updated = clock()
        self._paused_until = -math.inf
        self._completed: deque[float] = deque()
        #: predecessors' requests, as the (monotonic) instant each stops being "recent"
        self._restored: deque[float] = deque()
        self._hold = request_timeout_seconds + RESTORE_MARGIN
        self._spend_log = spend_log
        #: every request takes its slot from a log other processes spend from too
        self._shared = spend_log is not None and spend_log.shared
        self._loaded = spend_log is None or self._shared
        self._admit_failing = False
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

    @property
    def restored(self) -> int:
        """Requests of earlier processes still counted in the window."""
        self._expire(self._clock())
        return len(self._restored)

    def reload(self) -> None:
        """Read the spend log again before the next request: another process sent meanwhile (a
        replica that just became the sender counts what its predecessor spent in the window)."""
        if self._spend_log is not None and not self._shared:  # shared: every request counts the others
            self._loaded = False

    async def acquire(self) -> Permit:
        """Wait (first come, first served) until one request may be sent."""
        async with self._lock:
            if not self._loaded:
                await self._restore()
            while True:
                wait = self._wait_needed(self._clock())
                if wait <= 0 and self._shared:
                    wait = await self._admit()
                if wait <= 0:
                    self._tokens -= 1
                    self._in_flight += 1
                    metrics.RATE_LIMIT_TOKENS.set(self._tokens)
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)
        permit = Permit(self)
        if self._spend_log is not None and not self._shared:
            # Outside the lock, so concurrent acquirers share one commit of the log.
            try:
                await self._spend_log.record()
            except asyncio.CancelledError:
                permit.done()  # it may be recorded: count it, never give the slot back
                raise
            except Exception as exc:
                metrics.RATE_LIMIT_SPEND_LOG_ERRORS.inc()
                log.warning("request_spend_not_recorded", error=repr(exc),
                            hint="a restart within a minute may exceed the Cortex quota")
        return permit

    async def _admit(self) -> float:
        """Take this request's slot in the shared log; seconds to wait when there is none."""
        assert self._spend_log is not None
        mine = len(self._completed) + self._in_flight
        try:
            wait = await self._spend_log.admit(self.limit - mine, self.window + self._hold)
        except Exception as exc:
            # The others' spending is unknown: wait rather than risk the deployment's quota.
            metrics.RATE_LIMIT_SPEND_LOG_ERRORS.inc()
            if not self._admit_failing:
                log.warning("request_spend_not_admitted", error=repr(exc),
                            hint="requests to Cortex wait until the shared spend log is reachable")
            self._admit_failing = True
            return 1.0
        if self._admit_failing:
            log.info("request_spend_admitted_again")
            self._admit_failing = False
        return wait

    async def _restore(self) -> None:
        assert self._spend_log is not None
        now, wall = self._clock(), self._wall()
        try:
            stamps = await self._spend_log.load(wall - self.window - self._hold)
        except Exception as exc:
            # Unknown spend: assume the whole window is used rather than risk the quota.
            log.error("request_spend_not_loaded", error=repr(exc), assumed_spent=self.limit)
            stamps = [wall] * self.limit
        # A restored request counts as completed at stamp + hold: see the module docstring.
        self._restored = deque(sorted(now + (s - wall) + self._hold for s in stamps))
        self._loaded = True
        self._expire(now)
        if self._restored:
            log.info("request_spend_restored", requests=len(self._restored), window_seconds=self.window)

    def _expire(self, now: float) -> None:
        for entries in (self._completed, self._restored):
            while entries and entries[0] <= now - self.window:
                entries.popleft()

    def _wait_needed(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        self._expire(now)
        if len(self._completed) + len(self._restored) + self._in_flight >= self.limit:
            fronts = [entries[0] for entries in (self._completed, self._restored) if entries]
            if not fronts:
                return 0.05  # every slot is in flight: a completion will wake us
            return min(fronts) + self.window - now
        if self._tokens < 1:
            fraction = self._fraction(now)
            wait = (1 - self._tokens) / (self.rate * fraction)
            # While ramping the rate rises: look again soon rather than wait at today's rate.
            return min(wait, 0.1) if fraction < 1 else wait
        return 0.0

    def _fraction(self, t: float) -> float:
        """Share of the full rate (and capacity) allowed at ``t``: ramps up after a pause."""
        since = t - self._paused_until
        if since >= self.ramp_seconds:
            return 1.0
        return RAMP_FLOOR + (1 - RAMP_FLOOR) * max(0.0, since) / self.ramp_seconds

    def _accrued(self, a: float, b: float) -> float:
        """Full-rate seconds between ``a`` and ``b`` (both after the pause): the ramp's integral."""
        p, end, total = self._paused_until, self._paused_until + self.ramp_seconds, 0.0
        if a < end:
            y = min(b, end)
            total += (y - a) * RAMP_FLOOR + (1 - RAMP_FLOOR) * ((y - p) ** 2 - (a - p) ** 2) / (2 * self.ramp_seconds)
            a = y
        return total + max(0.0, b - a)

    def _refill(self, now: float) -> None:
        start = max(self._updated, self._paused_until)  # nothing accrues during a pause
        if now > start:
            # While ramping, the capacity ramps too: no burst of what accrued while nobody asked.
            cap = max(1.0, self.capacity * self._fraction(now))
            self._tokens = min(cap, self._tokens + self._accrued(start, now) * self.rate)
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
        """Stop all sending for ``seconds`` (a 429's Retry-After), empty the bucket, ramp up after."""
        now = self._clock()
        self._refill(now)
        until = now + max(0.0, seconds)
        if until > self._paused_until:
            metrics.RATE_LIMIT_PAUSE_SECONDS.inc(until - max(now, self._paused_until))
            self._paused_until = until
        metrics.RATE_LIMIT_PAUSES.inc()
        self._tokens = 0.0
        metrics.RATE_LIMIT_TOKENS.set(0)


def budget_from_settings(cortex: CortexSettings, spend_log: SpendLog | None = None) -> TokenBucket:
    """The request budget the configuration describes; with ``spend_log``, restored across restarts."""
    return TokenBucket(cortex.rate_limit_per_minute, cortex.burst, spend_log=spend_log,
                       window_seconds=cortex.rate_limit_window_seconds,
                       request_timeout_seconds=cortex.request_timeout_seconds)
