"""Prometheus metrics of the Kafka source (consumption, poison messages, commits, lag, backpressure)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MESSAGES_CONSUMED = Counter(
    "cortex_bridge_kafka_messages_consumed", "Kafka messages handed to the bridge by the consumer.", ["source", "topic"]
)
RECORDS_PRODUCED = Counter(
    "cortex_bridge_kafka_records_produced", "Records built from Kafka messages.", ["source", "topic", "kind"]
)
MESSAGES_IGNORED = Counter(
    "cortex_bridge_kafka_messages_ignored", "Kafka messages understood but mapped to no record.", ["source", "topic"]
)
POISON_MESSAGES = Counter(
    "cortex_bridge_kafka_poison_messages",
    "Kafka messages that could not be parsed or mapped, stored in the dead-letter set.",
    ["source", "topic", "reason"],
)
COMMITS = Counter("cortex_bridge_kafka_commits", "Successful offset commits.", ["source"])
COMMIT_FAILURES = Counter(
    "cortex_bridge_kafka_commit_failures",
    "Offset commits that failed (rebalance, timeout, broker error; retried by the next commit) or were "
    "refused because the group no longer knew the member (membership_lost; its partitions are lost).",
    ["source", "reason"],
)
LAG = Gauge(
    "cortex_bridge_kafka_lag",
    "Messages of a partition not yet committed: fetch high watermark minus committed offset.",
    ["source", "topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "cortex_bridge_kafka_committed_offset", "Last offset committed by this bridge.", ["source", "topic", "partition"]
)
PAUSED = Gauge("cortex_bridge_kafka_paused", "1 while partitions are paused because the queue is full.", ["source"])
PAUSES = Counter("cortex_bridge_kafka_pauses", "Times consumption was paused by backpressure.", ["source"])
ASSIGNED = Gauge("cortex_bridge_kafka_assigned_partitions", "Partitions assigned to this consumer.", ["source"])
