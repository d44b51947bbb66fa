"""The operator commands (``queue stats|retry``, ``dlq list|show|replay|purge``, ``trace``) on both
queue backends, through the real entry point, with the configuration naming the backend.

Each test runs on SQLite and on PostgreSQL (``backend`` is parameterized as in
tests/queue/test_contract.py): same output, same exit codes, and the write commands change what
a queue that is open the whole time (a running bridge's) claims next.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import QueueSettings
from bridge.queue import BatchPolicy, QueueBackend, QueueError
from bridge.queue.open import open_operator
from bridge.records import parse_timestamp, utc_now
from tests.queue.contract import Opener, events, postgres_opener, sqlite_opener
from tests.support.cortex import SIM_TOKEN
from tests.support.postgres import PostgresCluster, with_password
from tests.test_cli import cli

ONE = BatchPolicy(max_items={"event": 1})
PASSWORD = "op-pa55-never-shown"
#: What a shell argument can hold: any code point, lone surrogates (bytes that are not UTF-8) and
#: NUL included, with the characters that mean something in SQL or to a driver made likely.
OPERATOR_TEXT = st.one_of(st.characters(exclude_categories=()), st.sampled_from("\x00\udcff?%'\\"))


@dataclass
class Backend:
    """A queue to prepare (``open``) and the configuration file that names it for the commands."""

    name: str
    open: Opener
    config: Path
    settings: QueueSettings

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("--config", str(self.config), *args)

    async def arun(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The command in its own process while this test's queue stays open."""
        return await asyncio.to_thread(self.run, *args)


def write_config(tmp_path: Path, queue: dict[str, Any]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps({"cortex": {"url": "http://127.0.0.1:9", "token": SIM_TOKEN},
                                "ingest": {"allow_unauthenticated": True}, "queue": queue}))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        queue: dict[str, Any] = {"path": str(tmp_path / "q.db")}
        opener = sqlite_opener(tmp_path / "q.db")
    else:
        # The test cluster trusts local sockets, so any password is accepted: it only has to stay hidden.
        dsn = with_password(request.getfixturevalue("pg_dsn"), "postgres", PASSWORD)
        queue = {"backend": "postgres", "postgres": {"dsn": dsn, "statement_timeout_seconds": 5}}
        opener = postgres_opener(dsn)
    return Backend(request.param, opener, write_config(tmp_path, queue), QueueSettings.model_validate(queue))


def out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


async def prepare(queue: QueueBackend) -> dict[str, str]:
    """One record of each standing: queued and due, parked (404), backing off, dead-lettered."""
    records = events(1, 2, 3, 4)
    await queue.append(records)
    later = time.time() + 3600
    for record, how in zip(records, ("parked", "backoff", "dead"), strict=False):
        (claimed,) = await queue.claim(ONE)
        assert claimed.record.id == record.id
        if how == "dead":
            await queue.dead_letter([claimed.seq], reason="rejected", detail="Cortex 400: title", status=400)
        else:
            await queue.reschedule([claimed.seq], next_attempt_at=later, error="Cortex said no", count_attempt=True,
                                   parked=how == "parked")
    return {"parked": records[0].id, "backoff": records[1].id, "dead": records[2].id, "due": records[3].id}


async def test_every_command_reads_the_same_document_on_both_backends(backend: Backend) -> None:
    queue = await backend.open()
    ids = await prepare(queue)
    await queue.close()
    stats = out(await backend.arun("queue", "stats"))
    assert stats["by_state"] == {"parked": 1, "ready": 2} and stats["undelivered"] == 3
    assert stats["dead_letters"] == 1 and stats["dead_by_reason"] == {"rejected": 1}
    assert stats["by_kind"] == {"event": 3} and stats["undelivered_bytes"] > 0
    listed = out(await backend.arun("dlq", "list"))
    assert [e["id"] for e in listed] == [ids["dead"]] and listed[0]["status"] == 400
    assert abs(parse_timestamp(listed[0]["dead_at"]) - utc_now()) < timedelta(minutes=5)  # ISO 8601 UTC
    assert out(await backend.arun("dlq", "list", "--reason", "other")) == []
    shown = out(await backend.arun("dlq", "show", ids["dead"]))
    assert shown["record"]["title"] == "e3" and shown["reason"] == "rejected"
    missing = await backend.arun("dlq", "show", "no-such-id")
    assert missing.returncode == 1 and "no dead letter with id no-such-id" in missing.stderr
    (parked,) = out(await backend.arun("trace", ids["parked"]))
    assert parked["status"] == "queued" and parked["state"] == "parked" and parked["attempts"] == 1
    assert parse_timestamp(parked["next_attempt_at"]) > utc_now()
    (dead,) = out(await backend.arun("trace", ids["dead"]))
    assert dead["status"] == "dead_letter" and dead["cortex_status"] == 400
    unknown = await backend.arun("trace", "no-such-id")
    assert unknown.returncode == 1 and json.loads(unknown.stdout) == [{"id": "no-such-id", "status": "unknown"}]


