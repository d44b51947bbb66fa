"""``check-config --verify`` with the PostgreSQL queue: the connection and the schema version are
checked, and neither the DSN nor its password is ever printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg

from bridge.cortex.simulator import SimulatorServer
from bridge.queue.postgres import SCHEMA_VERSION, PostgresQueue
from tests.support.cortex import SIM_TOKEN
from tests.support.postgres import with_password
from tests.test_cli import cli

PASSWORD = "pg-pa55-never-shown"


def config(tmp_path: Path, dsn: str, cortex_url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps({
        "cortex": {"url": cortex_url, "token": SIM_TOKEN},
        "ingest": {"allow_unauthenticated": True},
        "queue": {"backend": "postgres", "postgres": {"dsn": dsn, "statement_timeout_seconds": 3}},
    }))
    return path


async def test_verify_reports_the_schema_and_never_the_password(tmp_path: Path, pg_dsn: str,
                                                                sim: SimulatorServer) -> None:
    # The test cluster trusts local sockets, so any password is accepted: it only has to stay hidden.
    dsn = with_password(pg_dsn, "postgres", PASSWORD)
    path = config(tmp_path, dsn, sim.url)
    before = await asyncio.to_thread(cli, "--config", str(path), "check-config", "--verify")
    assert before.returncode == 0, before.stderr
    assert "no schema yet" in before.stderr and "Cortex accepted the token" in before.stderr
    queue = await PostgresQueue.open(dsn)
    await queue.close()
    after = await asyncio.to_thread(cli, "--config", str(path), "check-config", "--verify")
    assert after.returncode == 0 and f"schema version {SCHEMA_VERSION}" in after.stderr
    for result in (before, after):
        assert PASSWORD not in result.stdout + result.stderr


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    dsn = f"postgresql://bridge:{PASSWORD}@/queue?host={tmp_path}/no-server-here"
    result = cli("--config", str(config(tmp_path, dsn)), "check-config", "--verify")
    assert result.returncode == 1 and "queue database" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.stdout + result.stderr


async def test_a_newer_schema_is_refused_with_what_to_do(tmp_path: Path, pg_dsn: str) -> None:
    queue = await PostgresQueue.open(pg_dsn)
    await queue.close()
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    result = await asyncio.to_thread(cli, "--config", str(config(tmp_path, pg_dsn)), "check-config", "--verify")
    assert result.returncode == 1 and "upgrade cortex-bridge" in result.stderr, result.stderr
