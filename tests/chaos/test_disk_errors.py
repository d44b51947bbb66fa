"""Scenario 5: the queue's disk fills up, then space returns.

The queue lives on a 4 MB tmpfs mounted for the test (we run as root, so ``chmod`` would not stop
writes; a full file system does). A ballast file takes the remaining space; deleting it is
"space returns". Where mounting is not permitted, the same condition is produced inside SQLite
with ``PRAGMA max_page_count`` on the bridge's live connection (SQLite then fails writes with the
very error a full disk gives, ``SQLITE_FULL``).

While the disk is full the bridge must answer input with ``503`` + ``Retry-After`` (never 202 for
what it could not store) and report not-ready on ``/readyz``. When space returns it must become
ready again, accept input, and deliver everything it acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.cortex.simulator import SimFaults, SimulatorServer
from tests.support.cortex import BridgeFactory, sim_config, sim_state, wait_until
from tests.support.ledger import Ledger, integrity
from tests.support.queue_file import queue_pragma

FAST = {"rate_limit_per_minute": 60_000, "burst": 200}


class SmallDisk:
    """A directory whose file system can be filled and freed on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                                      capture_output=True).returncode == 0
        self.ballast = path / "ballast"
        self._bridge: Bridge | None = None

    @property
    def mode(self) -> str:
        return "tmpfs" if self.mounted else "sqlite max_page_count"

    async def fill(self, bridge: Bridge) -> None:
        """No room left for the queue to grow."""
        self._bridge = bridge
        if self.mounted:
            # Unbuffered and suppress outermost: a buffered file would fail again at close, with
            # the bytes the full disk refused still in its buffer.
            with contextlib.suppress(OSError), self.ballast.open("wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 65536)
        else:
            pages = (await queue_pragma(bridge.queue, "page_count"))[0][0]
            await queue_pragma(bridge.queue, f"max_page_count = {pages}")

    async def free(self) -> None:
        """Space returns."""
        if self.mounted:
            self.ballast.unlink()
        elif self._bridge is not None:
            await queue_pragma(self._bridge.queue, "max_page_count = 1073741823")

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
async def small_disk(tmp_path: Path) -> AsyncIterator[SmallDisk]:
    # Requested before make_bridge, so it is torn down after the bridges on it are stopped.
    path = tmp_path / "disk"
    path.mkdir()
    disk = SmallDisk(path)
    yield disk
    disk.unmount()


async def ready(http: aiohttp.ClientSession, bridge: Bridge) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{bridge.ingest_port}/readyz") as resp:
        return resp.status, await resp.json()


async def fill_until_refused(disk: SmallDisk, bridge: Bridge, ledger: Ledger, http: aiohttp.ClientSession) -> None:
    """Fill the disk, then post until the bridge refuses; check how it refuses."""
    url = f"http://127.0.0.1:{bridge.ingest_port}"
    await disk.fill(bridge)
    for _ in range(50):
        batch = ledger.batch(20)
        async with http.post(f"{url}/v1/records", json={"records": batch}) as resp:
            if resp.status == 202:  # there was still room for this one: it is durable
                ledger.acked.update(zip((await resp.json())["ids"], batch, strict=True))
                continue
            assert resp.status == 503, await resp.text()
            assert resp.headers.get("Retry-After"), "a 503 must say when to retry"
            break
    else:
        raise AssertionError(f"the full disk ({disk.mode}) never made the bridge refuse input")
    status, body = await ready(http, bridge)
    assert status == 503 and "queue cannot write to disk" in body["reasons"], body


async def test_full_disk_refuses_input_with_503_then_recovers_when_space_returns(
    small_disk: SmallDisk, make_bridge: BridgeFactory
) -> None:
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as sim:
        queue_path = small_disk.path / "queue.db"
        bridge = await make_bridge(sim, queue_path=queue_path, cortex=FAST)
        url = f"http://127.0.0.1:{bridge.ingest_port}"
        ledger = Ledger()
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                assert await ledger.post(http, url, ledger.batch(10)) == 202
            await wait_until(lambda: bridge.queue.depth == 0)  # sender idle: only ingest meets the full disk
            await fill_until_refused(small_disk, bridge, ledger, http)
            await small_disk.free()
            for _ in range(3):
                assert await ledger.post(http, url, ledger.batch(10)) == 202
            status, body = await ready(http, bridge)
            assert status == 200, body
        await wait_until(lambda: bridge.queue.depth == 0)
        assert (await bridge.queue.stats())["dead_letters"] == 0
        ledger.verify(await sim_state(sim))
    assert integrity(queue_path) == "ok"


async def test_readiness_returns_when_space_returns_without_new_input(
    small_disk: SmallDisk, make_bridge: BridgeFactory
) -> None:
    """A not-ready pod gets no traffic from its Service, so it must not need input to become ready."""
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as sim:
        bridge = await make_bridge(sim, queue_path=small_disk.path / "queue.db", cortex=FAST)
        async with aiohttp.ClientSession() as http:
            await fill_until_refused(small_disk, bridge, Ledger(), http)
            await small_disk.free()

            async def is_ready() -> bool:
                return (await ready(http, bridge))[0] == 200

            await wait_until(is_ready, timeout=15)


async def test_delivery_resumes_after_disk_filled_during_delivery(
    small_disk: SmallDisk, make_bridge: BridgeFactory
) -> None:
    """The disk fills while the sender claims and settles records; once space returns, the
    backlog must drain without a restart."""
    async with SimulatorServer(sim_config(rate_limit_per_minute=0, faults=SimFaults(latency_ms=30))) as sim:
        queue_path = small_disk.path / "queue.db"
        bridge = await make_bridge(sim, queue_path=queue_path, cortex=FAST)
        url = f"http://127.0.0.1:{bridge.ingest_port}"
        ledger = Ledger(kinds=("deploy", "event"))  # one request per record: delivery stays busy
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                assert await ledger.post(http, url, ledger.batch(20)) == 202
            await fill_until_refused(small_disk, bridge, ledger, http)
            await asyncio.sleep(0.5)  # the sender meets the full disk while settling deliveries
            await small_disk.free()
            assert await ledger.post(http, url, ledger.batch(5)) == 202

        async def drained() -> bool:
            return bridge.queue.depth == 0

        try:
            await wait_until(drained, timeout=20)
        except AssertionError:
            stats = await bridge.queue.stats()
            raise AssertionError(f"delivery never resumed after space returned: {stats['by_state']}") from None
        ledger.verify(await sim_state(sim))
