"""PostgreSQL schema of the shared queue, its migrations, and how free text is stored.

The tables mirror the SQLite ones (bridge/queue/schema.py) with two differences that replicas
sharing one database need: ``admitted`` holds every record id that is queued, dead-lettered or
delivered within the history, with a primary key, so "this id was stored before" is decided by
``INSERT ... ON CONFLICT DO NOTHING`` in the appending transaction itself (never a
check-then-insert that two replicas could both pass); and there are no trigger-kept totals (one
totals row would serialize every replica's commits on its lock; depth is recounted instead).

Migrations run at start under a transaction-scoped advisory lock: two replicas starting at once
take turns, the second finds the version already applied. ``schema_version`` has one row per
applied version.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import AsyncConnection

from bridge.queue.errors import NotAQueue, QueueUnavailable
from bridge.queue.schema import column_text

#: Advisory lock keys (64-bit, arbitrary but fixed): "cortex-bridge migrate", "... sender" and
#: "... spend" (the deployment's one request window, bridge/queue/postgres/keeping.py).
MIGRATION_LOCK = 0x63627267_6D696772
SENDER_LOCK = 0x63627267_73656E64
SPEND_LOCK = 0x63627267_7370656E

_V1 = """
CREATE TABLE records (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    lane TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    first_failure_at DOUBLE PRECISION,
    last_error TEXT
);
CREATE INDEX records_due ON records (state, next_attempt_at, seq);
CREATE INDEX records_kind_due ON records (state, kind, next_attempt_at, seq);
CREATE INDEX records_lane ON records (lane, state, next_attempt_at, seq);

CREATE TABLE admitted (
    id TEXT PRIMARY KEY,
    admitted_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE delivered (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    entity TEXT NOT NULL,
    source TEXT NOT NULL,
    cortex_uuid TEXT,
    received_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION NOT NULL,
    how TEXT NOT NULL
);
CREATE INDEX delivered_at ON delivered (delivered_at);

CREATE TABLE delivered_points (
    id TEXT PRIMARY KEY,
    lane TEXT NOT NULL,
    point TEXT NOT NULL,
    delivered_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX delivered_points_lane ON delivered_points (lane, point);
CREATE INDEX delivered_points_at ON delivered_points (delivered_at);

CREATE TABLE dead (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    lane TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    status INTEGER,
    dead_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX dead_at ON dead (dead_at);

CREATE TABLE deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,
    record_ids TEXT NOT NULL,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX deliveries_seen ON deliveries (seen_at);

-- "C": prefix ranges (key >= p AND key < p || U+10FFFF) must compare code points, whatever
-- the database's collation.
CREATE TABLE source_state (
    key TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE spend (
    n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sent_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX spend_at ON spend (sent_at);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 2: which process sent each request, so every replica's admission counts the others'
# requests from the table and its own from its exact in-memory window.
_V2 = """
ALTER TABLE spend ADD COLUMN replica TEXT NOT NULL DEFAULT '';
"""

# Version 3: turns inside a kind (bridge/queue/turns.py): the next source, its next lane, whether it is due.
_V3 = "CREATE INDEX records_turns ON records (kind, state, source, lane, next_attempt_at);"

# Version 4: deploy groups (bridge/queue/deploy_groups.py), written in the appending transaction.
_V4 = """
CREATE TABLE deploy_groups (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity TEXT NOT NULL,
    environment TEXT NOT NULL,
    change TEXT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    creator_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX deploy_groups_near ON deploy_groups (entity, environment, first_at);
CREATE TABLE deploy_members (
    n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    group_id BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX deploy_members_group ON deploy_members (group_id, n);
"""

# Version 5: change failures linked to deploy groups (bridge/queue/change_failures.py), once per pair;
# deploy groups found by their change (a join reads the groups of its change, not its whole window)
# and by creation (lineage looks at the image-only groups of the window, not at every group).
_V5 = """
CREATE INDEX deploy_groups_change ON deploy_groups (entity, environment, change, first_at);
CREATE INDEX deploy_groups_created ON deploy_groups (created_at);
CREATE TABLE change_failures (
    group_id BIGINT NOT NULL,
    failure_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (group_id, failure_id)
);
"""

#: Migration ``n`` (1-based) brings the schema from version n-1 to n.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5)
SCHEMA_VERSION = len(MIGRATIONS)


def stored_text(value: str, limit: int | None = None) -> str:
    """Text as PostgreSQL can hold it: lone surrogates escaped (as on SQLite) and NUL as ``\\x00``.

    PostgreSQL's text type refuses NUL, which a JSON payload can carry into a key or a detail;
    storing it raw would fail the whole transaction, and with it the records it was to keep.
    """
    text = column_text(value, len(value) if limit is None else limit)
    return text.replace("\x00", "\\x00")


def pg_statement(sql: str) -> str:
    """A statement written for both engines (SQLite's ``?`` placeholders) as psycopg runs it.

    For the statements and selections shared with SQLite (bridge/queue/inspect.py, schema.py,
    dead_letters.py): none holds a literal ``?`` or ``%``, which is checked, so the translation
    cannot misfire.
    """
    if "%" in sql:
        raise ValueError("a statement for both engines must not contain '%'")
    return sql.replace("?", "%s")


async def schema_version(conn: AsyncConnection) -> int | None:
    """The applied schema version, or None when the database has no bridge schema yet."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


def check_version(version: int | None) -> None:
    """Raise :class:`NotAQueue` for a schema this release cannot use (newer than it knows)."""
    if version is not None and version > SCHEMA_VERSION:
        raise NotAQueue(f"the database has queue schema version {version}; this cortex-bridge knows up to"
                        f" {SCHEMA_VERSION} (upgrade cortex-bridge)")


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` (one transaction, under the migration lock)."""
    async with conn.transaction():
        # Held until COMMIT: a replica starting at the same time waits, then finds nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                           " version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        current = await schema_version(conn) or 0
        check_version(current)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                               (version, time.time()))
    return SCHEMA_VERSION


async def verify_database(dsn: str, *, timeout_seconds: float = 10.0) -> str:
    """Connect, and check that this release can use the database; returns what was found.

    For ``check-config --verify``: writes nothing (migrations are the bridge's, at start). Raises
    :class:`QueueUnavailable` (unreachable, refused, read-only) or :class:`NotAQueue` (a schema
    newer than this release), with messages that never quote the DSN or its password.
    """
    from bridge.queue.postgres.core import dsn_password, unavailable

    password = dsn_password(dsn)
    try:
        async with await AsyncConnection.connect(dsn, autocommit=True, connect_timeout=max(2, int(timeout_seconds))) as conn:
            version = await schema_version(conn)
            cur = await conn.execute("SHOW transaction_read_only")
            row = await cur.fetchone()
    except psycopg.Error as exc:
        raise unavailable(exc, password) from None
    if row is not None and row[0] == "on":
        raise QueueUnavailable("the queue database is read-only (a standby?): the bridge could not store input")
    check_version(version)
    if version is None:
        return f"queue database reachable; no schema yet (version {SCHEMA_VERSION} is created at the first start)"
    if version < SCHEMA_VERSION:
        return f"queue database reachable; schema version {version}, migrated to {SCHEMA_VERSION} at the next start"
    return f"queue database reachable; schema version {version}"
