"""SQLite schema of the durable queue, and the record states it tracks.

One database file holds everything that must survive ``kill -9``: undelivered records, the
dead-letter set, a short history of delivered ids (dedup and ``trace``), seen webhook delivery
ids, and small key/value state for sources (Kafka offsets are Kafka's; Kubernetes watch state
lives here).
"""

from __future__ import annotations

import contextlib
import sqlite3
from enum import IntEnum

from bridge.queue.errors import NotAQueue


class State(IntEnum):
    """Where an undelivered record stands."""

    READY = 0  #: waiting for its ``next_attempt_at``
    SENDING = 1  #: claimed for a non-idempotent request: if found after a crash, outcome unknown
    AMBIGUOUS = 2  #: sent, outcome unknown: must be read back from Cortex before any resend
    CLAIMED = 3  #: claimed for an idempotent request: safe to resend after a crash


#: Start of the ``last_error`` of a record parked because Cortex answered 404 (entity or metric
#: key not found): how ``queue stats`` and ``trace`` tell it from a record backing off after an
#: error, and what ``queue retry --parked`` releases. Kept in the error text, not a column, so a
#: queue file of an earlier version needs no migration.
PARKED_PREFIX = "parked (404): "


def waiting_clause(now: float) -> tuple[str, list[object]]:
    """SQL condition (and its parameters) on ``records``: READY, not due before ``now``."""
    return "state = ? AND next_attempt_at > ?", [int(State.READY), now]


def parked_clause(now: float) -> tuple[str, list[object]]:
    """SQL condition (and its parameters) on ``records``: parked after a 404, not due before ``now``."""
    where, params = waiting_clause(now)
    return f"{where} AND substr(last_error, 1, ?) = ?", [*params, len(PARKED_PREFIX), PARKED_PREFIX]


def is_parked(state: int, last_error: str | None, next_attempt_at: float, now: float) -> bool:
    """What :func:`parked_clause` selects, for one row already read."""
    return (state == State.READY and next_attempt_at > now
            and last_error is not None and last_error.startswith(PARKED_PREFIX))


#: 2: ``totals`` kept by triggers; 3: ``spend`` (requests sent to Cortex, bridge/queue/spend.py);
#: 4: records counted by the statements that move them, not a trigger per row (bridge/queue/totals.py)
SCHEMA_VERSION = 4

_DDL = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    lane TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    first_failure_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS records_due ON records (state, next_attempt_at, seq);
-- a claim for one kind (weighted shares) finds its oldest due record without scanning others
CREATE INDEX IF NOT EXISTS records_kind_due ON records (state, kind, next_attempt_at, seq);
CREATE INDEX IF NOT EXISTS records_lane ON records (lane, state, next_attempt_at, seq);
-- turns inside a kind (bridge/queue/turns.py): the next source, its next lane, whether it is due
CREATE INDEX IF NOT EXISTS records_turns ON records (kind, state, source, lane, next_attempt_at);

