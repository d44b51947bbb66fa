"""The one way any HTTP source stores input and answers: records durable -> 202; else a clear 4xx/503.

Shared by the native endpoint and every webhook source so that "2xx means on disk" has a single
implementation. Storing returns a typed result (:class:`Admitted` or :class:`NotAdmitted`) and
the answers are rendered here, from those results, and nowhere else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web

from bridge import metrics
from bridge.logs import debug_enabled
from bridge.queue import AppendResult, QueueBackend, QueueFull, QueueUnavailable
from bridge.records import Record, UnstorableRecord
from bridge.sources.pipeline import DeadLetters

log = structlog.get_logger("bridge.ingest")

_UNAVAILABLE = "queue cannot store input right now; retry later"
SKIPPED_REASON = ("not stored: this source's deploys are `off`, or `enrich-only` and no other source reported"
                  " this change within deploys.window_seconds")


@dataclass(frozen=True)
class Admitted:
    """Records that are durable now (or, for a repeated delivery id, already were)."""

    ids: list[str]
    duplicate_delivery: bool = False
    #: deploys not stored by the source's ``deploys:`` mode (``off``, or ``enrich-only`` with
    #: nothing to enrich): acknowledged, and said so, so that no id in a 2xx goes unaccounted for
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NotAdmitted:
    """The queue refused the input; nothing (more) of it was stored."""

    status: int
    reason: str
    #: the refusal is temporary: answered with ``Retry-After``
    retry: bool


class RefusalLog:
    """A warning line for every refused input, at most one per source and status per interval.

    The sender of a refused delivery is told why, but the operator saw only a counter: a wrong
    secret produced no log line at all. A misconfigured CI system refuses every delivery, so the
    lines are rate-limited; the next line after a quiet interval says how many were suppressed.
    The key is (source, status) and never anything the client chose, so the table stays small.
    A line holds the source, status, the reason sent to the client and the delivery id, never
    the body, a header value or a secret.
    """

    def __init__(self, interval_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_seconds = interval_seconds
        self.clock = clock
        #: (source, status) -> (when the last line was written, refusals not logged since)
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def refused(self, source: str, status: int, reason: str, *, delivery_id: str | None = None) -> bool:
        """Log one refusal unless the interval for its source and status is running; ``True`` if logged."""
        key = (source, status)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_seconds:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._last[key] = (now, 0)
        log.warning("input_refused", source=source, status=status, reason=reason[:_REASON_CHARS],
                    delivery_id=delivery_id[:_DELIVERY_ID_CHARS] if delivery_id else None,
                    suppressed_since_last=last[1] if last is not None else 0)
        return True


_REASON_CHARS = 300
_DELIVERY_ID_CHARS = 200
#: The refusal lines of this process.
REFUSALS = RefusalLog()


def error_response(status: int, reason: str, *, source: str, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None, delivery_id: str | None = None) -> web.Response:
    """A JSON error answer, counted per source and status and logged (rate-limited) as a warning."""
    metrics.INPUTS_REJECTED.labels(source, str(status)).inc()
    REFUSALS.refused(source, status, reason, delivery_id=delivery_id)
    return json_answer({"error": reason, **(extra or {})}, status, headers=headers)


def json_answer(body: dict[str, Any], status: int, *, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` as a JSON response (orjson: a few µs less than aiohttp's ``json.dumps`` per request).

    A reason may quote what the client sent (a field name in a validation error): text orjson
    cannot write (a lone surrogate) is written escaped by ``json.dumps``, never a 500."""
    try:
        data = orjson.dumps(body)
    except TypeError:
        data = json.dumps(body).encode()
    return web.Response(status=status, body=data, content_type="application/json", headers=headers)


def ignored_response(reason: str, *, source: str) -> web.Response:
    """An input that maps to nothing: 202 so the sender does not disable its hook."""
    metrics.INPUTS_IGNORED.labels(source, reason.split(":")[0][:60]).inc()
    return json_answer({"ignored": reason}, 202)


def not_admitted_response(refusal: NotAdmitted, *, source: str, retry_after: int,
                          delivery_id: str | None = None) -> web.Response:
    """The answer to input the queue refused."""
    headers = {"Retry-After": str(retry_after)} if refusal.retry else None
    return error_response(refusal.status, refusal.reason, source=source, headers=headers, delivery_id=delivery_id)


