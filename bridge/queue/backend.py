"""What a queue backend offers the rest of the bridge: the operations, no SQL.

:class:`~bridge.queue.DurableQueue` (SQLite) implements :class:`QueueBackend`; a second backend
(PostgreSQL) implements the same protocol, with the same guarantees: an append returns only once
its records are durable, a claim hands out each record to one request at a time, and every
refusal is a :class:`~bridge.queue.errors.QueueError`. The docstrings of ``DurableQueue``'s
methods are the contract of each operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from bridge.queue.appends import AppendResult
from bridge.queue.claims import BatchPolicy, QueuedRecord
from bridge.queue.deploy_groups import DeployGroup, DeployPolicy
from bridge.queue.enrichment import ImageGroup
from bridge.queue.poison import RawInput
from bridge.records import DeployRecord, Record


class QueueBackend(Protocol):
    """The public operations of the durable queue."""

    max_records: int
    max_bytes: int
    settle_seconds: float
    writable: bool
    #: why input is refused while ``writable`` is false (readiness shows it)
    unwritable_reason: str
    #: deploy coalescing and per-source deploy modes, applied at append (None: none)
    deploy_policy: DeployPolicy | None

    @property
    def depth(self) -> int:
        """Undelivered records."""

    @property
    def is_full(self) -> bool:
        """Whether the queue holds its maximum of records or bytes."""

    def on_sender_takeover(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when this process becomes the deployment's one sender after another
        (never, for a backend only one process uses)."""

    async def may_send(self) -> bool:
        """Whether this process is (now) the one that claims and sends; a replica that is not
        takes no request budget for sending."""

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever records became ready."""

    async def close(self) -> None:
        """Flush pending appends, then close."""

    # appends and source state
    async def append(self, records: Sequence[Record], *, delivery: tuple[str, str] | None = None,
                     state_updates: dict[str, str] | None = None) -> AppendResult:
        """Make ``records`` (and ``state_updates``) durable in one commit."""

    async def get_state(self, key: str) -> str | None:
        """A source's persisted state value."""

    async def get_states(self, prefix: str) -> dict[str, str]:
        """All persisted state values under ``prefix``."""

    async def get_states_of(self, keys: Sequence[str]) -> dict[str, str]:
        """The persisted values of ``keys`` (those that have one), by the keys as given."""

    async def put_state(self, updates: dict[str, str]) -> None:
        """Persist source state without records."""

    async def forget_state(self, keys: Sequence[str]) -> int:
        """Delete the state under ``keys``."""

    async def purge_empty_states(self, prefix: str) -> int:
        """Delete the empty values (tombstones) under ``prefix``."""

    # claiming and settling
    async def claim(self, policy: BatchPolicy, now: float | None = None) -> list[QueuedRecord]:
        """Claim the oldest due lane's records."""

    async def next_due_at(self) -> float | None:
        """When the earliest ready record becomes due."""

    async def newest_in_lane(self, lane: str) -> int | None:
        """The highest seq among the undelivered records of ``lane`` (any state), if any."""

    async def ambiguous(self, limit: int = 1000, *, settled_by: float | None = None) -> list[QueuedRecord]:
        """Records whose outcome is unknown, oldest first."""

    async def next_settled_at(self) -> float | None:
        """When the earliest ambiguous record may be read back."""

    async def mark_delivered(self, items: Iterable[tuple[int, str | None]], *, how: str = "sent") -> None:
        """Records (by seq) that Cortex stored."""

    async def delivered_points(self, lane: str, since: float) -> tuple[Counter[str], bool]:
        """Delivered metric points of ``lane``, and whether the lane is moving."""

    async def reschedule(self, seqs: Sequence[int], *, next_attempt_at: float, error: str,
                         count_attempt: bool, parked: bool = False) -> None:
        """Put records back, due at ``next_attempt_at`` (``parked``: after a 404)."""

    async def retry_now(self, ids: Sequence[str] | None = None, *, parked: bool = False) -> int:
        """Make waiting READY records (all, these ids, or the parked ones) due now."""

    async def mark_ambiguous(self, seqs: Sequence[int], error: str) -> None:
        """The request for these records may or may not have been stored."""

    async def deploy_group(self, record_id: str) -> DeployGroup | None:
        """The deploy group ``record_id`` belongs to (None: not coalesced)."""

    async def take_over_deploy_group(self, group_id: int, record_id: str, previous: str) -> bool:
        """Make ``record_id`` the creator of a group whose creator ``previous`` failed for good."""

    async def image_deploy_groups(self) -> list[ImageGroup]:
        """Image-only deploy groups created within the coalescing window (bridge/queue/enrichment.py)."""

    async def enrich_deploy_group(self, group: ImageGroup, record: DeployRecord) -> bool:
        """Give an image-only deploy group its sha and ``record`` as a report, once."""

    # dead letters
    async def dead_letter(self, seqs: Sequence[int], *, reason: str, detail: str, status: int | None) -> None:
        """Move records to the dead-letter set."""

    async def dead_letter_input(self, records: Sequence[Record], *, reason: str, detail: str) -> None:
        """Keep records that can never be sent as dead letters."""

    async def dead_letter_raw(self, inputs: Sequence[RawInput]) -> list[str]:
        """Keep inputs that produced no record as dead letters."""

    async def dead_counts_by_kind(self) -> dict[str, int]:
        """Dead letters by kind."""

    # maintenance, health and the request spend log
    async def prune_history(self, chunk: int = 5000) -> int:
        """Forget history older than the configured retention."""

    async def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest age, states, kinds, dead letters."""

    async def refresh_gauges(self) -> None:
        """Publish the queue's gauges."""

    async def probe_writable(self) -> bool:
        """Try a tiny durable write."""

    async def load_spends(self, since: float) -> list[float]:
        """Send stamps recorded at or after ``since``."""

    async def record_spends(self, count: int, *, clock: Callable[[], float],
                            expiry: Callable[[float], float | None]) -> None:
        """Durably note ``count`` requests sent at ``clock()``."""


@runtime_checkable
class SharedSpend(Protocol):
    """A queue several processes use at once, whose spend log admits each Cortex request.

    With one process per queue (SQLite), restoring the log at start is enough; with replicas,
    each must see what the others are spending *now*, so every request takes its slot from the
    shared log (``PostgresQueue.admit_spend`` documents the operation).
    """

    async def admit_spend(self, replica: str, *, room: int, span: float,
                          expiry: Callable[[float], float | None]) -> float | None:
        """Record one request if fewer than ``room`` others' requests fall in the last ``span``
        seconds; ``None`` when recorded, else the seconds until one of them stops counting."""
