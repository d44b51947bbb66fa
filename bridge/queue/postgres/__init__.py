"""The PostgreSQL queue backend: any number of replicas on one database, the SQLite guarantees.

:class:`PostgresQueue` implements :class:`~bridge.queue.backend.QueueBackend`. Layout, as for
SQLite one mixin per concern on a shared core: ``core.py`` (the pool, the transaction runner
that turns every driver error into a :class:`~bridge.queue.errors.QueueError`, depth and
gauges), ``writes.py`` (the group-commit transaction, source state), ``sending.py`` (claims
with ``FOR UPDATE SKIP LOCKED``, outcomes), ``keeping.py`` (dead letters, history, spend log),
``schema.py`` (tables, migrations under an advisory lock), ``sender_lock.py`` (the one-sender
rule) and ``store.py`` (composition, opening, closing).

Driver: psycopg 3 (``psycopg[binary]`` + ``psycopg-pool``) rather than asyncpg, because
``queue.postgres.dsn`` is documented as a libpq connection string or URL, and psycopg *is* libpq:
every libpq parameter (``sslmode``, ``sslrootcert``, ``target_session_attrs=read-write`` for a
multi-host DSN that must find the primary after a failover, ``service`` files, ``PG*``
environment variables) works as operators know it from ``psql``; asyncpg parses DSNs itself
and supports a subset. The binary wheel carries libpq, so nothing is needed from the system.
The pool checks each connection before lending it, which is what makes the queue recover by
itself after the database restarts. Both drivers are asyncio-native; psycopg's throughput is
ample for a group-commit design (one transaction per batch, not per record).
"""

from bridge.queue.postgres.schema import SCHEMA_VERSION
from bridge.queue.postgres.store import PostgresQueue

__all__ = ["SCHEMA_VERSION", "PostgresQueue"]