def admitted_response(admitted: Admitted | None, dead: Sequence[DeadLetters] = ()) -> web.Response:
    """202 for durable input: the records appended (``None``: there were none) and the dead letters kept."""
    dead_ids = [r.id for group in dead for r in group.records]
    if admitted is None:
        reasons = sorted({group.reason for group in dead})
        return json_answer({"accepted": 0, "dead_lettered": len(dead_ids), "reasons": reasons, "ids": dead_ids}, 202)
    body: dict[str, Any] = {"accepted": len(admitted.ids), "ids": admitted.ids}
    if admitted.skipped:
        body["skipped"] = {"ids": admitted.skipped, "reason": SKIPPED_REASON}
    if admitted.duplicate_delivery:
        body["duplicate_delivery"] = True
    if dead_ids:
        body["dead_lettered"] = len(dead_ids)
        body["dead_letter_ids"] = dead_ids
    return json_answer(body, 202)


def count_appended(source: str, records: Sequence[Record], result: AppendResult) -> None:
    """Count what an append stored and what it found already known, per record kind."""
    kinds = {r.id: r.kind for r in records}
    for ids, counter in ((result.new_ids, metrics.RECORDS_ENQUEUED), (result.duplicate_ids, metrics.RECORDS_DUPLICATE),
                         (result.skipped_ids, metrics.RECORDS_SKIPPED)):
        counts: dict[str, int] = {}
        for rid in ids:
            counts[kinds[rid]] = counts.get(kinds[rid], 0) + 1
        for kind, n in counts.items():
            metrics.counter_of(counter, source, kind).inc(n)


def _unstorable(exc: UnstorableRecord) -> NotAdmitted:
    return NotAdmitted(422, f"record cannot be stored as sent; nothing was stored: {exc}", retry=False)


async def append_records(queue: QueueBackend, records: Sequence[Record], *, source: str,
                         delivery_id: str | None = None) -> Admitted | NotAdmitted:
    """Append ``records`` durably (deduplicated by ``delivery_id``, when given)."""
    for record in records:
        metrics.counter_of(metrics.RECORDS_RECEIVED, source, record.kind).inc()
    try:
        result = await queue.append(records, delivery=(source, delivery_id) if delivery_id else None)
    except QueueFull as exc:
        log.warning("queue_full", source=source, error=str(exc))
        return NotAdmitted(503, "queue is full; retry later", retry=True)
    except QueueUnavailable as exc:
        log.error("queue_unavailable", source=source, error=str(exc))
        return NotAdmitted(503, _UNAVAILABLE, retry=True)
    except UnstorableRecord as exc:
        # The model's validators should have refused it; this is the last check at the door.
        log.warning("record_unstorable", source=source, record_id=exc.record_id, problem=exc.problem)
        return _unstorable(exc)
    count_appended(source, records, result)
    if debug_enabled():
        log.debug("accepted", source=source, delivery_id=delivery_id, records=len(records),
                  new=len(result.new_ids), duplicate_delivery=result.duplicate_delivery)
    if result.skipped_ids:
        log.info("deploys_skipped", source=source, delivery_id=delivery_id, ids=result.skipped_ids[:20],
                 reason=SKIPPED_REASON)
    skipped = set(result.skipped_ids)
    return Admitted([r.id for r in records if r.id not in skipped], result.duplicate_delivery, result.skipped_ids)


async def keep_dead_letters(queue: QueueBackend, dead: Sequence[DeadLetters], *, source: str) -> NotAdmitted | None:
    """Store records the mapping could not complete as dead letters; ``None`` when all are stored."""
    for group in dead:
        try:
            await queue.dead_letter_input(group.records, reason=group.reason, detail=group.detail)
        except (QueueFull, QueueUnavailable) as exc:
            log.warning("webhook_dead_letter_refused", source=source, error=str(exc))
            return NotAdmitted(503, _UNAVAILABLE, retry=True)
        except UnstorableRecord as exc:
            return _unstorable(exc)
        log.warning("input_dead_lettered", source=source, reason=group.reason, detail=group.detail,
                    records=len(group.records))
    return None


async def admit(
    queue: QueueBackend,
    records: Sequence[Record],
    *,
    source: str,
    delivery_id: str | None = None,
    retry_after: int = 5,
) -> web.Response:
    """Append ``records`` durably and answer; 503 + Retry-After when the queue refuses."""
    result = await append_records(queue, records, source=source, delivery_id=delivery_id)
    if isinstance(result, NotAdmitted):
        return not_admitted_response(result, source=source, retry_after=retry_after, delivery_id=delivery_id)
    return admitted_response(result)
