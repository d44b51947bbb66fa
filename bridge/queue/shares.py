"""Weighted fair choice of the record kind a claim serves (stride scheduling).

Without it a claim takes the lane with the oldest due record, whatever its kind, so a deploy
posted behind a backlog of metric points waits for the whole backlog. With weights, each kind
that has due work gets claims in proportion to its weight: deploys and events jump a bulk
backlog, and bulk kinds keep a guaranteed share (they never starve, however many deploys
arrive). A kind with nothing due does not bank credit while idle: it resumes at the current
pace, not with a burst. Backend-neutral: the PostgreSQL backend uses the same chooser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, get_args

from bridge.records import RecordKind

if TYPE_CHECKING:
    from bridge.queue.claims import BatchPolicy


class KindShares:
    """Which kind to try first for the next claim, and the bookkeeping after it."""

    def __init__(self, weights: Mapping[str, int], kinds: Iterable[str] = ()) -> None:
        if any(weight < 1 for weight in weights.values()):
            raise ValueError("kind weights must be at least 1")
        #: the weights as configured
        self.configured = dict(weights)
        #: every kind this chooser serves: the weighted ones and ``kinds``, at weight 1 unless weighted
        self.weights = {**dict.fromkeys(kinds, 1), **weights}
        # Each kind starts one stride in, so the heaviest goes first and shares hold from the start.
        self._pass = {kind: 1.0 / weight for kind, weight in self.weights.items()}

    @classmethod
    def for_policy(cls, current: KindShares | None, policy: BatchPolicy) -> KindShares:
        """``current`` if it still follows ``policy``'s weights, else a fresh chooser. Every record
        kind is served (unweighted ones at weight 1), so no queued record can wait forever."""
        if current is not None and current.configured == policy.kind_weights:
            return current
        return cls(policy.kind_weights, (*get_args(RecordKind), *policy.max_items))

    def order(self) -> list[str]:
        """Every kind, most owed first."""
        return sorted(self._pass, key=lambda k: (self._pass[k], -self.weights[k], k))

    def served(self, kind: str, idle: Iterable[str] = ()) -> None:
        """A claim served ``kind``; ``idle`` kinds were tried before it and had nothing due."""
        now = self._pass[kind]
        self._pass[kind] = now + 1.0 / self.weights[kind]
        for other in idle:
            self._pass[other] = max(self._pass[other], now)
