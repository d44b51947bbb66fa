"""The drain contract on a real `cortex-bridge run` process, and the chart's config starting it.

SIGTERM under load: readiness goes 503 at once, new POSTs get 503 + Retry-After, the process
exits 0 within drain.deadline_seconds, and every record acknowledged with 202 is either in
Cortex (the simulator) or still in the queue file, from where the next start delivers it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from _deploy_support import ROOT, config_text, free_port

from bridge.cortex.simulator import SimEntity, SimFaults, SimulatorConfig, SimulatorServer
from bridge.queue import inspect
from bridge.records import BRIDGE_ID_KEY, format_timestamp

TOKEN = "sim-token"
ENTITY = "svc"
METRIC_KEY = "lead-time"
DEADLINE_SECONDS = 6.0
#: Slow Cortex answers keep requests in flight at SIGTERM and a backlog in the queue.
LATENCY_MS = 700
RETRY_AFTER = 7


@dataclass
class Daemon:
    """A `cortex-bridge run` subprocess and where it listens."""

    proc: asyncio.subprocess.Process
    ingest: str
    metrics: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["PYTHONPATH"] = str(ROOT)  # the checkout under test, installed or not
    env.update(extra or {})
    return env


@asynccontextmanager
async def daemon(config_file: Path, log: Path, ingest_port: int, metrics_port: int,
                 env: dict[str, str] | None = None) -> AsyncIterator[Daemon]:
    """Start `python -m bridge.cli run`; kill it on the way out if the test did not stop it."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "--config", str(config_file), "run",
            cwd=config_file.parent, env=_clean_env(env), stdout=out, stderr=out,
        )
    d = Daemon(proc, f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{metrics_port}", log)
    try:
        yield d
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_status(http: aiohttp.ClientSession, d: Daemon, path: str, status: int, timeout: float) -> float:
    """Poll until ``path`` answers ``status``; returns the monotonic time it did."""
    end = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < end:
        if d.proc.returncode is not None:
            raise AssertionError(f"bridge exited with {d.proc.returncode}:\n{d.log_tail()}")
        try:
            async with http.get(d.ingest + path, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == status:
                    return time.monotonic()
                last = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} did not answer {status} within {timeout}s (last: {last})\n{d.log_tail()}")


def write_config(tmp_path: Path, sim_url: str, ingest_port: int, metrics_port: int) -> Path:
    token_file = tmp_path / "cortex-token"
    token_file.write_text(TOKEN + "\n")
    config = {
        "cortex": {"url": sim_url, "token_file": str(token_file), "rate_limit_per_minute": 100_000,
                   "burst": 1000, "max_concurrency": 4, "linger_ms": 10},
        "queue": {"path": str(tmp_path / "queue.db"), "retry_after_seconds": RETRY_AFTER},
        "http": {"host": "127.0.0.1", "port": ingest_port},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "drain": {"deadline_seconds": DEADLINE_SECONDS},
        "log": {"level": "info", "format": "json"},
        "ingest": {"allow_unauthenticated": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Load:
    """Concurrent POST /v1/records with unique records; remembers what was acknowledged."""

    url: str
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused_after_sigterm: list[tuple[int, str | None]] = field(default_factory=list)
    sigterm_at: float | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def batch(self, size: int) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out: list[dict[str, Any]] = []
        for _ in range(size):
            n = next(self._ids)
            rid = f"drain-{n}"
            ts = format_timestamp(now - timedelta(seconds=n % 600))
            kind = ("deploy", "event", "metric")[n % 3]
            if kind == "deploy":
                out.append({"kind": "deploy", "id": rid, "entity": ENTITY, "title": f"deploy {n}",
                            "timestamp": ts, "type": "DEPLOY"})
            elif kind == "event":
                out.append({"kind": "event", "id": rid, "entity": ENTITY, "type": "DRAIN_TEST",
                            "title": f"event {n}", "timestamp": ts})
            else:
                # The value identifies the point in Cortex, which stores no record id for metrics.
                out.append({"kind": "metric", "id": rid, "entity": ENTITY, "key": METRIC_KEY,
                            "timestamp": ts, "value": float(n)})
        return out

    async def worker(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = self.batch(3)
            try:
                async with http.post(self.url, json={"records": records}) as resp:
                    await resp.read()
                    if resp.status == 202:
                        self.acked.update({r["id"]: r for r in records})
                    elif self.sigterm_at is not None:
                        self.refused_after_sigterm.append((resp.status, resp.headers.get("Retry-After")))
                    else:
                        raise AssertionError(f"ingest answered {resp.status} before SIGTERM")
            except (aiohttp.ClientConnectionError, TimeoutError):
                if self.sigterm_at is None:
                    raise
                return  # the server has closed its listener: the drain is past its HTTP phase
            # Steady load, not a flood: enough to keep a backlog, little enough that the
            # restart below delivers it in a few seconds on a 2-core machine.
            await asyncio.sleep(0.05)


def in_cortex(sim: SimulatorServer) -> Counter[str]:
    """Record ids stored in the simulator, with how often each was stored."""
    found: Counter[str] = Counter()
    for item in sim.store.deploys.get(ENTITY, []) + sim.store.events.get(ENTITY, []):
        rid = (item.get("customData") or {}).get(BRIDGE_ID_KEY)
        if rid:
            found[rid] += 1
    for point in sim.store.metric_points.get(METRIC_KEY, {}).get(ENTITY, []):
        found[f"drain-{int(point['value'])}"] += 1
    return found


def in_queue(path: Path) -> tuple[set[str], set[str]]:
    """Ids of undelivered records and of dead letters in a (closed) queue file."""
    conn = inspect.open_file(path)
    try:
        queued = {row[0] for row in conn.execute("SELECT id FROM records")}
        dead = {row[0] for row in conn.execute("SELECT id FROM dead")}
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert check == "ok", f"queue file damaged: {check}"
    finally:
        conn.close()
    return queued, dead


@pytest.mark.timeout(120)
async def test_sigterm_under_load_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    sim_config = SimulatorConfig(tokens=[TOKEN], entities=[SimEntity(tag=ENTITY)], metric_keys=[METRIC_KEY],
                                 rate_limit_per_minute=0, faults=SimFaults(latency_ms=LATENCY_MS))
    ingest_port, metrics_port = free_port(), free_port()
    async with SimulatorServer(sim_config) as sim, aiohttp.ClientSession() as http:
        config = write_config(tmp_path, sim.url, ingest_port, metrics_port)
        log = tmp_path / "bridge.log"
        async with daemon(config, log, ingest_port, metrics_port) as d:
            await wait_status(http, d, "/readyz", 200, timeout=30)
            async with http.get(d.metrics + "/metrics") as resp:
                assert "cortex_bridge_ready 1.0" in await resp.text()

            load = Load(d.ingest + "/v1/records")
            stop = asyncio.Event()
            workers = [asyncio.create_task(load.worker(http, stop)) for _ in range(6)]
            await asyncio.sleep(1.5)
            assert load.acked, "nothing was acknowledged before SIGTERM"
            assert d.proc.returncode is None

            load.sigterm_at = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)

            # Readiness fails at once, and a POST now is refused with 503 + Retry-After.
            unready_at = await wait_status(http, d, "/readyz", 503, timeout=1.0)
            async with http.post(d.ingest + "/v1/records", json={"records": load.batch(1)}) as resp:
                assert resp.status == 503
                assert resp.headers.get("Retry-After") == str(RETRY_AFTER)
            stop.set()
            await asyncio.gather(*workers)

            rc = await asyncio.wait_for(d.proc.wait(), timeout=DEADLINE_SECONDS + 10)
            exited_after = time.monotonic() - load.sigterm_at
            assert rc == 0, d.log_tail()
        assert unready_at - load.sigterm_at < 1.0
        assert exited_after < DEADLINE_SECONDS + 1.0, f"took {exited_after:.1f}s (deadline {DEADLINE_SECONDS}s)"
        for status, retry_after in load.refused_after_sigterm:
            assert (status, retry_after) == (503, str(RETRY_AFTER))
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert "drain_started" in [e.get("event") for e in events]
        assert "drain_finished" in [e.get("event") for e in events]

        # Every acknowledged record is in Cortex or in the queue for the next start.
        delivered = in_cortex(sim)
        queued, dead = in_queue(tmp_path / "queue.db")
        assert not dead, f"dead letters after a clean drain: {sorted(dead)[:5]}"
        lost = [rid for rid in load.acked if rid not in delivered and rid not in queued]
        assert not lost, f"{len(lost)} acknowledged record(s) lost, e.g. {lost[:5]}"
        # Both outcomes happened, or the test did not exercise the drain.
        assert set(load.acked) & set(delivered), "nothing was delivered before the drain"
        assert set(load.acked) & queued, "nothing was left in the queue: the load was too light"

        # The next start delivers what the drain left, each deploy and event exactly once.
        sim.config.faults = SimFaults()
        async with daemon(config, log, ingest_port, metrics_port) as d:
            await wait_status(http, d, "/readyz", 200, timeout=30)
            end = time.monotonic() + 30
            while time.monotonic() < end and not set(load.acked) <= set(in_cortex(sim)):
                await asyncio.sleep(0.1)
            d.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(d.proc.wait(), timeout=DEADLINE_SECONDS + 10) == 0
        delivered = in_cortex(sim)
        missing = [rid for rid in load.acked if rid not in delivered]
        assert not missing, f"{len(missing)} record(s) never delivered after restart, e.g. {missing[:5]}"
        twice = {rid: n for rid, n in delivered.items() if n > 1 and load.acked.get(rid, {}).get("kind") != "metric"}
        assert not twice, f"deploys/events stored more than once: {dict(list(twice.items())[:5])}"
        queued, _ = in_queue(tmp_path / "queue.db")
        assert not queued & set(load.acked)


@pytest.mark.timeout(60)
async def test_the_charts_config_starts_the_daemon(tmp_path: Path) -> None:
    """The ConfigMap of the default install starts `cortex-bridge run` and serves the probe paths.

    Only what a pod gets from elsewhere is replaced, through the same BRIDGE_* variables: the
    volume path, free ports (not 8080/9090 on a shared machine) and the Cortex URL and token.
    """
    config = tmp_path / "config.yaml"
    config.write_text(config_text("default"))
    token_file = tmp_path / "cortex-token"
    token_file.write_text(TOKEN)
    ingest_port, metrics_port = free_port(), free_port()
    sim_config = SimulatorConfig(tokens=[TOKEN], entities=[SimEntity(tag=ENTITY)])
    async with SimulatorServer(sim_config) as sim, aiohttp.ClientSession() as http:
        env = {
            "BRIDGE_QUEUE__PATH": str(tmp_path / "queue.db"),
            "BRIDGE_HTTP__PORT": str(ingest_port),
            "BRIDGE_METRICS__PORT": str(metrics_port),
            "BRIDGE_CORTEX__URL": sim.url,
            "BRIDGE_CORTEX__TOKEN_FILE": str(token_file),
            "TMPDIR": str(tmp_path),
        }
        async with daemon(config, tmp_path / "bridge.log", ingest_port, metrics_port, env) as d:
            await wait_status(http, d, "/healthz", 200, timeout=30)
            await wait_status(http, d, "/readyz", 200, timeout=10)
            async with http.get(d.metrics + "/metrics") as resp:
                assert resp.status == 200 and "cortex_bridge_queue_depth" in await resp.text()
            d.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(d.proc.wait(), timeout=30) == 0, d.log_tail()
        assert (tmp_path / "queue.db").exists()
        with sqlite3.connect(tmp_path / "queue.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
