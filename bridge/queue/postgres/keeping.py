"""Dead letters, history pruning and the request spend log, on PostgreSQL.

The same operations as bridge/queue/dead_letters.py, history.py and spend.py, on tables every
replica shares: a dead letter one replica keeps, the history another prunes and the spend log
the sender restores from are one set for the deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import AsyncConnection

from bridge import metrics
from bridge.queue.dead_letters import MAX_DETAIL
from bridge.queue.poison import POISON_LANE, RAW_INPUT_KIND, RawInput
from bridge.queue.postgres.core import PgCore
from bridge.queue.postgres.schema import SPEND_LOCK, stored_text
from bridge.records import Record, encode_record, lane_of

_DEAD_COLUMNS = "id, kind, lane, source, body, size, received_at, attempts, reason, detail, status, dead_at"
_DEAD_ARRAYS = ("%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::float8[], %s::int[],"
                " %s::text[], %s::text[], %s::int[], %s::float8[]")


async def move_to_dead(conn: AsyncConnection[Any], seqs: list[int], reason: str, detail: str,
                       status: int | None) -> list[tuple[str, str, str, int]]:
    """Move records to ``dead`` (inside the caller's transaction); returns (id, kind, source, size) of each."""
    cur = await conn.execute(
        "WITH gone AS (DELETE FROM records WHERE seq = ANY(%s)"
        " RETURNING id, kind, lane, source, body, size, received_at, attempts)"
        f" INSERT INTO dead ({_DEAD_COLUMNS}) SELECT *, %s, %s, %s::int, %s FROM gone"
        " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lane = excluded.lane, source = excluded.source,"
        " body = excluded.body, size = excluded.size, received_at = excluded.received_at,"
        " attempts = excluded.attempts, reason = excluded.reason, detail = excluded.detail,"
        " status = excluded.status, dead_at = excluded.dead_at RETURNING id, kind, source, size",
        (seqs, stored_text(reason, MAX_DETAIL), stored_text(detail, MAX_DETAIL), status, time.time()))
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in await cur.fetchall()]


async def _insert_dead(conn: AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> list[str]:
    """Insert dead-letter rows (columns as ``_DEAD_COLUMNS``) unless their id is there; returns the new ids."""
    cur = await conn.execute(
        f"INSERT INTO dead ({_DEAD_COLUMNS}) SELECT * FROM unnest({_DEAD_ARRAYS})"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        tuple([row[i] for row in rows] for i in range(12)))
    return [str(r[0]) for r in await cur.fetchall()]


class PgKeeping(PgCore):
    """The dead-letter set, history pruning and the spend log."""

    async def dead_letter(self, seqs: Sequence[int], *, reason: str, detail: str, status: int | None) -> None:
        """Move records to the dead-letter set: they will not be retried unless replayed."""
        moved = await self._tx(lambda conn: move_to_dead(conn, list(seqs), reason, detail, status))
        self._counted(-len(moved), -sum(m[3] for m in moved))

    async def dead_letter_input(self, records: Sequence[Record], *, reason: str, detail: str) -> None:
        """Keep records that can never be sent (e.g. unresolvable entity) straight in the dead-letter set.

        One transaction, never through the ready queue, so the sender cannot pick them up; a
        record id already stored (queued, delivered or dead) is not stored again.
        Raises :class:`~bridge.records.UnstorableRecord` or :class:`QueueUnavailable`.
        """
        bodies = {record.id: (record, encode_record(record)) for record in records}  # raises UnstorableRecord
        if not bodies:
            return
        now = time.time()

        async def keep(conn: AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(
                "INSERT INTO admitted (id, admitted_at) SELECT i, %s FROM unnest(%s::text[]) AS v(i)"
                " ON CONFLICT DO NOTHING RETURNING id", (now, sorted(bodies)))
            fresh = [str(r[0]) for r in await cur.fetchall()]
            rows = [(rid, bodies[rid][0].kind, lane_of(bodies[rid][0]), bodies[rid][0].provenance.source,
                     bodies[rid][1], len(bodies[rid][1]), bodies[rid][0].provenance.received_at.timestamp(), 0,
                     stored_text(reason, MAX_DETAIL), stored_text(detail, MAX_DETAIL), None, now)
                    for rid in fresh]
            return await _insert_dead(conn, rows) if rows else []

        for rid in await self._tx(keep):
            record = bodies[rid][0]
            metrics.RECORDS_DEAD_LETTERED.labels(record.provenance.source, record.kind, reason).inc()

    async def dead_letter_raw(self, inputs: Sequence[RawInput]) -> list[str]:
        """Store ``inputs`` in the dead-letter set durably (one transaction); return their entry ids.

        An entry that is already there (the same input redelivered) is kept as it was.
        Raises :class:`QueueUnavailable` when the database cannot be written.
        """
        now = time.time()
        rows = {}
        for item in inputs:
            body = item.body()
            rows[item.id] = (item.id, RAW_INPUT_KIND, POISON_LANE, stored_text(item.source), stored_text(body),
                             len(body), item.received_at, 0, stored_text(item.reason, MAX_DETAIL),
                             stored_text(item.detail, MAX_DETAIL), None, now)
        if rows:
            await self._tx(lambda conn: _insert_dead(conn, [rows[k] for k in sorted(rows)]))
        return [item.id for item in inputs]

    async def dead_counts_by_kind(self) -> dict[str, int]:
        """How many dead letters there are of each kind (``raw_input`` for inputs that were no record)."""
        async def read(conn: AsyncConnection[Any]) -> dict[str, int]:
            cur = await conn.execute("SELECT kind, COUNT(*) FROM dead GROUP BY kind")
            return {str(kind): int(n) for kind, n in await cur.fetchall()}

        return await self._tx(read)

    async def prune_history(self, chunk: int = 5000) -> int:
        """Forget delivered ids, delivery ids and deploy groups older than the configured history.

        In transactions of at most ``chunk`` rows per table, so a large expiry never holds locks
        for long. A forgotten delivered id leaves ``admitted`` with it: it may be stored again.
        """
        cutoff = time.time() - self.history_seconds
        total = 0
        while True:
            removed = await self._tx(lambda conn: _prune(conn, cutoff, chunk))
            total += removed
            if removed == 0:
                return total

    async def load_spends(self, since: float) -> list[float]:
        """Send stamps (wall clock) recorded at or after ``since``, by any replica, oldest first."""
        async def read(conn: AsyncConnection[Any]) -> list[float]:
            cur = await conn.execute("SELECT sent_at FROM spend WHERE sent_at >= %s ORDER BY sent_at", (since,))
            return [float(r[0]) for r in await cur.fetchall()]

        return await self._tx(read)

    async def record_spends(self, count: int, *, clock: Callable[[], float],
                            expiry: Callable[[float], float | None]) -> None:
        """Durably note ``count`` requests sent at ``clock()``, read just before the commit.

        ``expiry(stamp)`` says before when sends are forgotten in the same transaction (``None``:
        not this time). Committed with ``synchronous_commit = off``: the row survives the bridge
        being killed (the server has it), though not a crash of the database server itself.
        """
        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute("SET LOCAL synchronous_commit = off")
            stamp = clock()  # just before the commit: as late as possible
            await conn.execute("INSERT INTO spend (sent_at) SELECT %s FROM generate_series(1, %s)", (stamp, count))
            before = expiry(stamp)
            if before is not None:
                await conn.execute("DELETE FROM spend WHERE sent_at < %s", (before,))

        await self._tx(write)

    async def admit_spend(self, replica: str, *, room: int, span: float,
                          expiry: Callable[[float], float | None]) -> float | None:
        """Record one request of ``replica`` about to be sent, if the deployment's window has room.

        Room means fewer than ``room`` requests of *other* replicas stamped in the last ``span``
        seconds (the caller counts its own requests exactly, in memory, and passes what is left of
        the quota). Check and insert run under one transaction-scoped advisory lock, so two
        replicas can never both take the last slot, and stamps are the database server's clock,
        so clock skew between replicas' hosts cannot shift anyone's window. Returns ``None`` once
        the request is recorded (committed); otherwise the seconds until the oldest other request
        counted stops counting. ``expiry`` as for :meth:`record_spends`.
        """
        async def admit(conn: AsyncConnection[Any]) -> float | None:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SPEND_LOCK,))
            cur = await conn.execute(SPEND_WINDOW, (span, replica, span, replica))
            row = await cur.fetchone()
            assert row is not None
            stamp, others, oldest = float(row[0]), int(row[1]), row[2]
            wait = spend_wait(stamp, others, oldest, room=room, span=span)
            if wait is not None:
                return wait
            await conn.execute(SPEND_INSERT, (stamp, replica))
            before = expiry(stamp)
            if before is not None:
                await conn.execute("DELETE FROM spend WHERE sent_at < %s", (before,))
            return None

        return await self._tx(admit)


