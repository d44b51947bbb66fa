"""Real bridge processes for tests and benchmarks: ``cortex-bridge run`` as a child process.

Shared by the kill -9 durability test (tests/core), the chaos suite (tests/chaos) and the
benchmarks (bench/): anything that must survive or measure a separate process (kill -9, RSS,
CPU not shared with the load generator) starts one through :class:`BridgeProcess`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cortex import SIM_TOKEN


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied key by key, nested mappings merged rather than replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class BridgeProcess:
    """``cortex-bridge run`` as a child process with its own config file.

    ``extra`` is merged into the default settings section by section, so a caller can change
    one key (``queue={"max_records": 100}``) without restating the rest.
    """

    def __init__(self, tmp: Path, cortex_url: str, **extra: Any) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = tmp / "bridge.yaml"
        self.log = tmp / "bridge.log"
        self.stdout = tmp / "bridge.stdout"
        self.queue = tmp / "queue.db"
        settings: dict[str, Any] = {
            # The quota is not under test by default: a high limit keeps runs short.
            "cortex": {"url": cortex_url, "token": SIM_TOKEN, "linger_ms": 5, "max_concurrency": 4,
                       "rate_limit_per_minute": 60_000, "burst": 200,
                       # ambiguous deliveries are read back within seconds
                       "request_timeout_seconds": 3, "reconcile_settle_seconds": 3.5},
            "queue": {"path": str(self.queue)},
            "retry": {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
            "http": {"host": "127.0.0.1", "port": self.port},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            # tests post to /v1/records without a token, unless they configure ingest themselves
            "ingest": {"allow_unauthenticated": True},
        }
        if "ingest" in extra:
            settings.pop("ingest")  # a token and the opt-out together are a configuration error
        self.settings = merge(settings, extra)
        self.config.write_text(yaml.safe_dump(self.settings))
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until ``/healthz`` answers."""
        # The daemon logs to stderr and writes nothing to stdout (docs/operations.md, "Logs"): kept
        # apart so a test can tell.
        with self.log.open("ab") as log, self.stdout.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "--config", str(self.config), "run"],
                                         stdout=out, stderr=log)
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"bridge exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > end:
                    raise AssertionError(f"bridge not healthy within {timeout} s: {self.log_tail()}")
                await asyncio.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the process's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one sample on the process's ``/metrics`` (0 when it has none)."""
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(sample.value)
        return 0.0

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)
