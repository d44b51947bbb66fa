"""Fixtures of the fault-injection suite: the Kafka-protocol broker (tansu) for the scenarios that need one."""

from tests.support.kafka import broker, tansu  # noqa: F401  (fixtures shared with tests/sources/kafka)
