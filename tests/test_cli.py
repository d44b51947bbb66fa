"""The command line as an operator uses it: real processes, real queue files, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bridge import __version__
from bridge.queue import BatchPolicy, DurableQueue
from bridge.records import parse_timestamp, utc_now
from bridge.sources.native import parse_native

SUBCOMMANDS = [[], ["run"], ["check-config"], ["sim"], ["demo"], ["queue", "stats"], ["queue", "retry"], ["dlq", "list"],
               ["dlq", "show"], ["dlq", "replay"], ["dlq", "purge"], ["dlq", "register-entities"], ["doctor"], ["trace"]]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s) or "top")
def test_every_command_has_help(sub: list[str]) -> None:
    result = cli(*sub, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "invalid choice"),
        (["--config", "/nonexistent.yaml", "check-config"], "cannot read config file"),
        (["queue", "stats", "--queue", "/nonexistent/q.db"], "no queue database"),
        (["dlq", "purge", "--queue", "/nonexistent/q.db"], "give record ids"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_config_validates_and_never_prints_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cortex:\n  rate_limit_per_minute: -5\n")
    result = cli("--config", str(bad), "check-config")
    assert result.returncode == 2 and "cortex.rate_limit_per_minute" in result.stderr
    secret_file = tmp_path / "token"
    secret_file.write_text("eyJhbGciOiJIUzI1NiJ9.c3VwZXItc2VjcmV0.sig\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"cortex:\n  url: https://cortex.example.com/api\n"
                    f"  token_file: {secret_file}\ningest:\n  token: hunter2-ingest\n")
    env = {"BRIDGE_CORTEX__RATE_LIMIT_PER_MINUTE": "500", "PATH": "/usr/bin:/bin"}
    result = cli("--config", str(good), "check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["cortex"]["rate_limit_per_minute"] == 500  # the environment overrides the file
    assert "hunter2" not in result.stdout + result.stderr
    assert "c3VwZXItc2VjcmV0" not in result.stdout + result.stderr
    assert shown["cortex"]["url"] == "https://cortex.example.com/api"


@pytest.mark.parametrize(("url", "reason"), [
    ("https://bridge-user:pa55word-in-url@cortex.example.com/api", "must not contain user:password@"),
    ("https://:pa55word-in-url@cortex.example.com", "must not contain user:password@"),
    ("cortex.example.com/pa55word-in-url", "must be an http:// or https:// URL with a host"),
    ("https://cortex.example.com:pa55word-in-url/", "not a URL"),
    ("ftp://cortex.example.com/pa55word-in-url", "must be an http:// or https:// URL"),
])
def test_an_unusable_cortex_url_is_refused_without_repeating_it(tmp_path: Path, url: str, reason: str) -> None:
    # A URL with credentials can never work (Cortex takes a bearer token, and one request cannot
    # carry both): refused at check-config and start, and the password never shown.
    config = tmp_path / "bridge.yaml"
    config.write_text(json.dumps({"cortex": {"url": url, "token": "t"}, "ingest": {"allow_unauthenticated": True}}))
    for command in ("check-config", "run"):
        result = cli("--config", str(config), command)
        assert result.returncode == 2, result.stderr
        assert f"cortex.url: {reason}" in result.stderr and "Traceback" not in result.stderr
        assert "pa55word" not in result.stdout + result.stderr


def test_ingest_without_credentials_fails_check_config(tmp_path: Path) -> None:
    token = tmp_path / "cortex-token"
    token.write_text("t\n")
    for ingest, message in (
        ("", "POST /v1/records needs credentials: set ingest.token or ingest.token_file"),
        ("ingest:\n  token: x\n  allow_unauthenticated: true\n", "not both"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(f"cortex:\n  token_file: {token}\n{ingest}")
        result = cli("--config", str(path), "check-config")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    path.write_text(f"cortex:\n  token_file: {token}\ningest:\n  allow_unauthenticated: true\n")
    assert cli("--config", str(path), "check-config").returncode == 0


def test_inspection_refuses_other_files_and_changes_nothing(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "OTHER.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    commands = [["queue", "stats"], ["dlq", "list"], ["dlq", "show", "x"], ["trace", "x"],
                ["dlq", "replay", "--all"], ["dlq", "purge", "--all"]]
    for command in commands:
        result = cli(*command, "--queue", str(other))
        assert result.returncode == 1, (command, result.stdout)
        assert "is not a cortex-bridge queue" in result.stderr and "Traceback" not in result.stderr
    assert other.read_bytes() == before, "an inspection command modified an unrelated database"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OTHER.db"], "sidecar files were created"
    missing = tmp_path / "missing.db"
    for command in commands:
        result = cli(*command, "--queue", str(missing))
        assert result.returncode == 1 and "no queue database at" in result.stderr
    assert not missing.exists()


def test_queue_and_dlq_commands_on_a_real_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    async def prepare() -> list[str]:
        queue = await DurableQueue.open(path)
        records = parse_native({"records": [
            {"kind": "event", "entity": "svc", "type": "T", "title": "bad", "timestamp": 0},
            {"kind": "event", "entity": "svc", "type": "T", "title": "fine", "timestamp": 1}]}, source="test")
        await queue.append(records)
        batch = await queue.claim(BatchPolicy(max_items={"event": 1}))
        await queue.dead_letter([batch[0].seq], reason="rejected", detail="Cortex 400: title", status=400)
        await queue.close()
        return [r.id for r in records]

    dead_id, queued_id = asyncio.run(prepare())
    stats = json.loads(cli("queue", "stats", "--queue", str(path)).stdout)
    assert stats["undelivered"] == 1 and stats["dead_letters"] == 1
    listed = json.loads(cli("dlq", "list", "--queue", str(path)).stdout)
    assert [e["id"] for e in listed] == [dead_id]
    assert abs(parse_timestamp(listed[0]["dead_at"]) - utc_now()) < timedelta(minutes=5)  # ISO 8601 UTC
    shown = json.loads(cli("dlq", "show", dead_id, "--queue", str(path)).stdout)
    assert shown["record"]["title"] == "bad" and shown["status"] == 400
    assert json.loads(cli("trace", queued_id, "--queue", str(path)).stdout)[0]["status"] == "queued"
    assert cli("trace", "no-such-id", "--queue", str(path)).returncode == 1
    assert "replayed 1" in cli("dlq", "replay", dead_id, "--queue", str(path)).stdout
    assert json.loads(cli("queue", "stats", "--queue", str(path)).stdout)["undelivered"] == 2
    assert "purged 0" in cli("dlq", "purge", "--all", "--queue", str(path)).stdout


def test_demo_runs_the_whole_path_and_exits_zero() -> None:
    result = cli("demo", "--records", "120")
    assert result.returncode == 0, result.stderr
    assert "cortex-bridge demo --keep cortex-bridge-demo" in result.stdout  # its queue is gone: say how to keep it
    table = result.stdout
    assert "in Cortex" in table
    metric_row = next(line for line in table.splitlines() if line.startswith("metric"))
    sent, stored, _requests, dead = (int(x) for x in metric_row.split()[1:])
    assert (sent, stored, dead) == (121, 120, 1)
    deploy_row = next(line for line in table.splitlines() if line.startswith("deploy"))
    sent, stored, requests, dead = (int(x) for x in deploy_row.split()[1:])
    assert (sent, stored, requests, dead) == (8, 8, 8, 0)  # the redelivered webhook is stored once


def test_sim_command_serves_with_faults_from_flags(tmp_path: Path) -> None:
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "sim", "--port", str(port),
                             "--entities", "bridge/cortex/simulator/example.yaml", "--error-rate", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/_sim/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        request = urllib.request.Request(f"{url}/api/v1/catalog?pageSize=1",
                                         headers={"Authorization": "Bearer sim-token"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert cli("sim", "--error-rate", "7").returncode == 2


def test_log_lines_never_show_url_credentials() -> None:
    from bridge.logs import redact

    event = redact(None, "info", {"event": "bridge_started", "cortex_url": "https://svc:s3cr3t@cortex.example.com",
                                  "error": "cannot connect to http://u:p@proxy:3128 (refused)"})
    assert event["cortex_url"] == "https://***@cortex.example.com"
    assert event["error"] == "cannot connect to http://***@proxy:3128 (refused)"


def test_version_names_the_release_everywhere() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"cortex-bridge {__version__} (queue schema ")
    from bridge import metrics

    labels = {"version": __version__, "python": platform.python_version()}
    assert metrics.sample("cortex_bridge_build_info", labels) == 1


def printed_commands(output: str) -> list[list[str]]:
    """The ``cortex-bridge ...`` command lines of ``output``, as argument lists for :func:`cli`."""
    commands = [shlex.split(line, comments=True) for line in output.splitlines()
                if line.strip().startswith("cortex-bridge ")]
    return [argv[1:] for argv in commands]


def test_demo_keep_prints_commands_that_work_as_printed(tmp_path: Path) -> None:
    kept = tmp_path / "demo dir"  # a space: the printed commands must quote the path
    result = cli("demo", "--records", "20", "--keep", str(kept))
    assert result.returncode == 0, result.stderr
    commands = printed_commands(result.stdout)
    assert [c[0] for c in commands] == ["queue", "trace", "dlq", "dlq"]
    outputs = {}
    for argv in commands:
        ran = cli(*argv)
        assert ran.returncode == 0, (argv, ran.stderr)
        outputs[" ".join(argv[:2])] = ran.stdout
    webhook = json.loads(next(v for k, v in outputs.items() if k.startswith("trace")))
    assert webhook[-1]["status"] == "delivered" and webhook[-1]["cortex_uuid"]
    assert json.loads(next(v for k, v in outputs.items() if k.startswith("dlq show")))["reason"] == "too_old"
    again = cli("demo", "--records", "20", "--keep", str(kept))
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(("args", "code"), [(["queue", "stats"], 141), (["dlq", "list"], 141), (["trace", "x"], 141),
                                           (["--version"], 0), (["--help"], 0)], ids=str)
def test_a_reader_going_away_is_no_traceback(tmp_path: Path, args: list[str], code: int) -> None:
    """`cortex-bridge queue stats | head`: the pipe closes before the output is written.

    141 is the status of a process killed by SIGPIPE; argparse itself ignores a failed write of
    its help or version text, so those exit 0.
    """
    asyncio.run(_empty_queue(tmp_path / "q.db"))
    read_end, write_end = os.pipe()
    os.close(read_end)
    queue = ["--queue", str(tmp_path / "q.db")] if args[0] not in ("--version", "--help") else []
    try:
        result = subprocess.run([sys.executable, "-m", "bridge.cli", *args, *queue], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == code


async def _empty_queue(path: Path) -> None:
    await (await DurableQueue.open(path)).close()


def test_queue_retry_releases_parked_records(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    async def prepare() -> list[str]:
        queue = await DurableQueue.open(path)
        records = parse_native([{"kind": "event", "entity": f"svc-{i}", "type": "T", "title": "t",
                                 "timestamp": i} for i in range(2)], source="test")
        await queue.append(records)
        for parked in (True, False):
            (claimed,) = await queue.claim(BatchPolicy(max_items={"event": 1}))
            await queue.reschedule([claimed.seq], next_attempt_at=utc_now().timestamp() + 600,
                                   error="Cortex said no", count_attempt=True, parked=parked)
        await queue.close()
        return [r.id for r in records]

    parked_id, backoff_id = asyncio.run(prepare())
    stats = json.loads(cli("queue", "stats", "--queue", str(path)).stdout)
    assert stats["by_state"] == {"parked": 1, "ready": 1}
    assert json.loads(cli("trace", parked_id, "--queue", str(path)).stdout)[0]["state"] == "parked"
    both = cli("queue", "retry", "--parked", "--ids", parked_id, "--queue", str(path))
    assert both.returncode == 2 and "not both" in both.stderr
    result = cli("queue", "retry", "--parked", "--queue", str(path))
    assert result.returncode == 0 and "released 1 parked record(s)" in result.stdout, result.stderr
    assert json.loads(cli("queue", "stats", "--queue", str(path)).stdout)["by_state"] == {"ready": 2}
    result = cli("queue", "retry", "--ids", backoff_id, "no-such-id", "--queue", str(path))
    assert "released 1 record(s)" in result.stdout and "1 of the given ids are not waiting" in result.stderr
    trace = json.loads(cli("trace", backoff_id, "--queue", str(path)).stdout)[0]
    assert parse_timestamp(trace["next_attempt_at"]) <= utc_now()
    assert cli("queue", "retry", "--queue", str(tmp_path / "missing.db")).returncode == 1


def test_sim_serves_the_example_tenant_by_default_and_says_how_to_use_it() -> None:
    import urllib.request

    from bridge.cortex.simulator import EXAMPLE_CONFIG, SimulatorConfig

    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "sim", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(7)]
        url = banner[0].split(" on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")  # the bound port
        example = SimulatorConfig.from_yaml(EXAMPLE_CONFIG)
        text = "".join(banner)
        assert "token:       sim-token" in text and f"{url}/_sim/state" in text
        assert ", ".join(e.tag for e in example.entities) in text
        request = urllib.request.Request(f"{url}/api/v1/catalog", headers={"Authorization": "Bearer sim-token"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            tags = [e["tag"] for e in json.load(resp)["entities"]]
        assert tags == [e.tag for e in example.entities]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    empty = Path(os.devnull)
    assert "none: every write is answered 404" in SimulatorConfig.from_yaml(empty).summary("http://x")
