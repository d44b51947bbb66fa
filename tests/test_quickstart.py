"""docs/quickstart.md, executed: every ``sh`` block it marks as a step runs in bash, in order.

``cortex-bridge`` on the PATH is the real entry point of this tree; the blocks run verbatim but
for the port numbers (8900, 8080, 9090 become free ones, since other test runs share the
machine). The two long-running steps (the simulator, the bridge) are started in the background
as the walk-through's extra terminals are. Each step's check says what the page promises.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge import __version__
from bridge.records import parse_timestamp
from tests.support.cortex import wait_until
from tests.support.paths import ROOT
from tests.support.processes import free_port

PAGE = ROOT / "docs" / "quickstart.md"
STEP = re.compile(r"<!-- step: (?P<name>[\w-]+) -->\n```sh\n(?P<script>.*?)```", re.DOTALL)
STEPS = ["sim", "config", "check", "run", "webhook", "cortex", "trace", "wrong-secret", "metrics"]
#: steps that keep running in their own terminal
BACKGROUND = {"sim", "run"}
SECRETS = ("quickstart-secret", "not-the-secret", "quickstart-ingest-token")


def page_steps() -> list[tuple[str, str]]:
    return [(m["name"], m["script"]) for m in STEP.finditer(PAGE.read_text())]


class Walkthrough:
    """A directory, a PATH whose ``cortex-bridge`` is this tree's, and the background terminals."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.ports = {"8900": str(free_port()), "8080": str(free_port()), "9090": str(free_port())}
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "cortex-bridge"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bridge.cli "$@"\n')
        shim.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
                    # A process that ignores Ctrl-C is aborted with its Python stacks dumped (see stop).
                    "PYTHONFAULTHANDLER": "1"}
        self.env.pop("BRIDGE_CONFIG", None)
        self.background: dict[str, subprocess.Popen[bytes]] = {}

    def script(self, text: str) -> str:
        for documented, port in self.ports.items():
            text = text.replace(documented, port)
        return text

    def run(self, text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", self.script(text)], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=120)

    def start(self, name: str, text: str) -> None:
        with (self.dir / f"{name}.out").open("wb") as out:
            # A session of its own: the terminal's whole process group is stopped at the end.
            self.background[name] = subprocess.Popen(["bash", "-c", self.script(text)], cwd=self.dir, env=self.env,
                                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text(errors="replace")

    def stop(self, name: str) -> int:
        proc = self.background.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the page says
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGABRT)  # the fault handler writes where it is stuck
            proc.wait(timeout=30)
            raise AssertionError(f"{name} did not stop on Ctrl-C within 60 s:\n{self.output(name)}") from None

    def stop_all(self) -> None:
        for proc in self.background.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def walkthrough(tmp_path: Path) -> Iterator[Walkthrough]:
    walk = Walkthrough(tmp_path)
    try:
        yield walk
    finally:
        walk.stop_all()


def test_the_page_marks_every_step_in_order() -> None:
    assert [name for name, _ in page_steps()] == STEPS


async def test_quickstart_works_as_written(walkthrough: Walkthrough) -> None:
    walk = walkthrough
    checks: dict[str, Callable[[subprocess.CompletedProcess[str]], None]] = {
        "config": lambda r: None,
        "check": check_config_hides_secrets,
        "webhook": lambda r: check_accepted(r.stdout),
        "trace": check_trace,
        "wrong-secret": lambda r: check_refused(r.stdout),
        "metrics": lambda r: check_counted(r.stdout),
    }
    for name, script in page_steps():
        if name in BACKGROUND:
            walk.start(name, script)
            ready = "Cortex simulator on http://" if name == "sim" else "bridge_started"
            await wait_until(lambda name=name, ready=ready: ready in walk.output(name)  # type: ignore[misc]
                             or walk.background[name].poll() is not None, timeout=30)
            assert walk.background[name].poll() is None, walk.output(name)
            continue
        if name == "cortex":
            # Delivery is asynchronous: "a moment later".
            await wait_until(lambda script=script: deploy_arrived(walk.run(script)), timeout=30)  # type: ignore[misc]
            continue
        result = walk.run(script)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        checks[name](result)
    check_simulator_banner(walk.output("sim"), walk.ports["8900"])
    log = walk.output("run")
    started = json.loads(next(line for line in log.splitlines() if "bridge_started" in line))  # JSON: no tty
    assert started["version"] == __version__
    for secret in SECRETS:
        assert secret not in log
    # The page promises a warning for the refused delivery, naming it and never its secret.
    refusals = [json.loads(line) for line in log.splitlines() if '"input_refused"' in line]
    assert any(r.get("level") == "warning" and r.get("status") == 401 and r.get("source") == "github"
               and r.get("delivery_id") == "quickstart-2" for r in refusals), refusals
    assert walk.stop("run") == 0, log
    walk.stop("sim")


def check_simulator_banner(banner: str, port: str) -> None:
    assert f"Cortex simulator on http://127.0.0.1:{port}" in banner
    assert "token:       sim-token" in banner and "checkout-service" in banner
    assert f"http://127.0.0.1:{port}/_sim/state" in banner


def check_config_hides_secrets(result: subprocess.CompletedProcess[str]) -> None:
    shown = json.loads(result.stdout)
    assert [s["name"] for s in shown["sources"]] == ["github"]
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def check_accepted(answer: str) -> None:
    body = json.loads(answer)
    assert body.get("accepted") == 1 and len(body["ids"]) == 1, body


def deploy_arrived(result: subprocess.CompletedProcess[str]) -> bool:
    if result.returncode != 0 or not result.stdout:
        return False
    deploys = json.loads(result.stdout)["deployments"]
    return [d["sha"] for d in deploys] == ["a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"]


def check_trace(result: subprocess.CompletedProcess[str]) -> None:
    delivery, record = json.loads(result.stdout)
    assert delivery["delivery_id"] == "quickstart-1" and delivery["record_ids"] == [record["id"]]
    assert record["status"] == "delivered" and record["cortex_uuid"], record
    assert parse_timestamp(record["delivered_at"]) >= parse_timestamp(record["received_at"])
    assert record["delivered_at"].endswith("Z")


def check_refused(answer: str) -> None:
    assert answer.strip() == "401"


def check_counted(metrics: str) -> None:
    assert 'cortex_bridge_inputs_rejected_total{source="github",status="401"} 1.0' in metrics
    assert 'cortex_bridge_build_info{python="' in metrics and f'version="{__version__}"' in metrics


def test_the_checks_can_fail() -> None:
    """A walk-through that went wrong is caught: each check refuses the wrong answer."""
    with pytest.raises(AssertionError):
        check_refused("202")
    with pytest.raises(AssertionError):
        check_counted('cortex_bridge_inputs_rejected_total{source="github",status="401"} 0.0')
    assert not deploy_arrived(subprocess.CompletedProcess([], 0, '{"deployments": []}', ""))
