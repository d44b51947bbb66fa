"""Claiming work for the sender and settling its outcomes, on PostgreSQL.

Claims lock the rows they take with ``FOR UPDATE SKIP LOCKED``: a replica claiming at the same
moment skips them, and one that looks after the commit sees them no longer READY, so two
replicas never hold the same record. What a claim, a read-back or an outcome does to a record
is the same as on SQLite (bridge/queue/claims.py, outcomes.py); only the statements differ.

While :meth:`PostgresQueue.may_send` says no (another replica holds the sender lock, see
store.py), there is nothing to claim and nothing to read back here.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import AsyncConnection

from bridge.queue.claims import BatchPolicy, QueuedRecord, count_unreadable
from bridge.queue.dead_letters import UNREADABLE, Unreadable
from bridge.queue.outcomes import MAX_ERROR, point_key
from bridge.queue.postgres.core import PgCore
from bridge.queue.postgres.keeping import move_to_dead
from bridge.queue.postgres.schema import pg_statement, stored_text
from bridge.queue.schema import PARKED_PREFIX, State
from bridge.queue.shares import KindShares
from bridge.queue.turns import Choice, LaneTurns
from bridge.records import describe_invalid, record_from_json


class PgSending(PgCore):
    """Claims, ambiguous records, and delivered / rescheduled / ambiguous outcomes."""

    async def claim(self, policy: BatchPolicy, now: float | None = None) -> list[QueuedRecord]:
        """Claim the oldest due lane's records, as many as ``policy`` allows for that kind.

        A row that does not read back as a record is dead-lettered (reason ``unreadable``) in the
        same transaction. Rows another replica is claiming are skipped, never shared.
        """
        if not await self.may_send():
            return []
        at = time.time() if now is None else now
        claimed, unreadable = await self._tx(lambda conn: self._claim_tx(conn, policy, at))
        count_unreadable(unreadable)
        return claimed

    _shares: KindShares | None = None
    _turns: LaneTurns | None = None

    async def _claim_tx(self, conn: AsyncConnection[Any], policy: BatchPolicy,
                        now: float) -> tuple[list[QueuedRecord], list[Unreadable]]:
        unreadable: list[Unreadable] = []
        while True:
            claimed = await self._claim_by_share(conn, policy, now, unreadable)
            if claimed is None or claimed:
                return claimed or [], unreadable

    async def _claim_by_share(self, conn: AsyncConnection[Any], policy: BatchPolicy, now: float,
                              unreadable: list[Unreadable]) -> list[QueuedRecord] | None:
        """The claim of the most owed kind that has due work (bridge/queue/shares.py), as on SQLite."""
        if not policy.kind_weights:
            return await self._claim_lane(conn, policy, now, unreadable, None)
        self._shares = KindShares.for_policy(self._shares, policy)
        idle: list[str] = []
        for kind in self._shares.order():
            claimed = await self._claim_lane(conn, policy, now, unreadable, kind)
            if claimed is not None:
                self._shares.served(kind, idle)
                return claimed
            idle.append(kind)
        return None

    async def _claim_lane(self, conn: AsyncConnection[Any], policy: BatchPolicy, now: float,
                          unreadable: list[Unreadable], only_kind: str | None) -> list[QueuedRecord] | None:
        """One lane's claim (of ``only_kind``, if given); ``None`` when nothing is due, ``[]`` when
        all it had was unreadable."""
        if only_kind is not None:
            self._turns = self._turns or LaneTurns()
            lane = await run_choice(conn, self._turns.choose(
                only_kind, now, hold_ambiguous=only_kind in policy.hold_ambiguous_lanes))
            # Empty when another replica holds the lane's rows: then the oldest lane not held.
            claimed = [] if lane is None else await self._take_lane(conn, policy, now, unreadable, lane, only_kind)
            if claimed:
                return claimed
        held = sorted(policy.hold_ambiguous_lanes)
        cur = await conn.execute(
            "SELECT lane, kind FROM records WHERE state = %s AND (%s::text IS NULL OR kind = %s)"
            " AND next_attempt_at <= %s"
            " AND NOT (lane = ANY(SELECT lane FROM records WHERE state = %s AND kind = ANY(%s)))"
            " ORDER BY next_attempt_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED",
            (State.READY, only_kind, only_kind, now, State.AMBIGUOUS, held))
        head = await cur.fetchone()
        if head is None:
            return None
        return await self._take_lane(conn, policy, now, unreadable, head[0], head[1])

    async def _take_lane(self, conn: AsyncConnection[Any], policy: BatchPolicy, now: float,
                         unreadable: list[Unreadable], lane: str, kind: str) -> list[QueuedRecord]:
        """Claim ``lane``'s due records not held by another replica, as many as one request carries."""
        cur = await conn.execute(
            "SELECT seq, body, attempts, first_failure_at, enqueued_at, size FROM records"
            " WHERE lane = %s AND state = %s AND next_attempt_at <= %s ORDER BY next_attempt_at, seq LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (lane, State.READY, now, policy.max_items.get(kind, 1)))
        rows = await cur.fetchall()
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
        claimed = await self._decode(conn, rows, unreadable)
        state = State.SENDING if kind in policy.ambiguous_kinds else State.CLAIMED
        await conn.execute("UPDATE records SET state = %s WHERE seq = ANY(%s)", (state, [q.seq for q in claimed]))
        return claimed

    async def _decode(self, conn: AsyncConnection[Any], rows: Sequence[Any],
                      unreadable: list[Unreadable]) -> list[QueuedRecord]:
        """Rows (seq, body, attempts, first_failure_at, enqueued_at, ...) as records; a row that
        does not read back is moved to the dead-letter set (inside the caller's transaction)."""
        out: list[QueuedRecord] = []
        for r in rows:
            try:
                out.append(QueuedRecord(r[0], record_from_json(r[1]), r[2], r[3], r[4]))
            except Exception as exc:  # whatever it is, it must not stop the sender
                detail = f"stored record does not read back: {describe_invalid(exc)}"
                moved = await move_to_dead(conn, [r[0]], UNREADABLE, detail, None)
                self._counted(-len(moved), -sum(m[3] for m in moved))
                unreadable.extend(Unreadable(m[0], m[1], m[2], detail) for m in moved)
        return out

    async def next_due_at(self) -> float | None:
        """When the earliest READY record becomes due (None when there is none, or not the sender)."""
        return await self._earliest(State.READY)

    async def newest_in_lane(self, lane: str) -> int | None:
        """The highest seq among the undelivered records of ``lane`` (any state)."""

        async def read(conn: AsyncConnection[Any]) -> int | None:
            cur = await conn.execute("SELECT MAX(seq) FROM records WHERE lane = %s", (lane,))
            row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._tx(read)

    async def _earliest(self, state: State) -> float | None:
        if not await self.may_send():
            return None

        async def read(conn: AsyncConnection[Any]) -> float | None:
            cur = await conn.execute("SELECT MIN(next_attempt_at) FROM records WHERE state = %s", (state,))
            row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._tx(read)

    async def ambiguous(self, limit: int = 1000, *, settled_by: float | None = None) -> list[QueuedRecord]:
        """Records whose outcome is unknown, oldest first (lanes kept together).

        With ``settled_by``, only those whose settle time has passed by then. A row that does not
        read back is dead-lettered, as in :meth:`claim`.
        """
        if not await self.may_send():
            return []
        until = float("inf") if settled_by is None else settled_by

        async def read(conn: AsyncConnection[Any]) -> tuple[list[QueuedRecord], list[Unreadable]]:
            unreadable: list[Unreadable] = []
            cur = await conn.execute(
                "SELECT seq, body, attempts, first_failure_at, enqueued_at FROM records"
                " WHERE state = %s AND next_attempt_at <= %s ORDER BY lane, seq LIMIT %s",
                (State.AMBIGUOUS, until, limit))
            return await self._decode(conn, await cur.fetchall(), unreadable), unreadable

        found, unreadable = await self._tx(read)
        count_unreadable(unreadable)
        return found

    async def next_settled_at(self) -> float | None:
        """When the earliest ambiguous record may be read back (None when there is none)."""
        return await self._earliest(State.AMBIGUOUS)

    async def mark_delivered(self, items: Iterable[tuple[int, str | None]], *, how: str = "sent") -> None:
        """Records (by seq) that Cortex stored, with the uuid it returned where there is one."""
        pairs = list(items)
        if pairs:
            gone, size = await self._tx(lambda conn: _delivered(conn, pairs, how))
            self._counted(-gone, -size)

    async def delivered_points(self, lane: str, since: float) -> tuple[Counter[str], bool]:
        """How many points of each :func:`point_key` the bridge delivered on ``lane``.

        The flag says whether the lane has a request in flight or delivered anything at or
        after ``since`` (wall-clock): then a read-back taken since may be incomplete.
        """
        async def read(conn: AsyncConnection[Any]) -> tuple[Counter[str], bool]:
            cur = await conn.execute("SELECT point, delivered_at FROM delivered_points WHERE lane = %s", (lane,))
            counts: Counter[str] = Counter()
            moving = False
            for point, delivered_at in await cur.fetchall():
                counts[point] += 1
                moving = moving or delivered_at >= since
            cur = await conn.execute("SELECT 1 FROM records WHERE lane = %s AND state = ANY(%s) LIMIT 1",
                                     (lane, [State.SENDING, State.CLAIMED]))
            return counts, moving or await cur.fetchone() is not None

        return await self._tx(read)

    async def reschedule(self, seqs: Sequence[int], *, next_attempt_at: float, error: str,
                         count_attempt: bool, parked: bool = False) -> None:
        """Put records back to READY, due at ``next_attempt_at``; an idle worker is woken for them.

        ``parked``: Cortex answered 404 (the error is kept under :data:`PARKED_PREFIX`).
        """
        now = time.time()
        error = PARKED_PREFIX + error if parked else error

        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute(
                "UPDATE records SET state = %s, next_attempt_at = %s, last_error = %s, attempts = attempts + %s,"
                " first_failure_at = COALESCE(first_failure_at, %s) WHERE seq = ANY(%s)",
                (State.READY, next_attempt_at, stored_text(error, MAX_ERROR), 1 if count_attempt else 0,
                 now if count_attempt else None, list(seqs)))

        await self._tx(write)
        self._notify_ready()

    async def retry_now(self, ids: Sequence[str] | None = None, *, parked: bool = False) -> int:
        """Make READY records that wait for a later attempt due now (all, ``ids``, or the parked
        ones); records being sent or read back are never touched. Returns how many."""
        now = time.time()

        async def write(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute(
                "UPDATE records SET next_attempt_at = %s WHERE state = %s AND next_attempt_at > %s"
                " AND (NOT %s OR left(last_error, %s) = %s) AND (%s::text[] IS NULL OR id = ANY(%s))",
                (now, State.READY, now, parked, len(PARKED_PREFIX), PARKED_PREFIX,
                 list(ids) if ids else None, list(ids) if ids else None))
            return int(cur.rowcount)

        released = await self._tx(write)
        self._notify_ready()
        return released

    async def mark_ambiguous(self, seqs: Sequence[int], error: str) -> None:
        """The request for these records may or may not have been stored by Cortex.

        They are read back only after ``settle_seconds``: until then the request may still be
        alive at Cortex, and a read-back could miss what it is about to store.
        """
        until = time.time() + self.settle_seconds

        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute("UPDATE records SET state = %s, next_attempt_at = %s, last_error = %s"
                               " WHERE seq = ANY(%s)", (State.AMBIGUOUS, until, stored_text(error, MAX_ERROR), list(seqs)))

        await self._tx(write)


async def run_choice(conn: AsyncConnection[Any], choice: Choice) -> str | None:
    """Answer a :class:`LaneTurns` choice's probes on ``conn``; the lane it chose, or None."""
    try:
        sql, params = next(choice)
        while True:
            row = await (await conn.execute(pg_statement(sql), params)).fetchone()
            sql, params = choice.send(None if row is None else row[0])
    except StopIteration as chosen:
        return chosen.value  # type: ignore[no-any-return]


async def _delivered(conn: AsyncConnection[Any], pairs: list[tuple[int, str | None]], how: str) -> tuple[int, int]:
    """Move delivered records to the history; returns how many left ``records`` and their bytes."""
    now = time.time()
    cur = await conn.execute(
        "DELETE FROM records r USING unnest(%s::bigint[], %s::text[]) AS v(seq, uuid) WHERE r.seq = v.seq"
        " RETURNING r.id, r.kind, r.lane, r.body, r.source, r.received_at, r.size, v.uuid",
        ([p[0] for p in pairs], [p[1] for p in pairs]))
    rows = await cur.fetchall()
    if not rows:
        return 0, 0
    docs = [json.loads(row[3]) for row in rows]
    await conn.execute(
        "INSERT INTO delivered (id, kind, entity, source, cortex_uuid, received_at, delivered_at, how)"
        " SELECT i, k, e, s, u, r, %s, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::float8[]) AS v(i, k, e, s, u, r) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,"
        " entity = excluded.entity, source = excluded.source, cortex_uuid = excluded.cortex_uuid,"
        " received_at = excluded.received_at, delivered_at = excluded.delivered_at, how = excluded.how",
        (now, how, [r[0] for r in rows], [r[1] for r in rows], [stored_text(str(d["entity"])) for d in docs],
         [r[4] for r in rows], [r[7] for r in rows], [r[5] for r in rows]))
    # A point is only its (timestamp, value): reconciliation must know how many equal points of
    # this lane Cortex already holds from the bridge.
    points = [(r[0], r[2], point_key(d["timestamp"], d["value"])) for r, d in zip(rows, docs, strict=True)
              if r[1] == "metric"]
    if points:
        await conn.execute(
            "INSERT INTO delivered_points (id, lane, point, delivered_at) SELECT i, l, p, %s"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(i, l, p) ON CONFLICT (id) DO UPDATE"
            " SET lane = excluded.lane, point = excluded.point, delivered_at = excluded.delivered_at",
            (now, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]))
    return len(rows), sum(int(r[6]) for r in rows)
