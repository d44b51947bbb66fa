"""The commands that ask Cortex beside a queue (``doctor``, ``dlq register-entities``), run as an
operator runs them: the real entry point in its own process, a configuration file naming the
simulator and either queue backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.cortex.simulator import SimulatorServer
from bridge.queue import QueueBackend
from tests.queue.contract import Opener, postgres_opener, sqlite_opener
from tests.support.postgres import with_password

#: The queue database's password: never in any output.
PASSWORD = "doc-pa55-never-shown"


@dataclass
class CommandSetup:
    """A queue (its settings section and an opener) and the configuration the commands read."""

    backend: str
    queue: dict[str, Any]
    open: Opener
    directory: Path

    def write_config(self, sim: SimulatorServer, token: str, **sections: Any) -> Path:
        """The configuration file: Cortex is ``sim`` with ``token``, the queue is this setup's."""
        cortex = {"url": sim.url, "token": token, **sections.pop("cortex", {})}
        document = {"cortex": cortex, "ingest": {"allow_unauthenticated": True}, "queue": self.queue,
                    "log": {"format": "console"}, **sections}
        path = self.directory / "bridge.yaml"
        path.write_text(json.dumps(document))
        return path

    async def run(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``cortex-bridge --config CONFIG ARGS`` in its own process (the event loop keeps serving)."""
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "bridge.cli", "--config", str(config), *args],
            capture_output=True, text=True, timeout=120)


def command_setup(request: pytest.FixtureRequest, directory: Path) -> CommandSetup:
    """For a fixture parameterized ``sqlite`` / ``postgres``."""
    if request.param == "sqlite":
        return CommandSetup("sqlite", {"path": str(directory / "q.db")}, sqlite_opener(directory / "q.db"), directory)
    # The test cluster trusts local sockets: any password works, it only has to stay hidden.
    dsn = with_password(request.getfixturevalue("pg_dsn"), "postgres", PASSWORD)
    queue = {"backend": "postgres", "postgres": {"dsn": dsn, "statement_timeout_seconds": 5}}
    return CommandSetup("postgres", queue, postgres_opener(dsn), directory)


async def spent_since(queue: QueueBackend, since: float) -> int:
    """Requests the spend log holds since ``since``."""
    return len(await queue.load_spends(since))
