"""Fair turns inside one record kind: round-robin over sources, then over lanes within a source.

Weighted shares (bridge/queue/shares.py) decide which kind a claim serves; without turns, the
claim then takes that kind's oldest due lane, so one noisy entity (a replayed metric topic for
one service) or one noisy source (a warning storm from one cluster) holds the whole share of
its kind until its backlog is gone. With turns, each source that has due records of the kind
gets the next claim in turn, and inside a source each lane (entity, metric key) in turn. A
claim still takes as many records of its lane as one request carries, so turns change the
order of requests, never their number.

The chooser is written once for both backends, without I/O: :meth:`LaneTurns.choose` is a
generator that yields :data:`Probe` statements (SQLite placeholders; PostgreSQL translates them
with ``pg_statement``) and is sent the first column of the first row each one returns. Every
probe is one index seek (``records_turns``). Turns are kept in memory: after a restart they
start over, which costs fairness for one round, never a record.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from bridge.queue.schema import State

#: A statement to run and its parameters; the chooser is sent ``row[0]`` of its first row, or None.
Probe = tuple[str, tuple[object, ...]]
#: What :meth:`LaneTurns.choose` is: probes out, answers in, the chosen lane (or None) at the end.
Choice = Generator[Probe, object, "str | None"]

#: Probes one choice may spend before it gives up and the claim takes the kind's oldest due lane
#: instead: lanes that hold records but none due (backing off, parked after a 404) are skipped
#: one seek each, and a claim must stay cheap however many of them there are.
MAX_PROBES = 64

# Two statements each, not one with "? IS NULL OR source > ?": neither engine seeks on that.
_FIRST_SOURCE = "SELECT MIN(source) FROM records WHERE kind = ? AND state = ?"
_NEXT_SOURCE = _FIRST_SOURCE + " AND source > ?"
_FIRST_LANE = "SELECT MIN(lane) FROM records WHERE kind = ? AND state = ? AND source = ?"
_NEXT_LANE = _FIRST_LANE + " AND lane > ?"
_LANE_DUE = ("SELECT MIN(next_attempt_at) FROM records WHERE kind = ? AND state = ? AND source = ?"
             " AND lane = ?")
_LANE_HELD = "SELECT 1 FROM records WHERE lane = ? AND state = ? LIMIT 1"


@dataclass
class _Spend:
    left: int = MAX_PROBES

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


@dataclass
class LaneTurns:
    """Whose turn it is inside each kind: the source served last, and each source's last lane."""

    _source: dict[str, str] = field(default_factory=dict)
    _lane: dict[tuple[str, str], str] = field(default_factory=dict)

    def choose(self, kind: str, now: float, *, hold_ambiguous: bool) -> Choice:
        """The next due lane of ``kind`` in turn, or None (nothing due, or too many probes: the
        caller then takes the oldest due lane). ``hold_ambiguous``: skip lanes holding an
        ambiguous record. Choosing a lane moves the turn past it."""
        spend = _Spend()
        after = self._source.get(kind)
        seen: set[str] = set()
        while spend.take():
            answer = yield ((_FIRST_SOURCE, (kind, int(State.READY))) if after is None
                            else (_NEXT_SOURCE, (kind, int(State.READY), after)))
            if answer is None:
                if after is None:
                    return None
                after = None  # past the last source: wrap around
                continue
            source = str(answer)
            if source in seen:
                return None  # a whole round, nothing due
            seen.add(source)
            lane = yield from self._lane_in(kind, source, now, hold_ambiguous, spend)
            if lane is not None:
                self._source[kind] = source
                return lane
            after = source
        return None

    def _lane_in(self, kind: str, source: str, now: float, hold_ambiguous: bool, spend: _Spend) -> Choice:
        """The next due lane of ``source`` in turn, or None."""
        after = self._lane.get((kind, source))
        seen: set[str] = set()
        while spend.take():
            answer = yield ((_FIRST_LANE, (kind, int(State.READY), source)) if after is None
                            else (_NEXT_LANE, (kind, int(State.READY), source, after)))
            if answer is None:
                if after is None:
                    return None
                after = None
                continue
            lane = str(answer)
            if lane in seen:
                return None
            seen.add(lane)
            due = yield _LANE_DUE, (kind, int(State.READY), source, lane)
            if (isinstance(due, int | float) and due <= now
                    and not (hold_ambiguous and (yield _LANE_HELD, (lane, int(State.AMBIGUOUS))) is not None)):
                self._lane[(kind, source)] = lane
                return lane
            after = lane
        return None
