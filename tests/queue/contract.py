"""Opening either queue backend the same way, for the contract suite (tests/queue/test_contract.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.queue import DurableQueue, QueueBackend
from bridge.queue.postgres import PostgresQueue
from bridge.records import Record
from bridge.sources.native import parse_native

#: ``open_backend(**options)`` opens (or reopens) the one store a test uses.
Opener = Callable[..., Awaitable[QueueBackend]]


def sqlite_opener(path: Path) -> Opener:
    async def open_backend(**options: Any) -> QueueBackend:
        return await DurableQueue.open(path, **options)
    return open_backend


def postgres_opener(dsn: str) -> Opener:
    async def open_backend(**options: Any) -> QueueBackend:
        return await PostgresQueue.open(dsn, **options)
    return open_backend


def events(*numbers: int, entity: str = "svc") -> list[Record]:
    """Native event records, one per number (same number: same record id)."""
    return parse_native([{"kind": "event", "entity": entity, "type": "T", "title": f"e{i}",
                          "timestamp": 1_700_000_000 + i} for i in numbers], source="test")


def points(*numbers: int, entity: str = "svc", source: str = "test") -> list[Record]:
    """Metric points of one lane (entity x lead-time), as sent by ``source``."""
    return parse_native([{"kind": "metric", "entity": entity, "key": "lead-time", "value": float(i),
                          "timestamp": 1_700_000_000 + i} for i in numbers], source=source)
