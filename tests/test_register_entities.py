"""``cortex-bridge dlq register-entities`` end to end: dead letters of unresolved entities in a real
queue (SQLite and PostgreSQL), the simulator as Cortex, the command in its own process.

A dry run proposes and changes nothing; without ``--yes`` nothing is created; with it the
entities are created through "Create or patch entity" and their dead letters replayed, which a
running bridge then delivers. Every request the command sends is in the queue's spend log.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import QueueSettings
from bridge.cortex.simulator import SimulatorServer
from bridge.queue.open import open_operator
from bridge.records import EventRecord, Provenance, Record
from bridge.sources.entity import UNRESOLVED
from tests.support.commands import PASSWORD, CommandSetup, command_setup, spent_since
from tests.support.cortex import SIM_TOKEN, BridgeFactory, sim_requests, sim_state, wait_until

SOURCES = [{"name": "gh", "type": "github"}, {"name": "gl", "type": "gitlab"}]


def unresolved(number: int, tag: str, *, source: str = "gh", repository: str | None = None) -> Record:
    """A record as the pipeline dead-letters it: a best-guess tag and the repository the input named."""
    return EventRecord(id=f"unresolved-{number}", entity=tag, title=f"e{number}", type="BUILD",
                       timestamp=1_700_000_000 + number,
                       provenance=Provenance(source=source, repository=repository))


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> CommandSetup:
    return command_setup(request, tmp_path)


@pytest.fixture
async def dead(setup: CommandSetup) -> AsyncIterator[None]:
    """Two for a new entity (its repository known), one for a new GitLab one, one for an entity that
    exists by now, one with no hint of a tag."""
    queue = await setup.open()
    await queue.dead_letter_input([unresolved(1, "billing", repository="acme/billing"), unresolved(2, "billing")],
                                  reason=UNRESOLVED, detail="no catalog entity has git repository acme/billing")
    await queue.dead_letter_input([unresolved(3, "ledger", source="gl", repository="acme/ledger")],
                                  reason=UNRESOLVED, detail="no catalog entity has git repository acme/ledger")
    await queue.dead_letter_input([unresolved(4, "checkout-service"), unresolved(5, "unresolved")],
                                  reason=UNRESOLVED, detail="input names no git repository")
    await queue.close()
    yield


def dead_ids(setup: CommandSetup) -> list[str]:
    """The ids of the queue's entity-unresolved dead letters, read as an operator reads them."""
    queue = open_operator(QueueSettings.model_validate(setup.queue))
    try:
        return sorted(e["id"] for e in queue.dlq_list(reason=UNRESOLVED))
    finally:
        queue.close()


def row(stdout: str, tag: str) -> list[str]:
    (line,) = [line for line in stdout.splitlines() if line.split()[:1] == [tag]]
    return line.split()


async def test_dry_run_proposes_and_changes_nothing(sim: SimulatorServer, setup: CommandSetup, dead: None) -> None:
    config = setup.write_config(sim, SIM_TOKEN, sources=SOURCES)
    before = time.time()
    result = await setup.run(config, "dlq", "register-entities", "--reason", "entity-unresolved", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert row(result.stdout, "billing")[:4] == ["billing", "acme/billing", "2", "create"]
    assert row(result.stdout, "ledger")[:4] == ["ledger", "acme/ledger", "1", "create"]
    assert row(result.stdout, "checkout-service")[:5] == ["checkout-service", "-", "1", "replay", "only"]
    assert "would create 2 entities and replay 4 dead letter(s); nothing changed" in result.stdout
    assert "1 entity-unresolved dead letter(s) give no hint of a tag: left alone" in result.stderr
    assert {"billing", "ledger"}.isdisjoint(sim.store.entities)
    dry_runs = [r for r in await sim_requests(sim) if r["method"] == "PATCH"]
    assert [r["status"] for r in dry_runs] == [201, 201]  # Cortex validated each: "would be created"
    assert len(dead_ids(setup)) == 5
    queue = await setup.open()
    try:
        assert await spent_since(queue, before) == len(await sim_requests(sim))  # every request counted
    finally:
        await queue.close()


async def test_refuses_without_the_flag(sim: SimulatorServer, setup: CommandSetup, dead: None) -> None:
    config = setup.write_config(sim, SIM_TOKEN, sources=SOURCES)
    result = await setup.run(config, "dlq", "register-entities", "--reason", "entity-unresolved")
    assert result.returncode == 2
    assert "nothing created: give --yes to create 2 entities and replay 4 dead letter(s)" in result.stderr
    assert {"billing", "ledger"}.isdisjoint(sim.store.entities)
    assert len(dead_ids(setup)) == 5
    both = await setup.run(config, "dlq", "register-entities", "--reason", "entity-unresolved", "--dry-run", "--yes")
    assert both.returncode == 2 and "not both" in both.stderr
    other = await setup.run(config, "dlq", "register-entities", "--reason", "rejected", "--yes")
    assert other.returncode == 2 and "invalid choice" in other.stderr and "Traceback" not in other.stderr


async def test_confirmed_creates_and_a_running_bridge_delivers_the_replayed(
        sim: SimulatorServer, setup: CommandSetup, dead: None, make_bridge: BridgeFactory) -> None:
    config = setup.write_config(sim, SIM_TOKEN, sources=SOURCES)
    queue_section = {k: v for k, v in setup.queue.items() if k != "path"}
    await make_bridge(sim, queue_path=Path(setup.queue.get("path", setup.directory / "unused.db")),
                      queue=queue_section)
    result = await setup.run(config, "dlq", "register-entities", "--reason", "entity-unresolved", "--yes")
    assert result.returncode == 0, result.stderr
    assert "billing: created" in result.stdout and "ledger: created" in result.stdout
    assert "created 2 entities, replayed 4 dead letter(s)" in result.stdout
    billing, ledger = sim.store.entities["billing"], sim.store.entities["ledger"]
    assert (billing.name, billing.git_provider, billing.git_repository) == ("billing", "github", "acme/billing")
    assert (ledger.git_provider, ledger.git_repository) == ("gitlab", "acme/ledger")

    async def delivered() -> bool:
        events = (await sim_state(sim))["events"]
        return {tag: len(events.get(tag, [])) for tag in ("billing", "ledger", "checkout-service")} == {
            "billing": 2, "ledger": 1, "checkout-service": 1}

    await wait_until(delivered)
    assert dead_ids(setup) == ["unresolved-5"]
    again = await setup.run(config, "dlq", "register-entities", "--reason", "entity-unresolved", "--yes")
    assert again.returncode == 0 and "no entity-unresolved dead letters" in again.stdout
    assert PASSWORD not in result.stdout + result.stderr + again.stdout + again.stderr
