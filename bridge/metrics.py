"""Prometheus metrics exported on the metrics port.

All metric names live here so dashboards, alerts and tests have one place to check against.
Each process uses the default registry; tests read values through :func:`sample`.
"""

from __future__ import annotations

import functools
import platform

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from bridge import __version__

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

# Build --------------------------------------------------------------------------------------
BUILD_INFO = Gauge(
    "cortex_bridge_build_info", "Always 1; the labels say which release runs, on which Python.", ["version", "python"]
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# Ingest -------------------------------------------------------------------------------------
RECORDS_RECEIVED = Counter(
    "cortex_bridge_records_received", "Records built from accepted input, before queueing.", ["source", "kind"]
)
RECORDS_ENQUEUED = Counter(
    "cortex_bridge_records_enqueued", "Records made durable in the queue (duplicates excluded).", ["source", "kind"]
)
RECORDS_DUPLICATE = Counter(
    "cortex_bridge_records_duplicate", "Records not queued because their id was already known.", ["source", "kind"]
)
RECORDS_SKIPPED = Counter(
    "cortex_bridge_records_skipped",
    "Deploys acknowledged but not stored by their source's deploys mode (off; enrich-only with nothing to enrich).",
    ["source", "kind"],
)
INPUTS_IGNORED = Counter(
    "cortex_bridge_inputs_ignored", "Inputs acknowledged without producing records.", ["source", "reason"]
)
INPUTS_REJECTED = Counter(
    "cortex_bridge_inputs_rejected", "Inputs refused with a 4xx/503 answer.", ["source", "status"]
)

HTTP_UNAUTHENTICATED_BODY_BYTES = Gauge(
    "cortex_bridge_http_unauthenticated_body_bytes",
    "Request body bytes held in memory before their sender is authenticated (bounded by http.unauthenticated_body_bytes).",
)
HTTP_BUDGET_REFUSED = Counter(
    "cortex_bridge_http_unauthenticated_budget_refused",
    "Requests answered 503 because unauthenticated bodies already held http.unauthenticated_body_bytes.",
)
HTTP_TIMEOUTS = Counter(
    "cortex_bridge_http_timeouts", "Connections closed with 408 for a slow request head or body.", ["phase"]
)
HTTP_CLIENT_ABORTS = Counter("cortex_bridge_http_client_aborts", "Requests whose client disconnected mid-request.")

# Queue --------------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("cortex_bridge_queue_depth", "Undelivered records in the durable queue.")
QUEUE_BYTES = Gauge("cortex_bridge_queue_bytes", "Bytes of undelivered records in the durable queue.")
QUEUE_OLDEST_AGE = Gauge(
    "cortex_bridge_queue_oldest_age_seconds", "Age of the oldest undelivered record (0 when empty)."
)
DEAD_LETTERS = Gauge("cortex_bridge_dead_letters", "Records in the dead-letter set.")
QUEUE_FULL = Gauge("cortex_bridge_queue_full", "1 while the queue refuses input because it is full.")
QUEUE_WRITABLE = Gauge("cortex_bridge_queue_writable", "0 while the queue cannot write to disk.")
QUEUE_COMMIT_SECONDS = Histogram(
    "cortex_bridge_queue_commit_seconds",
    "Duration of one group commit (write + fsync).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

# Delivery -----------------------------------------------------------------------------------
RECORDS_DELIVERED = Counter("cortex_bridge_records_delivered", "Records stored by Cortex.", ["source", "kind"])
RECORDS_DEAD_LETTERED = Counter(
    "cortex_bridge_records_dead_lettered", "Records moved to the dead-letter set.", ["source", "kind", "reason"]
)
RECORDS_RETRIED = Counter(
    "cortex_bridge_records_retried", "Records scheduled for another attempt.", ["kind", "reason"]
)
TIME_TO_DELIVER = Histogram(
    "cortex_bridge_time_to_deliver_seconds",
    "From receipt to Cortex's 2xx.",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
LAST_DELIVERY = Gauge(
    "cortex_bridge_last_delivery_timestamp_seconds", "Unix time of the last successful Cortex write."
)
AMBIGUOUS_RECONCILED = Counter(
    "cortex_bridge_ambiguous_reconciled",
    "Records whose delivery outcome was unknown, by what the read-back found.",
    ["kind", "outcome"],
)

# Cortex API ---------------------------------------------------------------------------------
CORTEX_REQUESTS = Counter(
    "cortex_bridge_cortex_requests", "Requests sent to Cortex.", ["endpoint", "status"]
)
CORTEX_REQUEST_SECONDS = Histogram(
    "cortex_bridge_cortex_request_duration_seconds",
    "Duration of Cortex requests.",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CORTEX_AUTH_FAILED = Gauge(
    "cortex_bridge_cortex_auth_failed", "1 while Cortex rejects the token (401/403); sending is stopped."
)
CORTEX_TOKEN_EXPIRY = Gauge(
    "cortex_bridge_cortex_token_expiry_timestamp_seconds", "The token's JWT exp claim (0 when unknown)."
)
RATE_LIMIT_TOKENS = Gauge("cortex_bridge_rate_limit_tokens", "Tokens available in the request bucket.")
RATE_LIMIT_PAUSES = Counter("cortex_bridge_rate_limit_pauses", "429 answers that paused all sending.")
RATE_LIMIT_PAUSE_SECONDS = Counter(
    "cortex_bridge_rate_limit_pause_seconds", "Seconds all sending was paused by Retry-After."
)
RATE_LIMIT_SPEND_LOG_ERRORS = Counter(
    "cortex_bridge_rate_limit_spend_log_errors",
    "Spend log failures. SQLite: a request sent although its send could not be recorded (a restart "
    "within a minute may then exceed the quota). PostgreSQL: a request that could not take its slot "
    "in the shared log and waited.",
)
CORTEX_CIRCUIT_STATE = Gauge(
    "cortex_bridge_cortex_circuit_state",
    "Circuit breaker in front of Cortex: 0 closed, 1 open (nothing is sent), 2 half-open (one probe).",
)
CORTEX_CIRCUIT_OPENS = Counter(
    "cortex_bridge_cortex_circuit_opens",
    "Times the Cortex circuit breaker opened (consecutive failures or 5xx, or a failed probe).",
)

# Process ------------------------------------------------------------------------------------
READY = Gauge("cortex_bridge_ready", "1 when /readyz answers 200.")


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a metric sample in the default registry (0.0 when absent)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value

# Kafka source ---------------------------------------------------------------------------------
KAFKA_MESSAGES_CONSUMED = Counter(
    "cortex_bridge_kafka_messages_consumed", "Kafka messages handed to the bridge by the consumer.", ["source", "topic"]
)
KAFKA_RECORDS_PRODUCED = Counter(
    "cortex_bridge_kafka_records_produced", "Records built from Kafka messages.", ["source", "topic", "kind"]
)
KAFKA_MESSAGES_IGNORED = Counter(
    "cortex_bridge_kafka_messages_ignored", "Kafka messages understood but mapped to no record.", ["source", "topic"]
)
KAFKA_POISON_MESSAGES = Counter(
    "cortex_bridge_kafka_poison_messages",
    "Kafka messages that could not be parsed or mapped, stored in the dead-letter set.",
    ["source", "topic", "reason"],
)
KAFKA_COMMITS = Counter("cortex_bridge_kafka_commits", "Successful offset commits.", ["source"])
KAFKA_COMMIT_FAILURES = Counter(
    "cortex_bridge_kafka_commit_failures",
    "Offset commits that failed (rebalance, timeout, broker error; retried by the next commit) or were "
    "refused because the group no longer knew the member (membership_lost; its partitions are lost).",
    ["source", "reason"],
)
KAFKA_LAG = Gauge(
    "cortex_bridge_kafka_lag",
    "Messages of a partition not yet committed: fetch high watermark minus committed offset.",
    ["source", "topic", "partition"],
)
KAFKA_COMMITTED_OFFSET = Gauge(
    "cortex_bridge_kafka_committed_offset", "Last offset committed by this bridge.", ["source", "topic", "partition"]
)
KAFKA_PAUSED = Gauge("cortex_bridge_kafka_paused", "1 while partitions are paused because the queue is full.", ["source"])
KAFKA_PAUSES = Counter("cortex_bridge_kafka_pauses", "Times consumption was paused by backpressure.", ["source"])
KAFKA_ASSIGNED = Gauge("cortex_bridge_kafka_assigned_partitions", "Partitions assigned to this consumer.", ["source"])

# Kubernetes source ----------------------------------------------------------------------------
K8S_HANDOVER_GAPS = Counter(
    "cortex_bridge_k8s_handover_gaps",
    "Hand-overs whose watermark was already compacted away; the collection was baselined instead.",
    ["source", "resource"],
)
K8S_UNMAPPED = Counter(
    "cortex_bridge_k8s_unmapped_entities",
    "Workloads (or objects) without a Cortex entity; their rollouts and events were skipped.",
    ["source", "kind"],
)
K8S_ROLLOUTS_EMITTED = Counter(
    "cortex_bridge_k8s_rollouts_emitted", "Rollouts reported, by deploy type (FAILED: custom event).", ["source", "type"]
)
K8S_EVENTS_SEEN = Counter(
    "cortex_bridge_k8s_events_seen", "Event objects (adds and updates) read from the cluster.", ["source", "type"]
)
K8S_EVENTS_EMITTED = Counter("cortex_bridge_k8s_events_emitted", "Custom events sent for Kubernetes events.", ["source"])
K8S_EVENTS_AGGREGATED = Counter(
    "cortex_bridge_k8s_events_aggregated",
    "Occurrences folded into an open window instead of becoming custom events of their own.",
    ["source"],
)
K8S_COUNT_POINTS = Counter(
    "cortex_bridge_k8s_event_count_points", "Points of the event count metric sent (one per window).", ["source"]
)
K8S_LEADER = Gauge("cortex_bridge_k8s_leader", "1 while this bridge holds the Lease and watches.", ["source"])
K8S_LEADER_TRANSITIONS = Counter(
    "cortex_bridge_k8s_leader_transitions", "Times this bridge started or stopped leading.", ["source", "to"]
)
K8S_WATCH_RESTARTS = Counter(
    "cortex_bridge_k8s_watch_restarts",
    "Watch streams that ended and were resumed from the last resourceVersion.",
    ["source", "resource", "reason"],
)
K8S_RELISTS = Counter(
    "cortex_bridge_k8s_relists", "Full lists of a collection (initial, after 410, after errors).", ["source", "resource"]
)
K8S_EXPIRED = Counter(
    "cortex_bridge_k8s_watch_expired",
    "410 Expired answers: the watch position was compacted away, so the collection was re-listed.",
    ["source", "resource"],
)
K8S_API_ERRORS = Counter(
    "cortex_bridge_k8s_api_errors", "Failed Kubernetes API calls, by HTTP status (0: no answer).", ["source", "status"]
)
K8S_OBJECTS = Gauge("cortex_bridge_k8s_objects", "Objects a stream currently knows.", ["source", "resource"])


# Hot paths ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def counter_of(metric: Counter, *labels: str) -> Counter:
    """``metric.labels(*labels)``, looked up once: ``labels`` takes a lock and builds a key on
    every call, a visible share of a single-record request. Bounded: labels on hot paths are
    sources, kinds and topics from the configuration, never input values."""
    return metric.labels(*labels)
