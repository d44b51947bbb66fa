"""Small key/value state of sources (Kubernetes watch memory, CDEvents pipeline starts).

State written with records goes through the group commit (``append(..., state_updates=...)``),
so a source's memory of what it emitted never disagrees with what is queued; the operations here
read it, write it alone, and forget it.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.queue.appends import Appends
from bridge.queue.schema import state_key, transaction

#: Above every character a key can hold: ``[prefix, prefix + END)`` is the range of keys under it.
_KEY_RANGE_END = "\U0010ffff"


class SourceState(Appends):
    """Reading, writing and forgetting source state."""

    async def get_state(self, key: str) -> str | None:
        """A source's persisted state value."""
        return await self._run(self._get_state_sync, key)

    def _get_state_sync(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM source_state WHERE key = ?", (state_key(key),)).fetchone()
        return None if row is None else str(row[0])

    async def get_states(self, prefix: str) -> dict[str, str]:
        """All persisted state values whose key starts with ``prefix``."""
        return await self._run(self._get_states_sync, prefix)

    def _get_states_sync(self, prefix: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT key, value FROM source_state WHERE key >= ? AND key < ?", (state_key(prefix), state_key(prefix) + _KEY_RANGE_END)
        )
        return {k: v for k, v in rows}

    async def get_states_of(self, keys: Sequence[str]) -> dict[str, str]:
        """The persisted values of ``keys`` (those that have one), by the keys as given."""
        return await self._run(self._get_states_of_sync, list(keys))

    def _get_states_of_sync(self, keys: list[str]) -> dict[str, str]:
        stored = {state_key(key): key for key in keys}
        names = list(stored)
        found: dict[str, str] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            rows = self.conn.execute(
                f"SELECT key, value FROM source_state WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((stored[k], v) for k, v in rows)
        return found

    async def put_state(self, updates: dict[str, str]) -> None:
        """Persist source state without records (same durability as an append)."""
        await self.append([], state_updates=updates)

    async def forget_state(self, keys: Sequence[str]) -> int:
        """Delete the state under ``keys`` (one transaction); returns how many keys there were."""
        return await self._run(self._forget_sync, list(keys))

    def _forget_sync(self, keys: list[str]) -> int:
        with transaction(self.conn):
            return sum(
                self.conn.execute("DELETE FROM source_state WHERE key = ?", (state_key(key),)).rowcount for key in keys
            )

    async def purge_empty_states(self, prefix: str) -> int:
        """Delete the keys under ``prefix`` whose value is empty (tombstones); returns how many."""
        return await self._run(self._purge_empty_sync, prefix)

    def _purge_empty_sync(self, prefix: str) -> int:
        with transaction(self.conn):
            return int(self.conn.execute(
                "DELETE FROM source_state WHERE key >= ? AND key < ? AND value = ''", (state_key(prefix), state_key(prefix) + _KEY_RANGE_END)
            ).rowcount)