#: The database's clock now, and the requests of replicas other than ``replica`` in the last
#: ``span`` seconds (their count and the oldest stamp); parameters (span, replica, span, replica).
SPEND_WINDOW = ("SELECT now_at, (SELECT COUNT(*) FROM spend WHERE sent_at >= now_at - %s AND replica <> %s),"
                " (SELECT MIN(sent_at) FROM spend WHERE sent_at >= now_at - %s AND replica <> %s)"
                " FROM (SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now_at) AS now")
SPEND_INSERT = "INSERT INTO spend (sent_at, replica) VALUES (%s, %s)"


def spend_wait(stamp: float, others: int, oldest: float | None, *, room: int, span: float) -> float | None:
    """``None`` when a request may take its slot, else the seconds until the oldest other one stops counting."""
    if others < room:
        return None
    return max(0.0, float(oldest) + span - stamp) if oldest is not None else span


async def _prune(conn: AsyncConnection[Any], cutoff: float, chunk: int) -> int:
    cur = await conn.execute(
        "WITH old AS (DELETE FROM delivered WHERE id IN"
        " (SELECT id FROM delivered WHERE delivered_at < %s ORDER BY delivered_at LIMIT %s) RETURNING id),"
        " forgotten AS (DELETE FROM admitted a USING old WHERE a.id = old.id)"
        " SELECT COUNT(*) FROM old", (cutoff, chunk))
    row = await cur.fetchone()
    n = int(row[0]) if row else 0
    cur = await conn.execute(
        "DELETE FROM delivered_points WHERE id IN"
        " (SELECT id FROM delivered_points WHERE delivered_at < %s ORDER BY delivered_at LIMIT %s)", (cutoff, chunk))
    n += cur.rowcount
    cur = await conn.execute(
        "DELETE FROM deliveries WHERE (source, delivery_id) IN"
        " (SELECT source, delivery_id FROM deliveries WHERE seen_at < %s ORDER BY seen_at LIMIT %s)", (cutoff, chunk))
    n += cur.rowcount
    # Deploy groups (deploy_groups.py) long past their window: members first, then groups.
    old_groups = "SELECT id FROM deploy_groups WHERE created_at < %s ORDER BY id LIMIT %s"
    await conn.execute(f"DELETE FROM deploy_members WHERE group_id IN ({old_groups})", (cutoff, chunk))
    await conn.execute(f"DELETE FROM change_failures WHERE group_id IN ({old_groups})", (cutoff, chunk))
    cur = await conn.execute(f"DELETE FROM deploy_groups WHERE id IN ({old_groups})", (cutoff, chunk))
    return n + cur.rowcount
