"""What a new operator gets wrong in a configuration, caught by ``check-config`` and at start, through
the real entry point: one line, naming the file, key or path, and a non-zero exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.config import ConfigError, Settings, load_settings
from bridge.cortex.simulator import SimulatorServer
from tests.support.commands import CommandSetup, command_setup, spent_since
from tests.support.cortex import SIM_TOKEN

OPEN_INGEST = "ingest:\n  allow_unauthenticated: true\n"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=120)


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return str(path)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_missing_secret_file_fails_check_config_and_start(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "secrets" / "gitlab-secret"
    path = config(tmp_path, f"{OPEN_INGEST}queue:\n  path: {tmp_path / 'q.db'}\n"
                            "http: {port: 0}\nmetrics: {port: 0}\n"
                            f"sources:\n  - name: gitlab\n    type: gitlab\n    secret_files: [{missing}]\n")
    error = one_line_error(cli("--config", path, command), 2)
    assert f"source 'gitlab': cannot read secret file {missing}: No such file or directory" in error


@pytest.mark.parametrize(("section", "key"), [("ingest", "token_file"), ("cortex", "token_file")])
def test_a_missing_token_file_is_named_with_its_setting(tmp_path: Path, section: str, key: str) -> None:
    missing = tmp_path / "nope"
    body = f"{section}:\n  {key}: {missing}\n" + ("" if section == "ingest" else OPEN_INGEST)
    error = one_line_error(cli("--config", config(tmp_path, body), "check-config"), 2)
    assert f"{section}.{key}: cannot read secret file {missing}" in error


def test_a_startup_os_error_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    queue = tmp_path / "a-file" / "queue.db"
    path = config(tmp_path, f"{OPEN_INGEST}queue:\n  path: {queue}\nhttp: {{port: 0}}\nmetrics: {{port: 0}}\n"
                            "cortex: {verify_token_on_start: false}\n")
    error = one_line_error(cli("--config", path, "run"), 1)
    assert "cannot start:" in error and str(tmp_path / "a-file") in error


@pytest.mark.parametrize(("text", "where", "reason"), [
    ("cortex:\n  url: [x\n", "line 3, column 1", "while parsing a flow sequence (opened at line 2)"),
    ("cortex:\n  url: x\n   token: y\n", "line 3, column 9", "mapping values are not allowed here"),
    ("cortex: {url: 'x}\n", "line 2", "found unexpected end of stream"),
])
def test_bad_yaml_gives_the_line_and_the_reason(tmp_path: Path, text: str, where: str, reason: str) -> None:
    error = one_line_error(cli("--config", config(tmp_path, text), "check-config"), 2)
    assert f"is not valid YAML at {where}" in error and reason in error


def test_unknown_keys_are_reported_all_at_once_with_a_suggestion(tmp_path: Path) -> None:
    text = ("cortex:\n  urll: x\n  tokn: y\nqueu: {}\n" + OPEN_INGEST)
    error = one_line_error(cli("--config", config(tmp_path, text), "check-config"), 2)
    for expected in ("cortex.urll: unknown key (did you mean 'url'?)", "cortex.tokn: unknown key (did you mean 'token'?)",
                     "queu: unknown key (did you mean 'queue'?)"):
        assert expected in error
    text = (OPEN_INGEST + "sources:\n  - {name: g, type: gitlab, secrets: [a], foo: 1, entity: {lokup: true}}\n"
            "  - {name: h, type: github, secrets: [a], bar: 2}\n  - {name: k, type: nope}\n")
    error = one_line_error(cli("--config", config(tmp_path, text), "check-config"), 2)
    for expected in ("source 'g': entity.lokup: unknown key (did you mean 'lookup'?)", "source 'g':",
                     "foo: unknown key", "source 'h': bar: unknown key", "source 'k': unknown type 'nope'"):
        assert expected in error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
@example(text="?")  # a null key (YAML's explicit-key indicator alone): once a TypeError traceback
@example(text="1: 2\n? [a]\n")
def test_any_config_file_is_settings_or_one_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        loaded = load_settings(path, ingest={"allow_unauthenticated": True})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message.strip()
        assert str(path) in message or message.startswith("invalid configuration: ")
    else:
        assert isinstance(loaded, Settings)


async def test_verify_fails_on_a_rejected_token_and_passes_on_a_good_one(sim: SimulatorServer,
                                                                         tmp_path: Path) -> None:
    base = f"{OPEN_INGEST}cortex:\n  url: {sim.url}\n"

    async def verify(text: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the simulator answers from this test's event loop.
        return await asyncio.to_thread(cli, "--config", config(tmp_path, text), "check-config", "--verify")

    rejected = await verify(base + "  token: not-the-token\n")
    assert rejected.returncode == 1
    assert "Cortex rejected the token (401)" in rejected.stderr and "configuration OK" not in rejected.stderr
    assert "not-the-token" not in rejected.stdout + rejected.stderr
    missing = await verify(base)
    assert missing.returncode == 1 and "no Cortex token configured" in missing.stderr
    accepted = await verify(base + f"  token: {SIM_TOKEN}\n")
    assert accepted.returncode == 0 and "Cortex accepted the token" in accepted.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def queue_setup(request: pytest.FixtureRequest, tmp_path: Path) -> CommandSetup:
    return command_setup(request, tmp_path)


async def test_verify_counts_its_request_in_the_queues_spend_log(sim: SimulatorServer,
                                                                 queue_setup: CommandSetup) -> None:
    # A bridge ran on this queue: its spend log is the deployment's window, and the check's
    # token request must be in it, or a bridge beside the check could exceed the quota.
    queue = await queue_setup.open()
    await queue.close()
    before = time.time() - 1
    asked_before = len(sim.store.requests)
    config = queue_setup.write_config(sim, SIM_TOKEN, cortex={"verify_token_on_start": False})
    result = await queue_setup.run(config, "check-config", "--verify")
    assert result.returncode == 0, result.stderr
    assert "Cortex accepted the token" in result.stderr
    queue = await queue_setup.open()
    try:
        assert await spent_since(queue, before) == len(sim.store.requests) - asked_before == 1
    finally:
        await queue.close()
