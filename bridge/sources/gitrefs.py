"""Git repositories and revisions as CI/CD systems write them, normalized for Cortex."""

from __future__ import annotations

import re

_SHA = re.compile(r"[0-9a-f]{7,64}")


def repository_from_url(url: object) -> str | None:
    """``org/repo`` from a git URL (https, ssh or scp-like), or ``None`` if there is no such path."""
    if not isinstance(url, str) or not url.strip():
        return None
    text = url.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
        text = text.split("/", 1)[1] if "/" in text else ""
    elif ":" in text and "@" in text.split(":", 1)[0]:
        text = text.split(":", 1)[1]
    text = text.split("?", 1)[0].split("#", 1)[0].strip("/")
    if text.endswith(".git"):
        text = text[:-4]
    return text if "/" in text else None


def sha_from_revision(revision: object) -> str | None:
    """The commit sha in a revision string: ``main/abc…`` or ``main@sha1:abc…`` (Flux), ``abc…``."""
    if not isinstance(revision, str):
        return None
    tail = revision.strip().rsplit("/", 1)[-1].rsplit(":", 1)[-1].lower()
    return tail if _SHA.fullmatch(tail) else None
