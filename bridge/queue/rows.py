"""Records as rows of the ``records`` table: serialized once, with the door's read-back check.

Appends (bridge/queue/group_commit.py) and the records the queue adds itself inside an append or
an enrichment (a change failure's event and mark, a lineage report) encode the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bridge.records import Record, encode_record, lane_of

#: One record as appended: (id, kind, lane, source, body, size, received_at).
Row = tuple[str, str, str, str, str, int, float]
#: A row with its enqueue and first-attempt times: what ``INSERT INTO records`` takes.
QueuedRow = tuple[str, str, str, str, str, int, float, float, float]


def encode_rows(records: Sequence[Record]) -> tuple[list[Row], int]:
    """``records`` as rows to insert, and their bytes; raises :class:`~bridge.records.UnstorableRecord`."""
    rows: list[Row] = []
    size = 0
    for record in records:
        body = encode_record(record)
        rows.append((record.id, record.kind, lane_of(record), record.provenance.source, body, len(body),
                     record.provenance.received_at.timestamp()))
        size += len(body)
    return rows, size


def queued_rows(records: Iterable[Record], now: float) -> list[QueuedRow]:
    """``records`` as rows enqueued and due ``now``."""
    rows, _ = encode_rows(list(records))
    return [(*row, now, now) for row in rows]
