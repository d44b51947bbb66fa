"""``cortex-bridge doctor`` end to end: the simulator as Cortex, a real queue a bridge delivered
through, the command in its own process.

A healthy setup exits 0 with every row ``ok``; each broken one (bad or expired token, a metric
key without definition, a static-map entity that does not exist, a stuck queue, writes Cortex
never recorded under the bridge's key) exits 1 with the row that says why. No output holds the
token or the queue database's password; every request doctor sends is in the spend log.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cortex.simulator import SimulatorServer
from bridge.queue import BatchPolicy
from tests.queue.contract import events, sqlite_opener
from tests.support.commands import PASSWORD, CommandSetup, command_setup, spent_since
from tests.support.cortex import BridgeFactory, post_records, sim_config, sim_requests, sim_state, wait_until
from tests.support.records import event

KEY = "cortex-bridge"


def jwt(expires_in: float) -> str:
    """An API key as Cortex issues them: a JWT with ``exp`` (unsigned here; only Cortex checks it)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'sub': 'tenant', 'exp': int(time.time() + expires_in)})}.c2ln"


TOKEN = jwt(90 * 86400)
SOON = jwt(2 * 86400)
EXPIRED = jwt(-60)


def sources(metric: str = "lead-time", entity: str = "checkout-service") -> list[dict[str, Any]]:
    return [{"name": "gh", "type": "github", "workflow_duration_metric": metric,
             "entity": {"static": {"acme/checkout": entity}}}]


@pytest.fixture
async def cortex() -> AsyncIterator[SimulatorServer]:
    config = sim_config(tokens=[TOKEN, SOON, EXPIRED], key_identifiers={TOKEN: KEY, SOON: KEY})
    async with SimulatorServer(config) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> CommandSetup:
    return command_setup(request, tmp_path)


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> CommandSetup:
    """For the checks whose code is the same on both backends."""
    return CommandSetup("sqlite", {"path": str(tmp_path / "q.db")}, sqlite_opener(tmp_path / "q.db"), tmp_path)


async def delivered_through_a_bridge(cortex: SimulatorServer, setup: CommandSetup, make_bridge: BridgeFactory,
                                     token: str = TOKEN) -> None:
    """One event delivered by a bridge on the setup's queue, so history and audit log hold a write."""
    queue = {k: v for k, v in setup.queue.items() if k != "path"}
    bridge = await make_bridge(cortex, queue_path=Path(setup.queue.get("path", setup.directory / "unused.db")),
                               queue=queue, cortex={"token": token})
    status, _ = await post_records(bridge, {"records": [event(1)]})
    assert status in (200, 202)

    async def arrived() -> bool:
        return len((await sim_state(cortex))["events"].get("checkout-service", [])) == 1

    await wait_until(arrived)
    await bridge.stop(deadline=2)