CREATE TABLE IF NOT EXISTS delivered (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    entity TEXT NOT NULL,
    source TEXT NOT NULL,
    cortex_uuid TEXT,
    received_at REAL NOT NULL,
    delivered_at REAL NOT NULL,
    how TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (delivered_at);

-- Delivered metric points by lane (kind, key, entity): a read-back that finds equal points must
-- know how many of them the bridge had already delivered. Expires with ``delivered``.
CREATE TABLE IF NOT EXISTS delivered_points (
    id TEXT PRIMARY KEY,
    lane TEXT NOT NULL,
    point TEXT NOT NULL,
    delivered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_points_lane ON delivered_points (lane, point);
CREATE INDEX IF NOT EXISTS delivered_points_at ON delivered_points (delivered_at);

CREATE TABLE IF NOT EXISTS dead (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    lane TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    status INTEGER,
    dead_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_at ON dead (dead_at);

CREATE TABLE IF NOT EXISTS deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    record_ids TEXT NOT NULL,
    PRIMARY KEY (source, delivery_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_seen ON deliveries (seen_at);

CREATE TABLE IF NOT EXISTS source_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

# Depth, bytes and dead letters kept exact in the same transaction as every change, whichever
# process makes it (an operator's ``dlq replay`` included): records by the statements that insert
# and delete them (bridge/queue/totals.py, since version 4), the rest by triggers. Counting
# instead takes ~0.6 s at a million queued records, all of it on the thread that acknowledges input.
_TOTALS = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    records INTEGER NOT NULL,
    record_bytes INTEGER NOT NULL,
    dead INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS records_resized AFTER UPDATE OF size ON records BEGIN
    UPDATE totals SET record_bytes = record_bytes - OLD.size + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS dead_in AFTER INSERT ON dead BEGIN
    UPDATE totals SET dead = dead + 1;
END;
CREATE TRIGGER IF NOT EXISTS dead_out AFTER DELETE ON dead BEGIN
    UPDATE totals SET dead = dead - 1;
END;
INSERT INTO totals (one, records, record_bytes, dead)
    SELECT 1, (SELECT COUNT(*) FROM records), (SELECT COALESCE(SUM(size), 0) FROM records),
           (SELECT COUNT(*) FROM dead)
    WHERE NOT EXISTS (SELECT 1 FROM totals);
UPDATE meta SET value = '2' WHERE key = 'schema_version' AND value = '1';
COMMIT;
"""


# Version 3, additive: the wall-clock send times of recent Cortex requests, so a restarted process
# knows what its predecessors spent of the current rate-limit window (bridge/queue/spend.py).
_SPEND = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS spend (
    n INTEGER PRIMARY KEY,
    sent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_at ON spend (sent_at);
UPDATE meta SET value = '3' WHERE key = 'schema_version' AND value IN ('1', '2');
COMMIT;
"""


# Version 4: the per-row triggers counting ``records`` go; bridge/queue/totals.py counts instead
# (the totals row is exact when this runs: the triggers kept it up to here, in this transaction).
_COUNTED = """
BEGIN IMMEDIATE;
DROP TRIGGER IF EXISTS records_in;
DROP TRIGGER IF EXISTS records_out;
UPDATE meta SET value = '4' WHERE key = 'schema_version' AND value IN ('1', '2', '3');
COMMIT;
"""


# Deploy groups (bridge/queue/deploy_groups.py) and the change failures linked to them
# (bridge/queue/change_failures.py): additive, created at open in older files too.
DEPLOY_GROUPS_DDL = """
CREATE TABLE IF NOT EXISTS deploy_groups (
    id INTEGER PRIMARY KEY,
    entity TEXT NOT NULL,
    environment TEXT NOT NULL,
    change TEXT NOT NULL,
    first_at REAL NOT NULL,
    creator_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deploy_groups_near ON deploy_groups (entity, environment, first_at);
CREATE INDEX IF NOT EXISTS deploy_groups_change ON deploy_groups (entity, environment, change, first_at);
CREATE INDEX IF NOT EXISTS deploy_groups_created ON deploy_groups (created_at);
CREATE TABLE IF NOT EXISTS deploy_members (
    n INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    group_id INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deploy_members_group ON deploy_members (group_id, n);
CREATE TABLE IF NOT EXISTS change_failures (
    group_id INTEGER NOT NULL,
    failure_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (group_id, failure_id)
);
"""


def column_text(value: str, limit: int) -> str:
    """Free text (a reason, an error, a detail) as it can be stored: at most ``limit`` characters,
    lone surrogates written as ``\\udXXX`` escapes.

    Details quote input and answers (an entity name from a payload, Cortex's message), and JSON
    lets a sender put a lone surrogate in them, which SQLite's UTF-8 cannot hold: storing it raw
    would fail the whole transaction, and with it the records it was to keep.
    """
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def state_key(key: str) -> str:
    """A source-state key as stored (lone surrogates escaped, as :func:`column_text` does).

    Keys quote input (a CDEvents subject id); every operation maps a key through this, so the
    same key always finds the same row.
    """
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def connect(path: str) -> sqlite3.Connection:
    """Open the queue database with the settings durability depends on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit fsyncs the WAL, so an acknowledged record survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    # INSERT OR REPLACE deletes the row it replaces: the delete trigger must see that.
    conn.execute("PRAGMA recursive_triggers=ON")
    # Keep the WAL small (checkpoint every ~1 MB, truncate to 4 MB after): a WAL that has taken
    # the last free space cannot be checkpointed, since the checkpoint itself needs room.
    conn.execute("PRAGMA wal_autocheckpoint=256")
    conn.execute("PRAGMA journal_size_limit=4194304")
    conn.executescript(_DDL)
    conn.executescript(DEPLOY_GROUPS_DDL)  # additive (IF NOT EXISTS): older files gain it at open
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_out'").fetchone() is None:
        conn.executescript(_TOTALS)  # new file, or a version-1 file: count once, then keep counting
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'spend'").fetchone() is None:
        conn.executescript(_SPEND)  # new file, or a version-1/2 file
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'records_in'").fetchone() is not None or \
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] in ("1", "2", "3"):
        conn.executescript(_COUNTED)  # a version-1/2/3 file
    return conn


#: Tables every bridge queue file has (a file without them is not one).
REQUIRED_TABLES = frozenset({"records", "delivered", "dead", "deliveries", "meta"})


def connect_readonly(path: str) -> sqlite3.Connection:
    """Open an existing file read-only (SQLite ``mode=ro``): nothing is created, converted or written."""
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False, timeout=30)


def check_is_queue(conn: sqlite3.Connection, path: str) -> None:
    """Raise :class:`NotAQueue` unless ``conn`` holds the bridge's tables and a schema version."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = sorted(REQUIRED_TABLES - tables)
    if missing:
        raise NotAQueue(f"{path} is not a cortex-bridge queue (no table {', '.join(missing)})")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise NotAQueue(f"{path} is not a cortex-bridge queue (no schema version in its meta table)")
    if int(row[0]) > SCHEMA_VERSION:
        raise NotAQueue(f"{path} has queue schema version {row[0]}; this cortex-bridge reads up to {SCHEMA_VERSION}")


def totals(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(undelivered records, their bytes, dead letters), without counting."""
    row = conn.execute("SELECT records, record_bytes, dead FROM totals WHERE one = 1").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connections)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as err:
                exc = err
                self._abort(err)
                raise
        self._abort(exc)

    def _abort(self, err: BaseException) -> None:
        # A failed statement or COMMIT can leave the transaction open: close it.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
            # The WAL itself may be what fills a small volume; a checkpoint shrinks it.
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
