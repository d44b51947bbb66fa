"""Secrets the bridge checks input against: inline values and files re-read on every use.

Files are re-read so that a rotated Kubernetes Secret takes effect without a restart; several
active secrets at once let old and new be valid while a rotation is under way. Used by the
ingest token (``bridge.config``) and by every source that authenticates its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr


class SecretUnavailable(Exception):
    """A configured secret file cannot be read: the delivery cannot be authenticated."""


@dataclass(frozen=True)
class SecretSet:
    """The active secrets of one source: inline values plus files (one secret per non-empty line)."""

    inline: tuple[SecretStr, ...] = ()
    files: tuple[Path, ...] = ()

    def values(self) -> list[bytes]:
        """All active secrets, files re-read now; raises :class:`SecretUnavailable`."""
        found = [s.get_secret_value().encode() for s in self.inline if s.get_secret_value()]
        for path in self.files:
            try:
                text = path.read_text()
            except OSError as exc:
                raise SecretUnavailable(f"cannot read secret file {path}: {exc.strerror}") from exc
            found.extend(line.strip().encode() for line in text.splitlines() if line.strip())
        return found