def row(stdout: str, check: str) -> str:
    """The table's line of ``check`` (its status and why)."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(check + " ")]
    return " ".join(line[len(check):].split())


def no_secret(*outputs: str) -> None:
    for text in outputs:
        assert TOKEN not in text and SOON not in text and EXPIRED not in text and PASSWORD not in text
        assert "Traceback" not in text


async def test_healthy_setup_exits_0(cortex: SimulatorServer, setup: CommandSetup, make_bridge: BridgeFactory) -> None:
    await delivered_through_a_bridge(cortex, setup, make_bridge)
    config = setup.write_config(cortex, TOKEN, sources=sources(), cortex={"api_key_identifier": KEY})
    before, asked_before = time.time(), len(await sim_requests(cortex))
    result = await setup.run(config, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert row(result.stdout, "token").startswith("ok Cortex at http://127.0.0.1:")
    assert "accepts the token; it expires at" in row(result.stdout, "token") and "(in 90 days)" in result.stdout
    assert row(result.stdout, "metric lead-time") == "ok custom metric definition exists (named by gh)"
    assert row(result.stdout, "entity checkout-service") == "ok exists (static map of gh)"
    assert row(result.stdout, "queue").startswith("ok empty")
    assert row(result.stdout, "audit log").startswith(f"ok Cortex recorded 1 write(s) by {KEY} in the last 60 min;"
                                                      " the bridge delivered 1 record(s) to 1 entities")
    assert result.stdout.rstrip().endswith("all checks passed")
    no_secret(result.stdout, result.stderr)
    queue = await setup.open()
    try:  # doctor's reads went through the budget, into the spend log the bridge reads at start
        assert await spent_since(queue, before) == len(await sim_requests(cortex)) - asked_before == 4
    finally:
        await queue.close()


async def test_bad_token(cortex: SimulatorServer, sqlite_setup: CommandSetup) -> None:
    for token, why in (("not-the-key", "revoked, mistyped or of another tenant"), (EXPIRED, "it expired at")):
        config = sqlite_setup.write_config(cortex, token, sources=sources())
        (sqlite_setup.directory / "q.db").touch()  # the queue check is not what this test is about
        result = await sqlite_setup.run(config, "doctor")
        assert result.returncode == 1
        assert row(result.stdout, "token").startswith("FAIL Cortex at") and "rejected the token (401)" in result.stdout
        assert why in row(result.stdout, "token")
        assert row(result.stdout, "metric lead-time") == "skip skipped: the token check failed"
        assert row(result.stdout, "audit log") == "skip skipped: the token check failed"
        no_secret(result.stdout, result.stderr)


async def test_token_expiring_soon_is_a_warning(cortex: SimulatorServer, sqlite_setup: CommandSetup,
                                                make_bridge: BridgeFactory) -> None:
    await delivered_through_a_bridge(cortex, sqlite_setup, make_bridge, token=SOON)
    result = await sqlite_setup.run(sqlite_setup.write_config(cortex, SOON, cortex={"api_key_identifier": KEY}),
                                    "doctor")
    assert result.returncode == 0, result.stdout
    assert row(result.stdout, "token").startswith("warn Cortex accepts the token, but it expires at")
    assert "rotate it" in result.stdout and "0 problem(s), 1 warning(s)" in result.stdout


async def test_missing_metric_key_and_entity(cortex: SimulatorServer, setup: CommandSetup,
                                             make_bridge: BridgeFactory) -> None:
    await delivered_through_a_bridge(cortex, setup, make_bridge)
    config = setup.write_config(cortex, TOKEN, sources=sources(metric="no-such-metric", entity="ghost"),
                                cortex={"api_key_identifier": KEY})
    result = await setup.run(config, "doctor")
    assert result.returncode == 1
    assert row(result.stdout, "metric no-such-metric").startswith(
        "FAIL no custom metric definition (named by gh): Cortex answers its points 404")
    assert row(result.stdout, "entity ghost").startswith("FAIL no such entity in Cortex (static map of gh)")
    assert row(result.stdout, "token").startswith("ok") and "2 problem(s)" in result.stdout
    no_secret(result.stdout, result.stderr)


async def test_stuck_queue_says_why(cortex: SimulatorServer, setup: CommandSetup) -> None:
    queue = await setup.open()
    parked, due = events(1, 2, entity="ghost")
    await queue.append([parked, due])
    (claimed,) = await queue.claim(BatchPolicy(max_items={"event": 1}))
    await queue.reschedule([claimed.seq], next_attempt_at=time.time() + 600, count_attempt=True, parked=True,
                           error="Cortex 404: Entity not found")
    await queue.close()
    config = setup.write_config(cortex, TOKEN, cortex={"api_key_identifier": KEY})
    result = await setup.run(config, "doctor", "--stuck-after", "0")
    assert result.returncode == 1
    why = row(result.stdout, "queue")
    assert why.startswith(f"FAIL oldest of 2: event {parked.id} for ghost, waiting")
    assert "parked after a 404" in why and "cortex-bridge queue retry --parked" in why
    relaxed = await setup.run(config, "doctor")  # younger than the default 300 s: waiting, not stuck
    assert relaxed.returncode == 0 and row(relaxed.stdout, "queue").startswith("ok oldest of 2")
    no_secret(result.stdout, result.stderr)


async def test_writes_cortex_never_recorded_under_the_key(cortex: SimulatorServer, sqlite_setup: CommandSetup,
                                                           make_bridge: BridgeFactory) -> None:
    await delivered_through_a_bridge(cortex, sqlite_setup, make_bridge)
    config = sqlite_setup.write_config(cortex, TOKEN)
    result = await sqlite_setup.run(config, "doctor", "--api-key-identifier", "someone-else")
    assert result.returncode == 1
    assert row(result.stdout, "audit log").startswith(
        "FAIL the bridge delivered 1 record(s) in the last 60 min, but Cortex recorded no write by someone-else")
    unset = await sqlite_setup.run(config, "doctor")
    assert unset.returncode == 0 and "set cortex.api_key_identifier" in row(unset.stdout, "audit log")


async def test_without_a_queue_and_with_cortex_down(tmp_path: Path) -> None:
    async with SimulatorServer(sim_config()) as down:
        url = down.url
    setup = CommandSetup("sqlite", {"path": str(tmp_path / "missing.db")}, sqlite_opener(tmp_path / "x.db"), tmp_path)
    config = tmp_path / "bridge.yaml"
    config.write_text(json.dumps({"cortex": {"url": url, "token": TOKEN},
                                  "ingest": {"allow_unauthenticated": True}, "queue": setup.queue}))
    result = await setup.run(config, "doctor")
    assert result.returncode == 1, result.stderr
    assert row(result.stdout, "token").startswith("FAIL Cortex at http://")
    assert "did not answer" in row(result.stdout, "token")
    assert row(result.stdout, "queue").startswith("FAIL cannot open the queue: no queue database at")
    no_secret(result.stdout, result.stderr)