async def test_write_commands_change_what_a_running_queue_claims(backend: Backend) -> None:
    queue = await backend.open()  # open throughout, as a running bridge's is
    ids = await prepare(queue)
    (due,) = await queue.claim(ONE)
    assert due.record.id == ids["due"] and await queue.claim(ONE) == []
    both = await backend.arun("queue", "retry", "--parked", "--ids", ids["parked"])
    assert both.returncode == 2 and "not both" in both.stderr
    released = await backend.arun("queue", "retry", "--parked")
    assert released.returncode == 0 and "released 1 parked record(s)" in released.stdout, released.stderr
    assert [q.record.id for q in await queue.claim(ONE)] == [ids["parked"]]
    by_id = await backend.arun("queue", "retry", "--ids", ids["backoff"], due.record.id, "no-such-id")
    assert "released 1 record(s)" in by_id.stdout and "2 of the given ids are not waiting" in by_id.stderr
    assert [q.record.id for q in await queue.claim(ONE)] == [ids["backoff"]]
    assert "released 0 record(s)" in (await backend.arun("queue", "retry")).stdout  # nothing in flight is touched
    refused = await backend.arun("dlq", "replay")
    assert refused.returncode == 2 and "give record ids, --reason, or --all" in refused.stderr
    assert "replayed 1 dead letter(s)" in (await backend.arun("dlq", "replay", "--reason", "rejected")).stdout
    (replayed,) = await queue.claim(ONE)
    assert replayed.record.id == ids["dead"] and replayed.attempts == 0
    await queue.dead_letter([replayed.seq], reason="rejected", detail="again", status=400)
    assert "purged 1 dead letter(s)" in (await backend.arun("dlq", "purge", "--all")).stdout
    assert out(await backend.arun("queue", "stats"))["dead_letters"] == 0
    assert (await queue.append(events(3))).new_ids == [ids["dead"]], "a purged record may be stored again"
    assert (await queue.append(events(3))).new_ids == []
    await queue.close()


async def test_replay_never_stores_a_record_twice_when_it_is_queued_again(backend: Backend) -> None:
    queue = await backend.open()
    ids = await prepare(queue)
    # The same record id offered again while it is a dead letter is a duplicate, on any replica.
    assert (await queue.append(events(3))).new_ids == []
    assert "replayed 1" in (await backend.arun("dlq", "replay", ids["dead"])).stdout
    assert (await queue.append(events(3))).new_ids == []
    assert "replayed 0" in (await backend.arun("dlq", "replay", "--all")).stdout
    assert out(await backend.arun("queue", "stats"))["undelivered"] == 4
    await queue.close()


async def test_no_output_shows_the_dsn_or_its_password(backend: Backend, tmp_path: Path) -> None:
    queue = await backend.open()
    ids = await prepare(queue)
    await queue.close()
    commands = [["queue", "stats"], ["queue", "retry"], ["queue", "retry", "--parked"], ["dlq", "list"],
                ["dlq", "show", ids["dead"]], ["dlq", "show", "nope"], ["trace", ids["due"]], ["trace", "nope"],
                ["dlq", "replay", "--all"], ["dlq", "purge", "--all"]]
    results = [await backend.arun(*command) for command in commands]
    if backend.name == "postgres":
        unreachable = f"postgresql://bridge:{PASSWORD}@/queue?host={tmp_path}/no-server-here"
        (tmp_path / "down").mkdir()
        path = write_config(tmp_path / "down", {"backend": "postgres", "postgres": {"dsn": unreachable}})
        down = [await asyncio.to_thread(cli, "--config", str(path), *command) for command in commands]
        for result in down:
            assert result.returncode == 1 and "database unreachable" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        results += down
    for result in results:
        assert PASSWORD not in result.stdout + result.stderr
        assert "postgresql://" not in result.stdout + result.stderr


