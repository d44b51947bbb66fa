"""The request budget survives restarts: what earlier processes spent is in the queue database."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridge.cortex.budget import RESTORE_MARGIN, TokenBucket
from bridge.cortex.simulator import SimulatorServer
from bridge.queue import DurableQueue
from bridge.queue.spend import QueueSpendLog
from tests.support.cortex import busiest_window, sim_config, sim_requests
from tests.support.paths import ROOT

LIMIT = 20
WINDOW = 4.0


class Spender:
    """A ``tests.queue.spend_child`` process spending from the queue database ``db``."""

    def __init__(self, db: str, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.queue.spend_child", db, url, str(LIMIT), str(WINDOW)],
            cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line.strip() == b"ready", line

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def assert_within_quota(log: list[dict[str, Any]]) -> None:
    assert [r for r in log if r["status"] == 429] == [], "the processes together exceeded the quota"
    times = [r["t"] for r in log]
    assert busiest_window(times, WINDOW) <= LIMIT
    assert len(times) >= LIMIT, "the budget was used"


async def test_kill9_restarts_inside_one_window_never_exceed_the_quota(tmp_path: Path) -> None:
    # A fresh bucket spends a whole window at once (burst = limit): without the spend log every
    # restart inside the window would add up to LIMIT more requests and draw 429s.
    db = str(tmp_path / "queue.db")
    rng = random.Random(7)
    async with SimulatorServer(sim_config(rate_limit_per_minute=LIMIT, rate_limit_window_seconds=WINDOW)) as sim:
        started = time.monotonic()
        restarts = 0
        while time.monotonic() - started < 2 * WINDOW:
            spender = Spender(db, sim.url)
            try:
                await spender.ready()
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # killed mid-spend, at a random point
            finally:
                spender.kill9()
            restarts += 1
        log = await sim_requests(sim)

    assert restarts >= 4, "the processes must restart several times inside the window"
    assert_within_quota(log)


async def test_replicas_spending_at_once_on_postgresql_share_one_quota(pg_dsn: str) -> None:
    # Three processes, each with a whole window of burst, all calling Cortex as fast as they may
    # (as every replica does for token checks and catalog lookups), one killed and restarted
    # now and then: together they must stay inside one quota. Restoring at start is not enough
    # here; each request takes its slot from the shared log.
    rng = random.Random(8)
    async with SimulatorServer(sim_config(rate_limit_per_minute=LIMIT, rate_limit_window_seconds=WINDOW)) as sim:
        spenders = [Spender(pg_dsn, sim.url) for _ in range(3)]
        try:
            for spender in spenders:
                await spender.ready()
            started = time.monotonic()
            while time.monotonic() - started < 2.5 * WINDOW:
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                victim = rng.randrange(len(spenders))
                spenders[victim].kill9()
                spenders[victim] = Spender(pg_dsn, sim.url)
                await spenders[victim].ready()
        finally:
            for spender in spenders:
                spender.kill9()
        log = await sim_requests(sim)
    assert_within_quota(log)


async def test_a_restored_spend_holds_its_slot_past_its_timeout(tmp_path: Path) -> None:
    # Recorded sends of a previous process count until send + timeout + margin + window.
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        first = TokenBucket(3, 3, window_seconds=60, spend_log=QueueSpendLog(queue), request_timeout_seconds=5)
        for _ in range(3):
            (await first.acquire()).done()
        now = [100.0]
        second = TokenBucket(3, 3, window_seconds=60, spend_log=QueueSpendLog(queue), request_timeout_seconds=5,
                             clock=lambda: now[0])
        waiter = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done(), "a restarted bucket must not spend what the last process spent"
        assert second.restored == 3
        now[0] += 60 + 5 + RESTORE_MARGIN - 0.5  # still within the conservative hold
        assert second.restored == 3
        now[0] += 1.0
        assert second.restored == 0
        waiter.cancel()  # it sleeps on real time; a new acquire sees the fake clock's present
        (await asyncio.wait_for(second.acquire(), 2)).done()
    finally:
        await queue.close()


async def test_spend_rows_expire_and_a_new_file_and_old_file_get_the_table(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        wall = [1000.0]
        spend = QueueSpendLog(queue, keep_seconds=10, clock=lambda: wall[0])
        await asyncio.gather(*(spend.record() for _ in range(5)))  # one group commit
        assert await spend.load(0) == [1000.0] * 5
        wall[0] += 40  # past keep and past the expiry interval: the next commit deletes them
        await spend.record()
        assert await spend.load(0) == [1040.0]
    finally:
        await queue.close()



async def test_a_bucket_reloaded_at_a_takeover_counts_what_the_previous_sender_spent(tmp_path: Path) -> None:
    # Two replicas share the spend log; the second becomes the sender after the first spent all.
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        successor = TokenBucket(3, 3, window_seconds=60, spend_log=QueueSpendLog(queue), request_timeout_seconds=5)
        (await successor.acquire()).cancel()  # loaded once, while the log was empty
        predecessor = TokenBucket(3, 3, window_seconds=60, spend_log=QueueSpendLog(queue), request_timeout_seconds=5)
        # The log already holds the successor's stamp (recorded before the request would leave,
        # so kept when it was not sent): two more spend the whole quota; a third would wait a minute.
        for _ in range(2):
            (await asyncio.wait_for(predecessor.acquire(), 5)).done()
        successor.reload()
        waiter = asyncio.create_task(successor.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done(), "the new sender must not spend what its predecessor spent"
        assert successor.restored >= 3
        waiter.cancel()
    finally:
        await queue.close()
