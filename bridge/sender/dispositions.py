"""Writing delivery outcomes to the queue: delivered, retried on which schedule, dead-lettered.

Each write also counts the records in the metrics and logs one line, so that every way a record
leaves a request is visible the same way whichever path of the sender decided it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

import backoff
import structlog

from bridge import metrics
from bridge.config import RetrySettings
from bridge.queue import QueueBackend, QueuedRecord
from bridge.records import MetricRecord, utc_now

log = structlog.get_logger("bridge.sender")

#: Cortex silently discards metric points older than 6 months (docs/cortex-api.md); a few days'
#: margin keeps a point that is just inside the window from being lost in transit.
METRIC_MAX_AGE = timedelta(days=180)


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th retry (1-based)."""
    schedule = backoff.expo(base=2, factor=initial, max_value=cap)
    next(schedule)  # the generator's first value is a priming None
    value = initial
    for _ in range(max(1, attempt)):
        value = float(next(schedule))
    return max(0.05, backoff.full_jitter(value))


class Dispositions:
    """Records outcomes of delivery attempts in ``queue`` under the ``retry`` schedule."""

    def __init__(self, queue: QueueBackend, retry: RetrySettings) -> None:
        self.queue = queue
        self.retry = retry

    async def delivered(self, items: Sequence[QueuedRecord], cortex_uuid: str | None, *,
                        superseded: Sequence[QueuedRecord] = ()) -> None:
        """Cortex stored these records (``cortex_uuid``: what it named the created item).

        ``superseded``: values a newer one made redundant, settled without being sent (``trace``
        says ``how: superseded``).
        """
        for group, how in ((items, "sent"), (superseded, "superseded")):
            if group:
                await self.queue.mark_delivered([(q.seq, cortex_uuid if how == "sent" else None) for q in group],
                                                how=how)
        settled = [*items, *superseded]
        if not settled:
            return
        now = utc_now()
        for q in settled:
            metrics.RECORDS_DELIVERED.labels(q.record.provenance.source, q.record.kind).inc()
            metrics.TIME_TO_DELIVER.labels(q.record.kind).observe(
                (now - q.record.provenance.received_at).total_seconds())
        metrics.LAST_DELIVERY.set(time.time())
        log.debug("delivered", kind=settled[0].record.kind, records=len(items), superseded=len(superseded),
                  cortex_uuid=cortex_uuid)

    async def retry_later(self, batch: Sequence[QueuedRecord], error: str) -> None:
        """5xx, network error or timeout: exponential backoff, dead letter after the max age."""
        await self._with_max_age(batch, error, self.retry.initial_backoff_seconds, exponential=True)

    async def not_found(self, batch: Sequence[QueuedRecord], error: str) -> None:
        """404: the entity or metric key may be created later; retry on a long schedule."""
        await self._with_max_age(batch, error, self.retry.not_found_retry_seconds, exponential=False)

    async def _with_max_age(
        self, batch: Sequence[QueuedRecord], error: str, base: float, *, exponential: bool
    ) -> None:
        now = time.time()
        expired = [q for q in batch if q.first_failure_at and now - q.first_failure_at >= self.retry.max_age_seconds]
        if expired:
            await self.dead(expired, "max_age", f"still failing after max age: {error}", None)
        live = [q for q in batch if q not in expired]
        if not live:
            return
        # The records of a batch failed together: one delay (from the most-tried one), one write.
        attempts = max(q.attempts for q in live) + 1
        delay = backoff_delay(attempts, base, self.retry.max_backoff_seconds) if exponential else base
        # A 404 parks the records: `queue stats` counts them apart and `queue retry --parked` frees them.
        await self.queue.reschedule([q.seq for q in live], next_attempt_at=now + delay, error=error,
                                    count_attempt=True, parked=not exponential)
        kind = live[0].record.kind
        metrics.RECORDS_RETRIED.labels(kind, "error" if exponential else "not_found").inc(len(live))
        log.info("delivery_retry", kind=kind, records=len(live), error=error, retry_in=round(delay, 2))

    async def reschedule(self, batch: Sequence[QueuedRecord], error: str, *, count_attempt: bool) -> None:
        """Make the records ready again at once."""
        await self.queue.reschedule([q.seq for q in batch], next_attempt_at=time.time(), error=error,
                                    count_attempt=count_attempt)

    async def dead(self, batch: Sequence[QueuedRecord], reason: str, detail: str, status: int | None) -> None:
        """Move the records to the dead letters, with why."""
        await self.queue.dead_letter([q.seq for q in batch], reason=reason, detail=detail, status=status)
        for q in batch:
            metrics.RECORDS_DEAD_LETTERED.labels(q.record.provenance.source, q.record.kind, reason).inc()
            log.warning("dead_lettered", record_id=q.record.id, kind=q.record.kind, reason=reason, detail=detail)

    async def drop_too_old(self, batch: list[QueuedRecord]) -> list[QueuedRecord]:
        """Dead-letter metric points Cortex would discard; returns the rest of ``batch``."""
        cutoff = utc_now() - METRIC_MAX_AGE
        old = [q for q in batch if isinstance(q.record, MetricRecord) and q.record.timestamp < cutoff]
        if old:
            await self.dead(old, "too_old", "metric point older than Cortex's 6-month window "
                            "(Cortex would answer 200 and discard it)", None)
        return [q for q in batch if q not in old]
