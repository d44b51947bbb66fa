"""Claiming work for the sender: the oldest due lane, and ambiguous records to read back.

A claim takes the records of one lane (kind, key, entity) in order, as many as its kind's bulk
request may carry, and marks them CLAIMED (or SENDING, for a request that is not idempotent), so
a crash leaves them for a resend or a read-back. A row that no longer reads back as a record is
dead-lettered in the same transaction (:func:`bridge.queue.dead_letters.move_to_dead`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge import metrics
from bridge.queue.core import QueueCore
from bridge.queue.dead_letters import UNREADABLE, Unreadable, move_to_dead
from bridge.queue.schema import State, transaction
from bridge.queue.shares import KindShares
from bridge.queue.turns import Choice, LaneTurns
from bridge.records import Record, describe_invalid, record_from_json

log = structlog.get_logger("bridge.queue")


@dataclass(frozen=True)
class QueuedRecord:
    """An undelivered record as the sender sees it."""

    seq: int
    record: Record
    attempts: int
    first_failure_at: float | None
    enqueued_at: float


@dataclass(frozen=True)
class BatchPolicy:
    """How many records of one lane may share one claim, by record kind."""

    max_items: dict[str, int]
    max_bytes: dict[str, int] = field(default_factory=dict)
    #: kinds whose request is not idempotent: claimed as SENDING so a crash makes them ambiguous
    ambiguous_kinds: frozenset[str] = frozenset()
    #: kinds whose lane is not claimed while it holds an ambiguous record: their read-back matches
    #: by content (metric points), so nothing of the lane may be in flight while it is counted
    hold_ambiguous_lanes: frozenset[str] = frozenset()
    #: kind -> weight of its share of claims while several kinds have due work (empty: oldest first,
    #: whatever the kind); see :mod:`bridge.queue.shares`
    kind_weights: Mapping[str, int] = field(default_factory=dict)


class Claims(QueueCore):
    """Claiming due lanes and finding ambiguous records."""

    async def claim(self, policy: BatchPolicy, now: float | None = None) -> list[QueuedRecord]:
        """Claim the oldest due lane's records, as many as ``policy`` allows for that kind.

        A row that does not read back as a record is dead-lettered (reason ``unreadable``) in the
        same transaction, so it can never hold up its batch-mates or the worker.
        """
        claimed, unreadable = await self._run(self._claim_sync, policy, time.time() if now is None else now)
        count_unreadable(unreadable)
        return claimed

    _shares: KindShares | None = None
    _turns: LaneTurns | None = None

    def _claim_sync(self, policy: BatchPolicy, now: float) -> tuple[list[QueuedRecord], list[Unreadable]]:
        unreadable: list[Unreadable] = []
        with transaction(self.conn):
            while True:
                claimed = self._claim_by_share(policy, now, unreadable)
                if claimed is None or claimed:
                    return claimed or [], unreadable

    def _claim_by_share(
        self, policy: BatchPolicy, now: float, unreadable: list[Unreadable]
    ) -> list[QueuedRecord] | None:
        """The claim of the most owed kind that has due work (oldest first without weights)."""
        if not policy.kind_weights:
            return self._claim_lane(policy, now, unreadable, None)
        self._shares = KindShares.for_policy(self._shares, policy)
        idle: list[str] = []
        for kind in self._shares.order():
            claimed = self._claim_lane(policy, now, unreadable, kind)
            if claimed is not None:
                self._shares.served(kind, idle)
                return claimed
            idle.append(kind)
        return None

    def _claim_lane(
        self, policy: BatchPolicy, now: float, unreadable: list[Unreadable], only_kind: str | None
    ) -> list[QueuedRecord] | None:
        """One lane's claim (of ``only_kind``, if given); ``None`` when nothing is due, ``[]`` when
        all it had was unreadable."""
        conn = self.conn
        if only_kind is not None:
            self._turns = self._turns or LaneTurns()
            lane = run_choice(conn, self._turns.choose(
                only_kind, now, hold_ambiguous=only_kind in policy.hold_ambiguous_lanes))
            if lane is not None:
                return self._take_lane(policy, now, unreadable, lane, only_kind)
        held = sorted(policy.hold_ambiguous_lanes)
        # Cheap when nothing is ambiguous: the subquery is a search of the (state, ...) index.
        hold = (f" AND lane NOT IN (SELECT lane FROM records WHERE state = ? AND kind IN ({','.join('?' * len(held))}))"
                if held else "")
        of_kind = " AND kind = ?" if only_kind is not None else ""
        head = conn.execute(
            f"SELECT lane, kind FROM records WHERE state = ?{of_kind} AND next_attempt_at <= ?{hold}"
            " ORDER BY next_attempt_at, seq LIMIT 1",
            (State.READY, *((only_kind,) if only_kind is not None else ()), now,
             *((State.AMBIGUOUS, *held) if held else ())),
        ).fetchone()
        if head is None:
            return None
        return self._take_lane(policy, now, unreadable, head[0], head[1])

    def _take_lane(self, policy: BatchPolicy, now: float, unreadable: list[Unreadable],
                   lane: str, kind: str) -> list[QueuedRecord]:
        """Claim ``lane``'s due records, as many as one request of ``kind`` carries."""
        conn = self.conn
        limit = policy.max_items.get(kind, 1)
        rows = conn.execute(
            "SELECT seq, body, attempts, first_failure_at, enqueued_at, size FROM records"
            " WHERE lane = ? AND state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
            (lane, State.READY, now, limit),
        ).fetchall()
        byte_cap = policy.max_bytes.get(kind)
        if byte_cap is not None:
            kept: list[Any] = []
            total = 0
            for row in rows:
                if kept and total + row[5] > byte_cap:
                    break
                kept.append(row)
                total += row[5]
            rows = kept
        state = State.SENDING if kind in policy.ambiguous_kinds else State.CLAIMED
        claimed = self._decode(rows, unreadable)
        conn.executemany(
            "UPDATE records SET state = ? WHERE seq = ?", [(state, q.seq) for q in claimed]
        )
        return claimed

    def _decode(self, rows: Sequence[Any], unreadable: list[Unreadable]) -> list[QueuedRecord]:
        """Rows (seq, body, attempts, first_failure_at, enqueued_at, ...) as records; a row that
        does not read back is moved to the dead-letter set (inside the caller's transaction)."""
        out: list[QueuedRecord] = []
        for r in rows:
            try:
                out.append(QueuedRecord(r[0], record_from_json(r[1]), r[2], r[3], r[4]))
            except Exception as exc:  # whatever it is, it must not stop the sender
                detail = f"stored record does not read back: {describe_invalid(exc)}"
                for rid, kind, source in move_to_dead(self.conn, [r[0]], UNREADABLE, detail, None):
                    unreadable.append(Unreadable(rid, kind, source, detail))
        return out

    async def next_due_at(self) -> float | None:
        """When the earliest READY record becomes due (None when there is none)."""
        return await self._run(self._earliest_sync, State.READY)

    async def newest_in_lane(self, lane: str) -> int | None:
        """The highest seq among the undelivered records of ``lane`` (any state)."""
        return await self._run(self._newest_in_lane_sync, lane)

    def _newest_in_lane_sync(self, lane: str) -> int | None:
        row = self.conn.execute("SELECT MAX(seq) FROM records WHERE lane = ?", (lane,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _earliest_sync(self, state: State) -> float | None:
        """The earliest ``next_attempt_at`` of records in ``state`` (for AMBIGUOUS: settle time)."""
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM records WHERE state = ?", (state,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def ambiguous(self, limit: int = 1000, *, settled_by: float | None = None) -> list[QueuedRecord]:
        """Records whose outcome is unknown, oldest first (lanes kept together).

        With ``settled_by``, only those whose settle time has passed by then. A row that does not
        read back is dead-lettered, as in :meth:`claim`.
        """
        found, unreadable = await self._run(self._ambiguous_sync, limit, settled_by)
        count_unreadable(unreadable)
        return found

    def _ambiguous_sync(self, limit: int, settled_by: float | None) -> tuple[list[QueuedRecord], list[Unreadable]]:
        unreadable: list[Unreadable] = []
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT seq, body, attempts, first_failure_at, enqueued_at FROM records"
                " WHERE state = ? AND next_attempt_at <= ? ORDER BY lane, seq LIMIT ?",
                (State.AMBIGUOUS, float("inf") if settled_by is None else settled_by, limit),
            ).fetchall()
            found = self._decode(rows, unreadable)
        return found, unreadable

    async def next_settled_at(self) -> float | None:
        """When the earliest ambiguous record may be read back (None when there is none)."""
        return await self._run(self._earliest_sync, State.AMBIGUOUS)


def run_choice(conn: sqlite3.Connection, choice: Choice) -> str | None:
    """Answer a :class:`LaneTurns` choice's probes on ``conn``; the lane it chose, or None."""
    try:
        probe = next(choice)
        while True:
            row = conn.execute(*probe).fetchone()
            probe = choice.send(None if row is None else row[0])
    except StopIteration as chosen:
        return chosen.value  # type: ignore[no-any-return]


def count_unreadable(unreadable: list[Unreadable]) -> None:
    """Count and log rows that were dead-lettered because they no longer read back."""
    for item in unreadable:
        metrics.RECORDS_DEAD_LETTERED.labels(item.source, item.kind, UNREADABLE).inc()
        log.error("record_unreadable", record_id=item.id, kind=item.kind, detail=item.detail)

