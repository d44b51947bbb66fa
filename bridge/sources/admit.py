"""The one way any HTTP source answers: records durable -> 202; otherwise a clear 4xx/503.

Shared by the native endpoint and every webhook source so that "2xx means on disk" has a single
implementation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from bridge import metrics
from bridge.queue import AppendResult, DurableQueue, QueueFull, QueueUnavailable
from bridge.records import Record, UnstorableRecord

log = structlog.get_logger("bridge.ingest")


def error_response(status: int, reason: str, *, source: str, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error answer, counted per source and status."""
    metrics.INPUTS_REJECTED.labels(source, str(status)).inc()
    body = {"error": reason, **(extra or {})}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def ignored_response(reason: str, *, source: str) -> web.Response:
    """An input that maps to nothing: 202 so the sender does not disable its hook."""
    metrics.INPUTS_IGNORED.labels(source, reason.split(":")[0][:60]).inc()
    return web.json_response({"ignored": reason}, status=202)


def count_appended(source: str, records: Sequence[Record], result: AppendResult) -> None:
    """Count what an append stored and what it found already known, per record kind."""
    kinds = {r.id: r.kind for r in records}
    for ids, counter in ((result.new_ids, metrics.RECORDS_ENQUEUED), (result.duplicate_ids, metrics.RECORDS_DUPLICATE)):
        counts: dict[str, int] = {}
        for rid in ids:
            counts[kinds[rid]] = counts.get(kinds[rid], 0) + 1
        for kind, n in counts.items():
            counter.labels(source, kind).inc(n)


async def admit(
    queue: DurableQueue,
    records: Sequence[Record],
    *,
    source: str,
    delivery_id: str | None = None,
    retry_after: int = 5,
) -> web.Response:
    """Append ``records`` durably and answer; 503 + Retry-After when the queue refuses."""
    for record in records:
        metrics.RECORDS_RECEIVED.labels(source, record.kind).inc()
    try:
        result = await queue.append(records, delivery=(source, delivery_id) if delivery_id else None)
    except QueueFull as exc:
        log.warning("queue_full", source=source, error=str(exc))
        return error_response(503, "queue is full; retry later", source=source,
                              headers={"Retry-After": str(retry_after)})
    except QueueUnavailable as exc:
        log.error("queue_unavailable", source=source, error=str(exc))
        return error_response(503, "queue cannot store input right now; retry later", source=source,
                              headers={"Retry-After": str(retry_after)})
    except UnstorableRecord as exc:
        # The model's validators should have refused it; this is the last check at the door.
        log.warning("record_unstorable", source=source, record_id=exc.record_id, problem=exc.problem)
        return error_response(422, f"record cannot be stored as sent; nothing was stored: {exc}", source=source)
    count_appended(source, records, result)
    log.debug("accepted", source=source, delivery_id=delivery_id, records=len(records),
             new=len(result.new_ids), duplicate_delivery=result.duplicate_delivery)
    body: dict[str, Any] = {"accepted": len(records), "ids": [r.id for r in records]}
    if result.duplicate_delivery:
        body["duplicate_delivery"] = True
    return web.json_response(body, status=202)
