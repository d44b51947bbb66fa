"""``PATCH /api/v1/open-api`` ("Create or patch entity"): an entity descriptor in, an entity out.

The body is the raw text of a ``cortex.yaml`` descriptor (content type
``application/openapi;charset=UTF-8``): an OpenAPI document whose ``info`` carries
``x-cortex-tag`` (required), ``title`` (the name), ``x-cortex-type`` (default ``service``) and
``x-cortex-git`` (``{provider: {repository: owner/name}}``). The answer is ``OpenApiResponse``
(``{ok, violations}``): ``200`` when the tag existed and was patched, ``201`` when it was created,
``400`` with the violations for a descriptor that is not one, ``404`` when
``failIfEntityDoesNotExist=true`` and the tag is unknown. ``dryRun=true`` validates and answers
as the write would, changing nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from bridge.cortex.simulator.store import SimEntity, SimStore

#: What Cortex accepts as an ``x-cortex-tag`` (docs: letters, digits, ``-``, ``_``, ``.``).
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The git providers an ``x-cortex-git`` block names.
GIT_PROVIDERS = ("github", "gitlab", "bitbucket", "azure")


@dataclass(frozen=True)
class Descriptor:
    """What the simulator keeps of a valid descriptor."""

    tag: str
    name: str | None
    type: str | None
    git_provider: str | None
    git_repository: str | None


def _violation(title: str, description: str, *paths: str) -> dict[str, Any]:
    """A ``ViolationDTO`` of severity MUST."""
    return {"title": title, "description": description, "paths": list(paths), "violationType": "MUST"}


def parse_descriptor(text: str) -> Descriptor | list[dict[str, Any]]:
    """The descriptor in ``text``, or the violations that make it none."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [_violation("Invalid YAML", str(exc).splitlines()[0])]
    if not isinstance(document, dict):
        return [_violation("Invalid descriptor", "the descriptor must be a YAML mapping")]
    problems = []
    if "openapi" not in document:
        problems.append(_violation("Missing field", "openapi is required", "openapi"))
    info = document.get("info")
    if not isinstance(info, dict):
        return [*problems, _violation("Missing field", "info is required", "info")]
    tag = info.get("x-cortex-tag")
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        problems.append(_violation("Invalid tag", f"x-cortex-tag must be a tag, got {tag!r}", "info.x-cortex-tag"))
    name, kind = info.get("title"), info.get("x-cortex-type")
    if name is not None and not isinstance(name, str):
        problems.append(_violation("Invalid field", "title must be a string", "info.title"))
    if kind is not None and not isinstance(kind, str):
        problems.append(_violation("Invalid field", "x-cortex-type must be a string", "info.x-cortex-type"))
    provider, repository = None, None
    git = info.get("x-cortex-git")
    if git is not None:
        found = _git(git)
        if isinstance(found, dict):
            problems.append(found)
        else:
            provider, repository = found
    if problems:
        return problems
    assert isinstance(tag, str)
    return Descriptor(tag, name, kind, provider, repository)


def _git(git: Any) -> tuple[str, str] | dict[str, Any]:
    path = "info.x-cortex-git"
    if not isinstance(git, dict) or len(git) != 1 or next(iter(git)) not in GIT_PROVIDERS:
        return _violation("Invalid git", f"x-cortex-git names one provider of {', '.join(GIT_PROVIDERS)}", path)
    provider, block = next(iter(git.items()))
    repository = block.get("repository") if isinstance(block, dict) else None
    if not isinstance(repository, str) or "/" not in repository.strip("/"):
        return _violation("Invalid git", "repository must be owner/name", f"{path}.{provider}.repository")
    return provider, repository


def create_or_patch(store: SimStore, text: str, *, dry_run: bool,
                    fail_if_missing: bool) -> tuple[int, dict[str, Any], str | None]:
    """Apply (or with ``dry_run`` only judge) a descriptor: the status, ``OpenApiResponse`` and the tag."""
    found = parse_descriptor(text)
    if isinstance(found, list):
        return 400, {"ok": False, "violations": found}, None
    existing = store.entities.get(found.tag)
    if existing is None and fail_if_missing:
        return 404, {"ok": False, "violations": []}, found.tag
    if not dry_run:
        # A patch merges: what the descriptor leaves out, the entity keeps.
        base = existing or SimEntity(tag=found.tag)
        store.entities[found.tag] = base.model_copy(update={
            key: value for key, value in (("name", found.name), ("type", found.type),
                                          ("git_provider", found.git_provider),
                                          ("git_repository", found.git_repository)) if value is not None})
    return (200 if existing is not None else 201), {"ok": True, "violations": []}, found.tag
