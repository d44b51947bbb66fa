"""A real PostgreSQL for the tests, started from the ``pgserver`` wheel (no Docker, no system install).

``pgserver`` ships PostgreSQL server binaries inside a PyPI wheel (part of the ``test`` extra),
so ``pip install -e '.[test]'`` is all the set-up a fresh machine needs. One throwaway cluster
per test session (:class:`PostgresCluster`, ~1 s to initdb and start), one fresh database per
test (``CREATE DATABASE`` copies ``template1`` in milliseconds).

Root: PostgreSQL refuses to run as root. ``pgserver`` handles that itself when started as root
(as CI and this machine run the tests): it creates a system user ``pgserver``, chowns the data
directory to it, makes the directories above it traversable and runs ``initdb``/``pg_ctl`` as
that user. So the data directory is not under pytest's ``tmp_path``: pytest resets its base
directory to mode 0700 whenever a session starts (another worktree's, on a shared machine), which
locks that user out of a running cluster. The cluster listens on a Unix socket only (no TCP port to collide with the other
worktrees' clusters on a shared machine).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from pgserver import _commands
from pgserver.postgres_server import get_server
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class PostgresCluster:
    """A throwaway cluster in ``root`` that tests can also stop, start, and make read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = get_server(root / "pgdata", cleanup_mode="delete")
        self._names = itertools.count(1)

    @classmethod
    def in_temporary_directory(cls) -> PostgresCluster:
        """A cluster in a new directory of its own under the system's temporary directory."""
        return cls(Path(tempfile.mkdtemp(prefix="cortex-bridge-pg-")))

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` (socket directory in the query string)."""
        return str(self.server.get_uri(database))

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        name = f"bridge_test_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)

    def execute_admin(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` as the superuser, outside any transaction (``ALTER DATABASE`` etc.)."""
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql.encode())

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are terminated, as in a failover)."""
        # pgserver makes one function per binary at import: not visible to a type checker
        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        """Start the server again on the same socket."""
        self.server.ensure_postgres_running()

    def terminate_sessions(self, dsn: str) -> None:
        """End every other session on ``dsn``'s database (their pooled connections break)."""
        database = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", (database,))

    def close(self) -> None:
        """Stop the server and delete its data directory."""
        try:
            self.server.cleanup()
        except subprocess.CalledProcessError:
            pass  # already stopped by a test
        shutil.rmtree(self.root, ignore_errors=True)


def with_password(dsn: str, user: str, password: str) -> str:
    """``dsn`` as ``user`` with ``password`` (for tests that a password never shows)."""
    return make_conninfo(dsn, user=user, password=password)
