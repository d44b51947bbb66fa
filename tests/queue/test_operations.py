"""The queue's named operations and its one exception family (the seam a second backend implements)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.queue import (
    DurableQueue,
    NotAQueue,
    QueueBackend,
    QueueError,
    QueueFileMissing,
    QueueFull,
    QueueUnavailable,
    RawInput,
    files,
    inspect,
)
from bridge.records import Record
from bridge.sources.native import parse_native
from tests.support.paths import ROOT
from tests.support.queue_file import queue_pragma, stored_rows


def event(i: int) -> Record:
    return parse_native({"kind": "event", "entity": "svc", "type": "T", "title": f"e{i}",
                         "timestamp": 1_700_000_000 + i}, source="test")[0]


def poison(n: int) -> RawInput:
    return RawInput(source="events", input_id=f"t/0/{n}", reason="invalid_json", detail="bad", payload=b"{")


async def open_queue(tmp_path: Path) -> DurableQueue:
    return await DurableQueue.open(tmp_path / "q.db")


async def test_forget_state_deletes_only_the_given_keys(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.put_state({"cdevents:a": "1", "cdevents:b": "2", "cdevents:c": "3"})
    assert await queue.forget_state(["cdevents:a", "cdevents:c", "cdevents:never"]) == 2
    assert await queue.get_states("cdevents:") == {"cdevents:b": "2"}
    await queue.close()


async def test_purge_empty_states_deletes_tombstones_under_the_prefix_only(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.put_state({"k8s/a/1": "", "k8s/a/2": "7", "k8s/b/1": ""})
    assert await queue.purge_empty_states("k8s/a/") == 1
    assert await queue.get_states("k8s/") == {"k8s/a/2": "7", "k8s/b/1": ""}
    await queue.close()


async def test_dead_letter_raw_is_idempotent_and_counted_by_kind(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    assert await queue.dead_letter_raw([]) == []
    ids = await queue.dead_letter_raw([poison(1), poison(2)])
    assert await queue.dead_letter_raw([poison(1)]) == ids[:1]  # redelivered: kept as it was
    await queue.dead_letter_input([event(1)], reason="entity-unresolved", detail="x")
    assert await queue.dead_counts_by_kind() == {"raw_input": 2, "event": 1}
    assert stored_rows(queue, "SELECT COUNT(*) FROM dead")[0][0] == 3 and queue.depth == 0
    await queue.close()


async def test_spends_are_recorded_at_the_clock_and_expired_when_asked(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.record_spends(2, clock=lambda: 100.0, expiry=lambda stamp: None)
    await queue.record_spends(1, clock=lambda: 200.0, expiry=lambda stamp: None)
    assert await queue.load_spends(150.0) == [200.0]
    await queue.record_spends(1, clock=lambda: 300.0, expiry=lambda stamp: stamp - 150.0)
    assert await queue.load_spends(0.0) == [200.0, 300.0]
    await queue.close()


async def test_a_failed_write_is_queue_unavailable_never_sqlite3(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await queue.put_state({"k": "v"})
    await queue_pragma(queue, "query_only = ON")  # every write now fails inside SQLite
    for write in (queue.forget_state(["k"]), queue.purge_empty_states(""), queue.dead_letter_raw([poison(1)]),
                  queue.dead_letter_input([event(1)], reason="r", detail="d"), queue.put_state({"k": "w"})):
        with pytest.raises(QueueUnavailable):
            await write
    assert not await queue.probe_writable()
    await queue_pragma(queue, "query_only = OFF")
    assert await queue.probe_writable() and await queue.get_state("k") == "v"
    await queue.close()


def test_every_refusal_is_a_queue_error() -> None:
    for refusal in (QueueFull, QueueUnavailable, QueueFileMissing, NotAQueue):
        assert issubclass(refusal, QueueError)


def test_an_operator_command_reports_database_errors_as_queue_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 200)
    with pytest.raises(QueueUnavailable, match="cannot read queue database"):
        files.open_file(garbage)
    with pytest.raises(QueueFileMissing):
        files.with_file(tmp_path / "missing.db", inspect.stats)


async def test_an_operator_command_error_is_a_queue_error(tmp_path: Path) -> None:
    await (await open_queue(tmp_path)).close()
    with pytest.raises(QueueUnavailable, match="queue database error"):
        files.with_file(tmp_path / "q.db", lambda conn: conn.execute("SELECT * FROM no_such_table").fetchall())
    assert files.with_file(tmp_path / "q.db", inspect.stats)["undelivered"] == 0


async def test_durable_queue_is_a_queue_backend(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    backend: QueueBackend = queue  # checked by mypy: the protocol a second backend implements
    assert backend.depth == 0
    await backend.close()


#: A statement, not a word: "DELETED" (a Kubernetes watch event) is not one.
SQL = re.compile(r"\b(SELECT\s+\S+.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET)\b")


def test_all_sql_lives_in_the_queue_package() -> None:
    bridge = ROOT / "bridge"
    leaks = [f"{path.relative_to(ROOT)}:{n}" for path in bridge.rglob("*.py")
             if bridge / "queue" not in path.parents
             for n, line in enumerate(path.read_text().splitlines(), 1) if SQL.search(line)]
    assert leaks == []
