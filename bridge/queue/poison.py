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

:meth:`bridge.queue.DurableQueue.dead_letter_raw` stores them (:mod:`bridge.queue.dead_letters`).
Such an entry cannot be replayed into the queue as a record: there is no record. Fix the producer
(or the mapping) and re-publish the payload shown by ``dlq show``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.records import record_id

#: ``kind`` column of a dead-lettered raw input (not a record kind).
RAW_INPUT_KIND = "raw_input"
#: ``lane`` column of a dead-lettered raw input.
POISON_LANE = "poison"


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
