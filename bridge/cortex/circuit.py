"""A circuit breaker in front of every Cortex request: when Cortex is down, stop asking.

Per-record backoff alone does not slow a sender with many records: each record waits, but
there is always another one due. The breaker is global to the process:

* **closed** (normal): every request goes; ``failure_threshold`` consecutive failures (a
  connection error, a timeout or lost connection, or a 5xx answer) open it;
* **open**: no request is sent. :meth:`CircuitBreaker.admit` refuses at once (the client turns
  that into :class:`~bridge.cortex.client.NotSent`), :meth:`CircuitBreaker.wait_ready` waits;
* **half-open**, after the open interval: exactly one probe request is let through. Any
  non-5xx answer closes the breaker; a failure opens it again with a longer interval.

The open interval is ``open_seconds`` doubled after each failed probe, capped at
``max_open_seconds``, and jittered down to a uniformly drawn 50-100 % of that (replicas that
saw the same outage do not probe in step). With the defaults (1 s .. 30 s) an outage of N
seconds costs about ``threshold + log2(30) + N/22`` requests instead of ``rate × N``.

Outcomes of requests started before the last state change are ignored: a late failure of a
request sent before the breaker closed says nothing about Cortex now.

A waiter in the half-open state *reserves* the probe for its task (the sender's worker waits
here before it takes a permit and claims records, then sends in the same task); other callers
are refused while the reservation stands, so one probe means one request and one claimed batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from enum import IntEnum

import structlog

from bridge import metrics

log = structlog.get_logger("bridge.cortex.circuit")


class CircuitState(IntEnum):
    """Breaker states, as exported by ``cortex_bridge_cortex_circuit_state``."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Attempt:
    """One admitted request; report exactly one outcome."""

    __slots__ = ("_breaker", "_generation", "_open", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._open = True
        self.probe = probe

    def succeeded(self) -> None:
        """Cortex answered, not with a 5xx."""
        if self._open:
            self._open = False
            self._breaker._outcome(self, ok=True)

    def failed(self) -> None:
        """No answer (connection refused, timeout, connection lost) or a 5xx."""
        if self._open:
            self._open = False
            self._breaker._outcome(self, ok=False)

    def abandoned(self) -> None:
        """No outcome (e.g. cancelled before an answer): counts neither way."""
        if self._open:
            self._open = False
            self._breaker._outcome(self, ok=None)


class CircuitBreaker:
    """Process-wide breaker; see the module docstring for the rules."""

    def __init__(
        self,
        failure_threshold: int = 5,
        open_seconds: float = 1.0,
        max_open_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.open_seconds = open_seconds
        self.max_open_seconds = max(open_seconds, max_open_seconds)
        self._clock = clock
        self._random = rng or random.Random()
        self._state = CircuitState.CLOSED
        self._failures = 0  #: consecutive, while closed
        self._opened = 0  #: opens since the last close: the interval's exponent
        self._reopen_at = 0.0
        self._generation = 0
        self._probe_out = False
        self._reserved: asyncio.Task[object] | None = None
        self._changed = asyncio.Event()
        self.opens = 0
        metrics.CORTEX_CIRCUIT_STATE.set(CircuitState.CLOSED)

    @property
    def state(self) -> CircuitState:
        self._tick()
        return self._state

    @property
    def open_for(self) -> float:
        """Seconds until the next probe may go (0 unless open)."""
        self._tick()
        return max(0.0, self._reopen_at - self._clock()) if self._state is CircuitState.OPEN else 0.0

    def admit(self) -> Attempt | None:
        """An :class:`Attempt` if a request may be sent now, else None (send nothing)."""
        self._tick()
        if self._state is CircuitState.CLOSED:
            return Attempt(self, self._generation, probe=False)
        if self._state is CircuitState.HALF_OPEN and not self._probe_out and self._may_probe(_current_task()):
            self._probe_out = True
            self._reserved = None
            return Attempt(self, self._generation, probe=True)
        return None

    async def wait_ready(self) -> None:
        """Wait until a request would be admitted; in half-open, reserve the probe for this task."""
        task = _current_task()
        while True:
            self._tick()
            if self._state is CircuitState.CLOSED:
                return
            if self._state is CircuitState.HALF_OPEN and not self._probe_out and self._may_probe(task):
                self._reserved = task
                return
            timeout = self._reopen_at - self._clock() if self._state is CircuitState.OPEN else None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=timeout)

    def release(self) -> None:
        """Give up this task's probe reservation, if it holds one (it sent nothing)."""
        if self._reserved is not None and self._reserved is _current_task():
            self._reserved = None
            self._changed.set()

    # -- internals -------------------------------------------------------------------------

    def _may_probe(self, task: asyncio.Task[object] | None) -> bool:
        holder = self._reserved
        return holder is None or holder is task or holder.done()

    def _tick(self) -> None:
        if self._state is CircuitState.OPEN and self._clock() >= self._reopen_at:
            self._set(CircuitState.HALF_OPEN)

    def _set(self, state: CircuitState) -> None:
        self._state = state
        metrics.CORTEX_CIRCUIT_STATE.set(state)
        self._changed.set()

    def _outcome(self, attempt: Attempt, *, ok: bool | None) -> None:
        if attempt.probe:
            self._probe_out = False
        if attempt._generation != self._generation:
            if attempt.probe:
                self._changed.set()
            return  # from before the last state change: stale news
        if attempt.probe:
            if ok is None:
                self._changed.set()  # let another caller probe
            elif ok:
                self._close()
            else:
                self._open()
        elif self._state is CircuitState.CLOSED and ok is not None:
            self._failures = 0 if ok else self._failures + 1
            if self._failures >= self.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._opened += 1
        self.opens += 1
        nominal = min(self.max_open_seconds, self.open_seconds * 2 ** (self._opened - 1))
        interval = nominal * self._random.uniform(0.5, 1.0)
        self._reopen_at = self._clock() + interval
        self._generation += 1
        self._failures = 0
        self._reserved = None
        metrics.CORTEX_CIRCUIT_OPENS.inc()
        log.warning("cortex_circuit_open", next_probe_in=round(interval, 2), opens_in_a_row=self._opened)
        self._set(CircuitState.OPEN)

    def _close(self) -> None:
        if self._opened:
            log.info("cortex_circuit_closed", after_opens=self._opened)
        self._opened = 0
        self._failures = 0
        self._generation += 1
        self._reserved = None
        self._set(CircuitState.CLOSED)


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a synchronous caller)
        return None
