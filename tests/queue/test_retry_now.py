"""Releasing waiting records early (``queue retry``), and parked (404) records told apart from ready ones."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.queue import BatchPolicy, DurableQueue, files, inspect
from bridge.queue.outcomes import retry_now
from bridge.records import Record, parse_timestamp
from bridge.sources.native import parse_native

POLICY = BatchPolicy(max_items={"event": 1})


def event(i: int) -> Record:
    return parse_native({"kind": "event", "entity": f"svc-{i}", "type": "T", "title": f"e{i}",
                         "timestamp": 1_700_000_000 + i}, source="test")[0]


async def queue_with(tmp_path: Path) -> tuple[DurableQueue, dict[str, Record]]:
    """Four records: parked after a 404, backing off after a 503, ready now, and being sent."""
    queue = await DurableQueue.open(tmp_path / "q.db")
    records = {name: event(i) for i, name in enumerate(("parked", "backoff", "ready", "sending"))}
    later = time.time() + 600
    for name in ("parked", "backoff", "sending"):
        await queue.append([records[name]])
        (claimed,) = await queue.claim(POLICY)
        if name != "sending":
            await queue.reschedule([claimed.seq], next_attempt_at=later, error=f"Cortex {name}",
                                   count_attempt=True, parked=name == "parked")
    await queue.append([records["ready"]])
    return queue, records


def trace_state(queue: DurableQueue, record: Record) -> str:
    (entry,) = inspect.trace(queue.conn, record.id)
    return str(entry["state"])


async def test_stats_and_trace_name_parked_records_apart_from_ready_ones(tmp_path: Path) -> None:
    queue, records = await queue_with(tmp_path)
    stats = await queue.stats()
    assert stats["by_state"] == {"parked": 1, "ready": 2, "claimed": 1}
    assert trace_state(queue, records["parked"]) == "parked"
    assert trace_state(queue, records["backoff"]) == "ready"
    (entry,) = inspect.trace(queue.conn, records["parked"].id)
    assert entry["last_error"] == "parked (404): Cortex parked"
    # times read as ISO 8601 UTC, not epoch floats
    assert parse_timestamp(entry["next_attempt_at"]).timestamp() > time.time() + 500
    assert entry["received_at"].endswith("Z")
    await queue.close()


async def test_retry_now_parked_releases_only_parked_records(tmp_path: Path) -> None:
    queue, records = await queue_with(tmp_path)
    assert await queue.retry_now(parked=True) == 1
    assert trace_state(queue, records["parked"]) == "ready"
    assert (await queue.stats())["by_state"] == {"ready": 3, "claimed": 1}
    claimed = [q.record.id for q in await queue.claim(POLICY)]
    assert claimed in ([records["parked"].id], [records["ready"].id])  # both are due; backoff is not
    assert await queue.retry_now(parked=True) == 0
    await queue.close()


async def test_retry_now_by_id_and_all_never_touches_records_in_flight(tmp_path: Path) -> None:
    queue, records = await queue_with(tmp_path)
    sending = records["sending"].id
    assert await queue.retry_now([records["backoff"].id, sending, "no-such-id"]) == 1
    assert await queue.retry_now() == 1  # the parked one; the ready one is due already
    assert await queue.retry_now() == 0
    (entry,) = inspect.trace(queue.conn, sending)
    assert entry["state"] == "claimed"
    await queue.close()


async def test_retry_from_another_connection_releases_in_chunks(tmp_path: Path) -> None:
    queue, _records = await queue_with(tmp_path)
    await queue.close()
    path = tmp_path / "q.db"
    released = files.with_file(path, lambda conn: retry_now(conn, chunk=1), write=True)
    assert released == 2
    assert files.with_file(path, inspect.stats)["by_state"] == {"ready": 3, "claimed": 1}
