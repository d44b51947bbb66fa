"""Scenario 11: three replicas on one PostgreSQL queue, under faults (issue 12).

Three ``cortex-bridge run`` processes share one PostgreSQL database (the session's pgserver
cluster) and one simulated Cortex. Mixed load (native batches of all four kinds and signed GitHub
``workflow_run`` deliveries) goes to a random running replica per request; what is not answered
2xx (a killed replica, a 503 while the database restarts) is not acknowledged and not retried.

Each scenario ends with the same checks: every acknowledged record is in Cortex exactly once
(:meth:`Ledger.verify`, :meth:`GitHubDeliveries.verify`), nothing is left undelivered or
dead-lettered in the shared queue, Cortex answered no 429, and no sliding window of the
simulator's request log holds more than the quota.

The quota window is compressed so that the limit binds within seconds: the simulator admits
``LIMIT`` requests per ``WINDOW`` seconds and every replica's budget is the same
(``cortex.rate_limit_per_minute: LIMIT``, ``cortex.rate_limit_window_seconds: WINDOW``). The load
asks for more than that, so a second sender, or a new sender that forgot what its predecessor
spent, would show as a window over the limit (or as 429s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bridge.cortex.simulator import SimEntity, SimFaults, SimulatorServer
from tests.support.cortex import ENTITIES, busiest_window, sim_config, sim_state, wait_until
from tests.support.kafka import Tansu, create_topic, kafka_source, produce, unique
from tests.support.ledger import Ledger, scaled
from tests.support.postgres import PostgresCluster
from tests.support.replicas import (
    GITHUB_ENTITY,
    GITHUB_REPOSITORY,
    GitHubDeliveries,
    Replicas,
    queue_stats,
    spread_load,
)

#: The compressed quota: LIMIT requests per WINDOW seconds, at the simulator and in every replica.
LIMIT, WINDOW = 90, 6.0
#: Every replica checks its token at start (a request to Cortex from a replica that is not the
#: sender): the shared spend log must count it in the one quota.
CORTEX = {"rate_limit_per_minute": LIMIT, "rate_limit_window_seconds": WINDOW, "burst": 20,
          "request_timeout_seconds": 2, "reconcile_settle_seconds": 2.5}
#: Seconds between one producer's rounds (a native batch of 4, one delivery): three producers
#: ask for about 24 requests/s, more than the 15/s the quota allows.
PAUSE = 0.4


def tenant(faults: SimFaults | None = None) -> Any:
    entities = [SimEntity(tag=t, git_repository=f"acme/{t}") for t in ENTITIES]
    entities.append(SimEntity(tag=GITHUB_ENTITY, git_repository=GITHUB_REPOSITORY))
    return sim_config(entities=entities, rate_limit_per_minute=LIMIT, rate_limit_window_seconds=WINDOW,
                      faults=faults or SimFaults())


async def verify_recovered(sim: SimulatorServer, replicas: Replicas, deliveries: GitHubDeliveries,
                           ledger: Ledger | None = None) -> dict[str, Any]:
    """Everything delivered, once; no window over the quota. Returns a summary for messages."""

    async def drained() -> bool:
        return int((await queue_stats(replicas.dsn))["undelivered"]) == 0

    try:
        await wait_until(drained, timeout=scaled(90, 300), interval=0.5)
    except AssertionError:
        raise AssertionError(f"{await queue_stats(replicas.dsn)}\n{replicas.logs()}") from None
    stats = await queue_stats(replicas.dsn)
    assert stats["dead_letters"] == 0, stats["dead_by_reason"]
    state = await sim_state(sim)
    counts = {} if ledger is None else ledger.verify(state)
    webhooks = deliveries.verify(state)
    log = list(sim.store.requests)
    assert not [r for r in log if r["status"] == 429], "Cortex answered 429: the deployment exceeded its budget"
    busiest = busiest_window([r["t"] for r in log], WINDOW)
    assert busiest <= LIMIT, f"{busiest} requests in one {WINDOW} s window (limit {LIMIT})"
    return {"records": counts, "github": webhooks, "busiest": busiest, "requests": len(log)}


def taken_over(replicas: Replicas, killed: int) -> bool:
    """Whether a replica other than ``killed`` holds the sender lock."""
    return replicas.sender() not in (None, killed)


def sent_after(sim: SimulatorServer, instant: float) -> bool:
    """Whether Cortex has seen a request that arrived after ``instant``."""
    return bool(sim.store.requests) and float(sim.store.requests[-1]["t"]) > instant


@dataclass
class UnderLoad:
    """Three replicas, the simulator, and three producers spreading mixed load over the replicas."""

    sim: SimulatorServer
    replicas: Replicas
    rng: random.Random
    ledger: Ledger = field(default_factory=Ledger)
    deliveries: GitHubDeliveries = field(default_factory=GitHubDeliveries)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    producers: list[asyncio.Task[None]] = field(default_factory=list)

    async def recovered(self) -> dict[str, Any]:
        """Stop the load, then :func:`verify_recovered`."""
        self.stop.set()
        await asyncio.gather(*self.producers)
        return await verify_recovered(self.sim, self.replicas, self.deliveries, self.ledger)


@contextlib.asynccontextmanager
async def under_load(tmp_path: Path, dsn: str, faults: SimFaults, seed: int) -> AsyncIterator[UnderLoad]:
    async with SimulatorServer(tenant(faults)) as sim:
        run = UnderLoad(sim, Replicas(tmp_path, sim.url, dsn, 3, cortex=CORTEX), random.Random(seed))
        try:
            await run.replicas.start()
            run.producers = [asyncio.create_task(spread_load(run.replicas, run.ledger, run.deliveries, run.stop,
                                                             run.rng, pause=PAUSE)) for _ in range(3)]
            yield run
        finally:
            run.stop.set()
            await asyncio.gather(*run.producers)
            run.replicas.cleanup()


async def test_kill9_of_random_replicas_under_load_loses_and_duplicates_nothing(tmp_path: Path, pg_dsn: str) -> None:
    async with under_load(tmp_path, pg_dsn, SimFaults(latency_ms=20), seed=11) as run:
        killed_senders = 0
        for round_ in range(scaled(3, 20)):
            await asyncio.sleep(run.rng.uniform(1.0, 2.0))
            sender = run.replicas.sender()
            # The first kill always hits the sender; then any replica, the sender included.
            victim = sender if round_ == 0 and sender is not None else run.rng.randrange(3)
            killed_senders += victim == sender
            run.replicas.processes[victim].kill9()
            await asyncio.sleep(run.rng.uniform(0.2, 1.0))
            await run.replicas.processes[victim].start(timeout=30)
        summary = await run.recovered()
    assert killed_senders >= 1, "the sending replica was never killed"
    assert all(n > 10 for n in summary["records"].values()), summary


async def test_postgres_restart_mid_load_answers_503_then_delivers_everything(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_dsn: str
) -> None:
    async with under_load(tmp_path, pg_dsn, SimFaults(latency_ms=20), seed=12) as run:
        statuses = run.ledger.statuses
        await asyncio.sleep(2)
        pg_cluster.stop()  # fast shutdown: every session is terminated, as in a failover
        try:
            refused_before = statuses["503"]
            # The first refusals wait for the pool (at most statement_timeout_seconds, 2 s
            # here), then the replica knows the database is down and refuses at once.
            await asyncio.sleep(scaled(4, 10))
            assert statuses["503"] > refused_before, statuses
            async with aiohttp.ClientSession() as http, http.get(f"{run.replicas.urls()[0]}/readyz") as resp:
                assert resp.status == 503 and "queue database unavailable" in (await resp.json())["reasons"]
        finally:
            pg_cluster.start()
        accepted_before = statuses["202"]
        await wait_until(lambda: statuses["202"] > accepted_before + 20, timeout=30)
        await asyncio.sleep(2)
        await run.recovered()
        assert len(run.replicas.running()) == 3, run.replicas.logs()  # none gave up on the database


async def test_sender_killed_mid_request_with_lost_answers_is_read_back_not_resent(tmp_path: Path, pg_dsn: str) -> None:
    # Slow answers keep requests in flight; every 4th write is stored and its answer dropped.
    faults = SimFaults(latency_ms=150, drop_after_commit_every=4)
    async with under_load(tmp_path, pg_dsn, faults, seed=13) as run:
        sim, replicas = run.sim, run.replicas
        for _ in range(scaled(2, 8)):
            await asyncio.sleep(run.rng.uniform(1.5, 2.5))
            await wait_until(lambda: replicas.sender() is not None, timeout=15)
            sender = replicas.sender()
            assert sender is not None

            def in_flight() -> bool:
                now = time.time()
                return any(r["status"] == 0 and now - r["t"] < 0.1 for r in list(sim.store.requests)[-20:])

            # After a takeover the predecessor's requests hold their slots for a window plus
            # the request timeout and margin (10 s here): the new sender may wait that long.
            try:
                await wait_until(in_flight, timeout=20, interval=0.01)
            except AssertionError:
                raise AssertionError(f"sender {sender} sends nothing: {list(sim.store.requests)[-5:]}"
                                     f"\n{await queue_stats(replicas.dsn)}\n{replicas.logs()}") from None
            replicas.processes[sender].kill9()
            # A request the killed sender wrote just before the kill may still reach Cortex after
            # it: wait for another replica to take the lock, then for a request of its own.
            await wait_until(functools.partial(taken_over, replicas, sender), timeout=15, interval=0.05)
            taken_at = time.time()
            await wait_until(functools.partial(sent_after, sim, taken_at), timeout=30, interval=0.01)
            await replicas.processes[sender].start(timeout=30)
        await run.recovered()
    dropped = sum(1 for r in sim.store.requests if r["status"] == 0)
    assert dropped > 0, "no answer was dropped: the ambiguous path was not exercised"


async def test_one_github_delivery_posted_to_two_replicas_at_once_is_stored_and_delivered_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    deliveries = GitHubDeliveries()
    async with SimulatorServer(tenant()) as sim:
        replicas = Replicas(tmp_path, sim.url, pg_dsn, 2, cortex=CORTEX)
        try:
            await replicas.start()
            first, second = replicas.urls()
            async with aiohttp.ClientSession() as http:
                for _ in range(scaled(20, 200)):
                    body, headers = deliveries.delivery()
                    answers = await asyncio.gather(deliveries.send(http, first, body, headers),
                                                   deliveries.send(http, second, body, headers))
                    assert [status for status, _ in answers] == [202, 202], answers
                    # One of the two stored it; the other found the delivery id taken.
                    assert sorted(bool(a.get("duplicate_delivery")) for _, a in answers) == [False, True], answers
            await verify_recovered(sim, replicas, deliveries)
            stats = await queue_stats(pg_dsn)
            assert stats["delivered_history"] == len(deliveries.acked), stats  # stored once each
        finally:
            replicas.cleanup()


async def test_kafka_partitions_spread_over_replicas_and_a_killed_one_loses_and_repeats_nothing(
    tmp_path: Path, pg_dsn: str, broker: Tansu
) -> None:
    # Three replicas in one consumer group on one PostgreSQL queue. Offsets are committed only
    # every 30 s, so a killed replica's partitions are read again from the start by whoever takes
    # them over: every re-read message must be recognised by record id in the shared queue.
    topic, group = unique("replicas"), unique("g")
    await create_topic(broker.bootstrap, topic, 6)
    total = scaled(600, 3000)
    source = kafka_source(broker.bootstrap, topic, group, max_poll_records=20, commit_interval_seconds=30)

    def deploy(n: int) -> bytes:
        return json.dumps({"kind": "deploy", "entity": ENTITIES[n % len(ENTITIES)], "title": f"kafka-{n}",
                           "timestamp": 1_760_000_000 + n, "sha": f"{n:040x}"}).encode()

    # Not the quota under test here: Cortex without a limit, the replicas' default budget.
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=SimFaults(latency_ms=10))) as sim:
        replicas = Replicas(tmp_path, sim.url, pg_dsn, 3, sources=[source])
        try:
            await replicas.start()

            async def spread() -> bool:
                assigned = [await p.metric("cortex_bridge_kafka_assigned_partitions") for p in replicas.processes]
                return sum(assigned) == 6 and min(assigned) >= 1

            await wait_until(spread, timeout=30, interval=0.3)
            await produce(broker.bootstrap, topic, [(n % 6, None, deploy(n), []) for n in range(total // 2)])

            async def some_delivered() -> bool:
                return sum(len(d) for d in (await sim_state(sim))["deploys"].values()) >= total // 6

            await wait_until(some_delivered, timeout=60)
            replicas.processes[0].kill9()
            await produce(broker.bootstrap, topic, [(n % 6, None, deploy(n), []) for n in range(total // 2, total)])

            async def drained() -> bool:
                return sum(len(d) for d in (await sim_state(sim))["deploys"].values()) >= total

            try:
                await wait_until(drained, timeout=scaled(90, 300), interval=0.5)
            except AssertionError:
                raise AssertionError(f"{await queue_stats(replicas.dsn)}\n{replicas.logs()}") from None
            await asyncio.sleep(1)
            titles = [d["title"] for deploys in (await sim_state(sim))["deploys"].values() for d in deploys]
            stats = await queue_stats(replicas.dsn)
            repeated = sum([await p.metric("cortex_bridge_records_duplicate_total", {"kind": "deploy"})
                            for p in replicas.running()])
        finally:
            replicas.cleanup()
    assert sorted(titles) == sorted(f"kafka-{n}" for n in range(total)), "lost or twice"
    assert stats["undelivered"] == 0 and stats["dead_letters"] == 0, stats
    assert repeated > 0, "the killed replica's uncommitted messages were read again and recognised"
