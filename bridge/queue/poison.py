"""Dead letters for inputs that produced no record (poison messages).

A Kafka message that cannot be parsed or mapped has no record to dead-letter, yet it must leave a
trace before its offset is committed: otherwise it is skipped silently. It is stored in the same
``dead`` table as undeliverable records, so ``cortex-bridge dlq list/show/purge`` and the
dead-letter metrics cover it, as a synthetic entry:

* ``kind`` is :data:`RAW_INPUT_KIND` (``raw_input``), never one of the record kinds, and ``lane`` is
  :data:`POISON_LANE`;
* ``body`` is a JSON object (shown by ``dlq show`` under ``record``)::

      {"kind": "raw_input", "source": "events", "input": "deploys/2/1041",
       "topic": "deploys", "partition": 2, "offset": 1041, "key": "checkout", "timestamp": "...",
       "headers": {"content-type": "application/json"},
       "payload": "<the message value as UTF-8 text>"}   # or "payload_base64" when not UTF-8

  plus whatever else the source puts in ``meta``;
* ``reason`` says why (``invalid_json``, ``invalid_records``, ``invalid_cloudevent`` ...) and
  ``detail`` the parser's message.

Such an entry cannot be replayed into the queue as a record: there is no record. Fix the producer
(or the mapping) and re-publish the payload shown by ``dlq show``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.queue.store import DurableQueue
from bridge.records import record_id

#: ``kind`` column of a dead-lettered raw input (not a record kind).
RAW_INPUT_KIND = "raw_input"
#: ``lane`` column of a dead-lettered raw input.
POISON_LANE = "poison"
#: Longest ``detail`` kept, as for dead-lettered records.
MAX_DETAIL = 4000


@dataclass(frozen=True)
class RawInput:
    """An input that produced no record, with what is needed to find and re-send it."""

    source: str
    #: identifies the input within the source, e.g. ``topic/partition/offset``
    input_id: str
    reason: str
    detail: str
    payload: bytes | None
    #: JSON-able context shown with the entry (topic, partition, offset, key, headers ...)
    meta: dict[str, Any] = field(default_factory=dict)
    received_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """Deterministic entry id: a redelivered poison message maps to the same entry."""
        digest = hashlib.sha256(self.payload or b"").hexdigest()[:32]
        return record_id(RAW_INPUT_KIND, self.source, self.input_id, digest)

    def body(self) -> str:
        """The JSON stored as the entry's body."""
        doc: dict[str, Any] = {"kind": RAW_INPUT_KIND, "source": self.source, "input": self.input_id, **self.meta}
        if self.payload is not None:
            try:
                doc["payload"] = self.payload.decode("utf-8")
            except UnicodeDecodeError:
                doc["payload_base64"] = base64.b64encode(self.payload).decode("ascii")
        return json.dumps(doc, separators=(",", ":"), default=str)


async def dead_letter_raw(queue: DurableQueue, inputs: Sequence[RawInput]) -> list[str]:
    """Store ``inputs`` in the dead-letter set durably (one transaction); return their entry ids.

    An entry that is already there (the same input redelivered) is kept as it was.
    Raises :class:`sqlite3.Error` when the database cannot be written.
    """
    now = time.time()
    rows = []
    for item in inputs:
        body = item.body()
        rows.append((item.id, RAW_INPUT_KIND, POISON_LANE, item.source, body, len(body), item.received_at, 0,
                     item.reason, item.detail[:MAX_DETAIL], None, now))

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO dead (id, kind, lane, source, body, size, received_at, attempts,"
            " reason, detail, status, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    if rows:
        await queue.execute(write)
    return [row[0] for row in rows]
