"""Several ``cortex-bridge run`` replicas on one PostgreSQL queue, and the load spread over them.

Shared by the multi-replica chaos scenarios (tests/chaos/test_replicas.py) and the benchmark
(bench/replicas.py). Each replica is a real child process (:class:`BridgeProcess`) with its own
HTTP port and log, and its DSN names it (``application_name``), so which replica holds the
one-sender lock is read from PostgreSQL itself (``pg_locks``), not guessed from logs.

The load is mixed: native batches of all four kinds (:class:`Ledger`) and signed GitHub
``workflow_run`` deliveries from tests/fixtures (:class:`GitHubDeliveries`), each request sent
to a replica picked at random among the running ones. A request that gets no 2xx (a killed
replica, a 503 while the database restarts) is not acknowledged and is never retried: a CI
system would not retry either, and the ledger only holds what the bridge promised to keep.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from psycopg.conninfo import make_conninfo

from bridge.queue.postgres import PostgresQueue
from bridge.queue.postgres.schema import SENDER_LOCK
from bridge.records import BRIDGE_ID_KEY
from tests.support.ledger import Ledger
from tests.support.processes import BridgeProcess
from tests.support.webhooks import FIXTURES, github_signature

#: The repository of the workflow_run fixture, and the entity the simulated catalog links to it.
GITHUB_REPOSITORY = "octo-org/octo-repo"
GITHUB_ENTITY = "octo-repo"
WORKFLOW_RUN = json.loads((FIXTURES / "github" / "workflow_run.completed.success.json").read_bytes())
#: The repository is mapped statically, so that what Cortex stores depends on the load alone (a
#: catalog lookup would count in the shared budget like every request, but its cache makes the
#: request count depend on which replica gets which delivery).
WEBHOOK_SECRET = "replica-webhook-secret"
GITHUB_SOURCE: dict[str, Any] = {"name": "github", "type": "github", "secrets": [WEBHOOK_SECRET],
                 "deploy_workflows": [{"workflow": "test.yml", "environment": "production"}],
                 "entity": {"static": {GITHUB_REPOSITORY: GITHUB_ENTITY}, "lookup": False}}


def replica_dsn(dsn: str, name: str) -> str:
    """``dsn`` with ``application_name`` set, so PostgreSQL tells which replica a session is."""
    return make_conninfo(dsn, application_name=name)


@dataclass
class GitHubDeliveries:
    """Signed ``workflow_run`` deliveries, each a new run (so a new deploy), and what was acked."""

    acked: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    _next_run: int = 10_000_000

    def delivery(self) -> tuple[bytes, dict[str, str]]:
        """A new delivery: the fixture with a fresh run id, its headers and signature."""
        self._next_run += 1
        document = json.loads(json.dumps(WORKFLOW_RUN))
        document["workflow_run"]["id"] = self._next_run
        # A new commit too: runs of one commit to one environment are one deploy (coalesced).
        document["workflow_run"]["head_sha"] = f"{self._next_run:040x}"
        body = json.dumps(document).encode()
        return body, {"Content-Type": "application/json", "X-GitHub-Event": "workflow_run",
                      "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": github_signature(body, WEBHOOK_SECRET)}

    async def send(self, http: aiohttp.ClientSession, url: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST one delivery; remember its record id if acknowledged. Returns (status, answer);
        status 0 when there was no answer."""
        try:
            async with http.post(f"{url}/webhooks/github", data=body, headers=headers) as resp:
                self.statuses[str(resp.status)] += 1
                answer: dict[str, Any] = await resp.json(content_type=None)
                if resp.status == 202:
                    assert len(answer["ids"]) == 1, answer  # one deploy per run
                    self.acked.update(answer["ids"])
                return resp.status, answer
        except (TimeoutError, aiohttp.ClientError, ValueError):
            self.statuses["no answer"] += 1
            return 0, {}

    def verify(self, state: dict[str, Any]) -> int:
        """Every acknowledged delivery's deploy is in Cortex exactly once; returns how many."""
        assert self.acked, "no GitHub delivery was acknowledged: the scenario tested nothing"
        stored = Counter(item.get("customData", {}).get(BRIDGE_ID_KEY) for item in state["deploys"].get(GITHUB_ENTITY, []))
        missing = self.acked - set(stored)
        assert not missing, f"{len(missing)} acknowledged GitHub deploys missing, e.g. {sorted(missing)[:3]}"
        twice = [rid for rid, n in stored.items() if n > 1]
        assert not twice, f"{len(twice)} GitHub deploys stored more than once, e.g. {twice[:3]}"
        return len(self.acked)


class Replicas:
    """``count`` bridge processes sharing the database ``dsn`` and the Cortex at ``cortex_url``."""

    def __init__(self, tmp: Path, cortex_url: str, dsn: str, count: int, *,
                 sources: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        self.dsn = dsn
        sources = [GITHUB_SOURCE] if sources is None else sources
        self.processes: list[BridgeProcess] = []
        for n in range(count):
            directory = tmp / f"replica-{n}"
            directory.mkdir(parents=True, exist_ok=True)
            queue = {"backend": "postgres", "postgres": {"dsn": replica_dsn(dsn, f"replica-{n}"),
                                                         "statement_timeout_seconds": 2}}
            self.processes.append(BridgeProcess(directory, cortex_url, queue=queue, sources=sources, **extra))

    async def start(self) -> None:
        """Start every replica (one after the other: each migrates the schema under a lock)."""
        for process in self.processes:
            await process.start(timeout=30)

    def running(self) -> list[BridgeProcess]:
        return [p for p in self.processes if p.proc is not None and p.proc.poll() is None]

    def urls(self) -> list[str]:
        return [p.url for p in self.running()]

    def sender(self) -> int | None:
        """Index of the replica holding the one-sender lock right now (None: nobody holds it)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (SENDER_LOCK,)).fetchone()
        if row is None or not str(row[0]).startswith("replica-"):
            return None
        return int(str(row[0]).removeprefix("replica-"))

    def logs(self) -> str:
        return "\n".join(f"--- replica {n}:\n{p.log_tail(1500)}" for n, p in enumerate(self.processes))

    def cleanup(self) -> None:
        for process in self.processes:
            process.cleanup()


async def spread_load(replicas: Replicas, ledger: Ledger, deliveries: GitHubDeliveries, stop: asyncio.Event,
                      rng: random.Random, *, pause: float) -> None:
    """Until ``stop``: alternately a native batch and a GitHub delivery, each to a random running replica."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while not stop.is_set():
            urls = replicas.urls()
            if not urls:
                await asyncio.sleep(0.05)
                continue
            ok = await ledger.post(http, rng.choice(urls), ledger.batch(4)) == 202
            body, headers = deliveries.delivery()
            ok = (await deliveries.send(http, rng.choice(urls), body, headers))[0] == 202 and ok
            await asyncio.sleep(pause if ok else 0.05)  # refused or killed: do not spin


async def queue_stats(dsn: str) -> dict[str, Any]:
    """The shared queue's stats, read by an observer that never sends (no sender lock)."""
    queue = await PostgresQueue.open(dsn, pool_size=2, sender_lock=False)
    try:
        return await queue.stats()
    finally:
        await queue.close()
