"""Which Cortex entity (``x-cortex-tag``) an input belongs to.

Configured per source under ``entity:`` and tried in this order:

1. ``static``: a map from the input's subject key (repository ``org/repo``, GitLab project path,
   Jenkins job, Argo CD application, ...) to a tag. Keys compare case-insensitively.
2. ``template``: text with ``{expression}`` placeholders, each a JMESPath expression over the
   input document (e.g. ``"{repository.name}"``). Used when every placeholder yields a value.
3. ``lookup``: the Cortex catalog entities whose git repository is the input's repository
   (``GET /api/v1/catalog?gitRepositories=org/repo``, cached with a TTL by the core).

Several entities for one repository (a monorepo) each get the records. No entity at all is not
an error of the sender: the records are kept as dead letters with the reason, for an operator.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.sources.expressions import check_expression, search

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Dead-letter reasons, also the ``--reason`` to give ``cortex-bridge dlq replay|purge``.
UNRESOLVED = "entity-unresolved"
LOOKUP_FAILED = "entity-lookup-failed"
#: The tag of a dead letter whose input gave no hint of one (never an entity to create).
NO_TAG = "unresolved"


class EntitySettings(BaseModel):
    """``entity:`` of a source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    static: dict[str, str] = Field(default_factory=dict, description="Subject key -> Cortex tag.")
    template: str | None = Field(None, description="Tag template, e.g. '{repository.name}'.")
    lowercase: bool = Field(False, description="Lowercase the tag the template produced.")
    lookup: bool = Field(True, description="Look the repository up in the Cortex catalog.")

    @field_validator("static")
    @classmethod
    def _tags_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag in value.items():
            if not is_tag(tag):
                raise ValueError(f"{key!r} maps to {tag!r}, which is not a Cortex tag")
        return {key.strip().lower(): tag for key, tag in value.items()}

    @field_validator("template")
    @classmethod
    def _template_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        found = _PLACEHOLDER.findall(value)
        if not found:
            raise ValueError("template needs at least one {expression} placeholder")
        for expression in found:
            check_expression(expression, label=f"placeholder {{{expression}}}")
        return value


@dataclass(frozen=True)
class Subject:
    """What an input is about, as an adapter sees it.

    ``keys`` are looked up in the static map (most specific first); ``document`` is what
    templates are evaluated against; ``repository`` (``org/repo``) is looked up in the catalog.
    """

    keys: tuple[str, ...]
    document: Any = None
    repository: str | None = None


@dataclass(frozen=True)
class Resolution:
    """The tags of a subject, or why there are none (``reason`` is a dead-letter reason)."""

    tags: tuple[str, ...]
    reason: str | None = None
    detail: str = ""
    fallback_tag: str = NO_TAG


Lookup = Callable[[str], Awaitable[list[str]]]


def is_tag(value: str) -> bool:
    """A usable Cortex tag: non-empty, no whitespace, no '/'."""
    return bool(value) and value == value.strip() and "/" not in value and not any(c.isspace() for c in value)


def guess_tag(subject: Subject) -> str:
    """A best-guess tag for a dead letter: the last path segment of the subject key."""
    for key in (*subject.keys, subject.repository or ""):
        last = key.rstrip("/").rsplit("/", 1)[-1]
        cleaned = _TAG_UNSAFE.sub("-", last).strip("-")
        if cleaned:
            return cleaned
    return NO_TAG


class EntityResolver:
    """Resolves subjects of one source; ``lookup`` is the core's cached catalog lookup (or None)."""

    def __init__(self, settings: EntitySettings, lookup: Lookup | None) -> None:
        self.settings = settings
        self.lookup = lookup if settings.lookup else None

    def render_template(self, document: Any) -> str | None:
        """The template's tag for ``document``, or ``None`` if a placeholder yields nothing."""
        template = self.settings.template
        if template is None:
            return None
        missing = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal missing
            value = search(match.group(1), document)
            if value is None or isinstance(value, dict | list) or value == "":
                missing = True
                return ""
            return str(value).lower() if isinstance(value, bool) else str(value)

        rendered = _PLACEHOLDER.sub(substitute, template)
        if missing:
            return None
        if self.settings.lowercase:
            rendered = rendered.lower()
        return rendered if is_tag(rendered) else None

    async def resolve(self, subject: Subject) -> Resolution:
        """Static map, then template, then catalog lookup; the first that yields tags wins."""
        steps: list[str] = []
        for key in subject.keys:
            tag = self.settings.static.get(key.strip().lower())
            if tag is not None:
                return Resolution((tag,))
        steps.append(f"no static entry for {', '.join(subject.keys) or '(no key)'}")
        rendered = self.render_template(subject.document)
        if rendered is not None:
            return Resolution((rendered,))
        steps.append("no template" if self.settings.template is None else "template yielded no tag")
        fallback = guess_tag(subject)
        if self.lookup is not None and subject.repository:
            try:
                tags = await self.lookup(subject.repository)
            except Exception as exc:
                return Resolution((), LOOKUP_FAILED, f"catalog lookup of {subject.repository} failed: {exc}",
                                  fallback)
            usable = tuple(sorted({t for t in tags if is_tag(t)}))
            if usable:
                return Resolution(usable)
            steps.append(f"no catalog entity has git repository {subject.repository}")
        elif subject.repository is None:
            steps.append("input names no git repository")
        elif not self.settings.lookup:
            steps.append("catalog lookup disabled (entity.lookup: false)")
        else:
            steps.append("no Cortex catalog to look up")
        return Resolution((), UNRESOLVED, "; ".join(steps), fallback)

