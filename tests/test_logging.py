"""Logs: every line on stderr, nothing on stdout; with ``log.format: json`` every line is JSON,
the libraries' own stdlib log records included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from bridge.cortex.simulator import SimulatorServer
from tests.support.processes import BridgeProcess
from tests.support.webhooks import SECRET

LIBRARY_LINES = """
import logging, structlog
from bridge.logs import configure_logging
configure_logging("info", "json")
logging.getLogger("aiokafka.consumer.group_coordinator").warning("Heartbeat failed for group %s", "g1")
logging.getLogger("aiohttp.client").warning("proxy said Authorization: Bearer abc.def.ghi")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("aiohttp.server").exception("Error handling request")
logging.getLogger("aiokafka").info("below the library threshold: not written")
structlog.get_logger("bridge.app").warning("own_line", token="t0ps3cret")
"""


def test_stdlib_library_lines_are_json_on_stderr() -> None:
    result = subprocess.run([sys.executable, "-c", LIBRARY_LINES], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("Heartbeat failed for group g1", "warning"),
        ("proxy said Authorization: Bearer ***", "warning"),
        ("Error handling request", "error"),
        ("own_line", "warning"),
    ]
    assert lines[0]["logger"] == "aiokafka.consumer.group_coordinator" and "timestamp" in lines[0]
    assert "ValueError: boom" in lines[2]["exception"]
    assert "abc.def.ghi" not in result.stderr and "t0ps3cret" not in result.stderr


async def test_the_daemon_logs_json_lines_to_stderr_only(sim: SimulatorServer, tmp_path: Path) -> None:
    process = BridgeProcess(tmp_path, sim.url, log={"format": "json"},
                            sources=[{"name": "gitlab", "type": "gitlab", "secrets": [SECRET]}])
    try:
        await process.start()
        async with aiohttp.ClientSession() as http, \
                http.post(f"{process.url}/webhooks/gitlab", data=b"{}",
                          headers={"X-Gitlab-Token": "not-the-secret", "Content-Type": "application/json"}) as resp:
            assert resp.status == 401
        assert process.terminate() == 0
    finally:
        process.cleanup()
    assert process.stdout.read_text() == ""
    events = [json.loads(line) for line in process.log.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "bridge_started" in names and "input_refused" in names and "drain_finished" in names
    assert "not-the-secret" not in process.log.read_text()


async def test_an_accepted_request_is_logged_at_debug_and_not_at_info(sim: SimulatorServer, tmp_path: Path) -> None:
    """The door asks :func:`bridge.logs.debug_enabled` before it builds its line: the level decides."""
    written = {}
    for level in ("debug", "info"):
        (tmp_path / level).mkdir()
        process = BridgeProcess(tmp_path / level, sim.url, log={"format": "json", "level": level})
        try:
            await process.start()
            async with aiohttp.ClientSession() as http, http.post(
                    f"{process.url}/v1/records", json={"kind": "event", "entity": "svc", "type": "X", "title": "t",
                                                       "timestamp": 1790000000}) as resp:
                assert resp.status == 202
            assert process.terminate() == 0
        finally:
            process.cleanup()
        written[level] = [e for e in map(json.loads, process.log.read_text().splitlines()) if e["event"] == "accepted"]
    assert [(e["source"], e["records"], e["new"]) for e in written["debug"]] == [("native", 1, 1)]
    assert written["info"] == []
