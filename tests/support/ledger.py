"""The fault-injection suite's bookkeeping: a ledger of every acknowledged input, and the check.

Every scenario drives real HTTP ingest into a real bridge (in-process or a child process) while
a fault is active, keeps in a :class:`Ledger` each record the bridge answered 2xx for, and at
the end compares the ledger with what the Cortex simulator stored:

* nothing acknowledged is missing (deploys and events by the bridge id they carry in
  ``customData``, metric points by their unique value, custom data by its unique key);
* nothing is stored twice (deploys, events and metric points are not idempotent in Cortex).

``CHAOS_LONG=1`` makes every scenario longer and harsher (more kill rounds, longer outages,
more fuzz examples) for local runs; the default mode fits the CI budget."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bridge.app import Bridge
from bridge.cortex.simulator import SimulatorServer
from bridge.queue import inspect
from bridge.records import BRIDGE_ID_KEY
from tests.support.cortex import ENTITIES, METRIC_KEYS, sim_state, wait_until

#: Longer, harsher runs for local use; CI runs the default.
LONG = os.environ.get("CHAOS_LONG", "") not in ("", "0")


#: Timestamps 30 days back: inside Cortex's 6-month metric window, so nothing is discarded.
BASE_TS = int(time.time()) - 30 * 86400


KINDS = ("deploy", "event", "metric", "custom_data")


def scaled(default: int, long: int) -> int:
    """``long`` under ``CHAOS_LONG=1``, else ``default``."""
    return long if LONG else default


def make_record(kind: str, n: int) -> dict[str, Any]:
    """A native record, unique by ``n`` in a way the simulator's final state shows."""
    entity = ENTITIES[n % len(ENTITIES)]
    ts = BASE_TS + n
    if kind == "deploy":
        return {"kind": "deploy", "entity": entity, "title": f"chaos deploy {n}", "timestamp": ts,
                "type": "DEPLOY", "sha": f"{n:040x}", "environment": "prod"}
    if kind == "event":
        return {"kind": "event", "entity": entity, "type": "CHAOS", "title": f"chaos event {n}", "timestamp": ts}
    if kind == "metric":
        return {"kind": "metric", "entity": entity, "key": METRIC_KEYS[n % len(METRIC_KEYS)], "timestamp": ts,
                "value": float(n)}
    return {"kind": "custom_data", "entity": entity, "key": f"chaos-{n}", "value": {"n": n}}


@dataclass
class Ledger:
    """What producers were told was accepted, and what happened to every request."""

    kinds: tuple[str, ...] = KINDS
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    _n: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def batch(self, size: int) -> list[dict[str, Any]]:
        """``size`` fresh records, cycling through the ledger's kinds."""
        out = []
        for _ in range(size):
            n = next(self._n)
            out.append(make_record(self.kinds[n % len(self.kinds)], n))
        return out

    def count(self, kind: str) -> int:
        return sum(1 for rec in self.acked.values() if rec["kind"] == kind)

    async def post(self, http: aiohttp.ClientSession, url: str, batch: list[dict[str, Any]]) -> int:
        """POST one batch; remember it if acknowledged. Returns the status (0: no answer)."""
        try:
            async with http.post(f"{url}/v1/records", json={"records": batch}) as resp:
                self.statuses[str(resp.status)] += 1
                if resp.status == 202:
                    body = await resp.json()
                    for rid, rec in zip(body["ids"], batch, strict=True):
                        self.acked[rid] = rec
                return resp.status
        except (TimeoutError, aiohttp.ClientError):
            self.statuses["no answer"] += 1
            return 0

    async def ingest(self, url: str, stop: asyncio.Event, *, batch: int = 6, pause: float = 0.0) -> None:
        """Post fresh batches until ``stop`` is set, whatever the bridge answers."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not stop.is_set():
                status = await self.post(http, url, self.batch(batch))
                if status != 202:
                    await asyncio.sleep(0.02)  # refused or killed: do not spin
                elif pause:
                    await asyncio.sleep(pause)

    def verify(self, state: dict[str, Any]) -> dict[str, int]:
        """Assert nothing acknowledged is missing and nothing is stored twice; return counts."""
        assert self.acked, "no input was acknowledged: the scenario tested nothing"
        for kind, table in (("deploy", "deploys"), ("event", "events")):
            want = {rid for rid, rec in self.acked.items() if rec["kind"] == kind}
            stored = Counter(item.get("customData", {}).get(BRIDGE_ID_KEY)
                             for items in state[table].values() for item in items)
            missing = want - set(stored)
            assert not missing, f"{len(missing)} acknowledged {kind}s missing, e.g. {sorted(missing)[:3]}"
            twice = [rid for rid, n in stored.items() if n > 1]
            assert not twice, f"{len(twice)} {kind}s stored more than once, e.g. {twice[:3]}"
        points = Counter((key, entity, point["value"]) for key, by_entity in state["metrics"].items()
                         for entity, series in by_entity.items() for point in series)
        want_points = {(r["key"], r["entity"], r["value"]) for r in self.acked.values() if r["kind"] == "metric"}
        missing_points = want_points - set(points)
        assert not missing_points, f"{len(missing_points)} acknowledged metric points missing"
        twice_points = [p for p, n in points.items() if n > 1]
        assert not twice_points, f"{len(twice_points)} metric points stored more than once, e.g. {twice_points[:3]}"
        for rec in self.acked.values():
            if rec["kind"] == "custom_data":
                stored_item = state["custom_data"].get(rec["entity"], {}).get(rec["key"])
                assert stored_item is not None and stored_item["value"] == rec["value"], f"custom data {rec['key']} missing"
        return {kind: self.count(kind) for kind in self.kinds}


def queue_stats(path: Path) -> dict[str, Any]:
    """``cortex-bridge queue stats`` of a queue file, read from this process."""
    conn = inspect.open_file(path)
    try:
        return inspect.stats(conn)
    finally:
        conn.close()


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a queue file: ``"ok"`` when SQLite finds no corruption."""
    conn = inspect.open_file(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


#: The quota is not under test here (test_rate_limit.py and bench/delivery.py own it).
FAST = {"rate_limit_per_minute": 60_000, "burst": 200, "request_timeout_seconds": 2}


def bridge_url(bridge: Bridge) -> str:
    return f"http://127.0.0.1:{bridge.ingest_port}"


async def drain_and_verify(bridge: Bridge, sim: SimulatorServer, ledger: Ledger, timeout: float = 120) -> None:
    """Wait until nothing is left undelivered, then check the ledger against the simulator."""
    await wait_until(lambda: bridge.queue.depth == 0, timeout=timeout)
    stats = await bridge.queue.stats()
    assert stats["dead_letters"] == 0, stats["dead_by_reason"]
    ledger.verify(await sim_state(sim))