async def test_a_database_without_a_queue_is_refused_and_left_untouched(pg_dsn: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, {"backend": "postgres", "postgres": {"dsn": pg_dsn}})
    for command in (["queue", "stats"], ["dlq", "list"], ["trace", "x"], ["dlq", "purge", "--all"],
                    ["queue", "retry"]):
        result = await asyncio.to_thread(cli, "--config", str(path), *command)
        assert result.returncode == 1 and "holds no cortex-bridge queue" in result.stderr, result.stderr
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert row == (0,), "an operator command created tables"


async def test_reads_work_against_a_read_only_database_and_writes_say_why_not(
    pg_cluster: PostgresCluster, pg_dsn: str, tmp_path: Path
) -> None:
    queue = await postgres_opener(pg_dsn)()
    ids = await prepare(queue)
    await queue.close()
    database = pg_dsn.split("?")[0].rsplit("/", 1)[1]
    pg_cluster.execute_admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    path = write_config(tmp_path, {"backend": "postgres", "postgres": {"dsn": pg_dsn}})
    stats = await asyncio.to_thread(cli, "--config", str(path), "queue", "stats")
    assert out(stats)["dead_letters"] == 1
    refused = await asyncio.to_thread(cli, "--config", str(path), "dlq", "replay", ids["dead"])
    assert refused.returncode == 1 and "database is read-only" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=st.text(OPERATOR_TEXT, max_size=30), reason=st.text(OPERATOR_TEXT, max_size=20))
def test_any_id_or_reason_an_operator_types_is_an_answer_not_a_crash(
    pg_cluster: PostgresCluster, tmp_path: Path, ident: str, reason: str
) -> None:
    # Shell arguments that are not UTF-8 reach Python as lone surrogates; NUL, '?' and '%' too.
    for settings_ in (QueueSettings(path=tmp_path / "q.db"), _pg_settings(pg_cluster)):
        asyncio.run(_opened(settings_))
        for write in (False, True):
            queue = open_operator(settings_, write=write)
            try:
                assert [entry["status"] for entry in queue.trace(ident)] == ["unknown"]
                assert queue.dlq_show(ident) is None and queue.dlq_list(reason=reason or None) == []
                if write:
                    assert queue.retry([ident]) == 0 and queue.replay(ids=[ident], reason=reason) == 0
                    assert queue.purge(ids=[ident], reason=reason or None) == 0
            except QueueError as exc:
                pytest.fail(f"{ident!r}: {exc}")
            finally:
                queue.close()


_PG_DATABASES: dict[int, str] = {}


def _pg_settings(cluster: PostgresCluster) -> QueueSettings:
    """One database for all hypothesis examples (creating one per example would be slow)."""
    dsn = _PG_DATABASES.setdefault(id(cluster), cluster.create_database())
    return QueueSettings.model_validate({"backend": "postgres", "postgres": {"dsn": dsn}})


async def _opened(queue_settings: QueueSettings) -> None:
    from bridge.queue.open import open_queue

    await (await open_queue(queue_settings)).close()


@pytest.mark.parametrize(("content", "message"), [(None, "FileNotFoundError: No such file or directory"),
                                                  ("", "is empty"), (b"\xffpostgresql://u:pw@h/db", "UnicodeDecodeError")])
def test_an_unreadable_dsn_file_is_one_line_that_never_quotes_it(tmp_path: Path, content: bytes | str | None,
                                                                 message: str) -> None:
    dsn_file = tmp_path / "dsn"
    if isinstance(content, bytes):
        dsn_file.write_bytes(content)
    elif content is not None:
        dsn_file.write_text(content)
    path = write_config(tmp_path, {"backend": "postgres", "postgres": {"dsn_file": str(dsn_file)}})
    for command in (["queue", "stats"], ["dlq", "replay", "--all"], ["trace", "x"]):
        result = cli("--config", str(path), *command)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "pw@" not in result.stderr
