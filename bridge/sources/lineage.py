"""Commit lineage: which commit an image was built from, when a commit was made, and lead time.

CI already says which commit an image was built from (GitHub ``registry_package``, CDEvents
``artifact.published``/``build.finished``, the OCI ``org.opencontainers.image.revision``
annotation) and when a commit was made (``push``, ``workflow_run`` ``head_commit``, a GitLab
pipeline's ``commit``). Adapters report these as :class:`Built` and :class:`Committed` facts; a
:class:`Lineage` keeps them in the queue's source state under ``lineage/`` (durable, shared by all
sources of a bridge, readable after a restart) and uses them on deploy records:

* a deploy without a sha whose ``customData.images`` names a known image (by digest first, then by
  full reference) gets the sha it was built from;
* a ``DEPLOY`` whose sha has a known commit time gets a lead-time metric point (commit -> deploy,
  seconds). Its record id is derived from (metric, entity, environment, sha), so the same deploy
  reported by several sources, or again, is stored once by the queue's record-id dedupe.

Facts are idempotent (learning one twice writes the same value), so they may be written ahead of
the records of the same input. The map is bounded: entries older than ``retention_days`` are
forgotten, and beyond ``max_entries`` the oldest go first.

Image references are parsed here and nowhere else (:func:`parse_image`, :func:`split_image`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ConfigDict, Field

from bridge.queue.enrichment import EnrichableGroups, enrichment_report
from bridge.records import DeployRecord, MetricRecord, Record, record_id, utc_now
from bridge.sources.gitrefs import sha_from_revision
from bridge.sources.payload import first_timestamp

#: A Cortex custom metric key (what ``MetricRecord.key`` accepts).
MetricKey = Annotated[str, Field(min_length=2, max_length=255, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")]

PREFIX = "lineage/"
_IMAGE = PREFIX + "image/"
_COMMIT = PREFIX + "commit/"
#: Longer references are not images anyone deploys; refusing them keeps state keys small.
MAX_REFERENCE_CHARS = 512
#: The OCI annotation (and image label) naming the commit an image was built from.
OCI_REVISION = "org.opencontainers.image.revision"
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{16,}$")
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY = re.compile(r"^(?:localhost|[A-Za-z0-9.-]*[.:][A-Za-z0-9.:-]*|\[[0-9a-fA-F:]+\](?::[0-9]+)?)$")


class LineageSettings(BaseModel):
    """``lineage:`` of a source: how long learned lineage is kept, and the lead-time metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retention_days: int = Field(30, ge=1, le=3650, description="Forget image -> commit and commit times older than this.")
    max_entries: int = Field(10000, ge=1, description="Most lineage entries kept (the oldest are forgotten first).")
    lead_time_metric: MetricKey | None = Field(
        None, description="Metric key of lead-time points (commit -> deploy, seconds); unset: none are emitted."
    )


@dataclass(frozen=True)
class Built:
    """An image (reference or ``pkg:oci``/``pkg:docker`` purl) was built from commit ``sha``."""

    image: str
    sha: str


@dataclass(frozen=True)
class Committed:
    """Commit ``sha`` was made at ``time``."""

    sha: str
    time: datetime


Fact = Built | Committed


def commit_facts(sha: object, when: object) -> list[Fact]:
    """``[Committed(sha, when)]`` when both are given as a payload writes them, else ``[]``."""
    at = first_timestamp(when)
    return [Committed(sha.strip(), at)] if isinstance(sha, str) and sha.strip() and at is not None else []


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: normalized repository name, tag, digest."""

    name: str
    tag: str | None
    digest: str | None

    def lookup_keys(self) -> list[str]:
        """Lineage keys, most specific first: the digest (any registry), then the full reference."""
        found = [f"digest:{self.digest}"] if self.digest else []
        if self.tag:
            found.append(f"ref:{self.name}:{self.tag}")
        return found


def split_image(image: str) -> tuple[str, str | None]:
    """(name, tag) of an image reference as written; the tag is None when only a digest (or nothing) is given."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return name[: len(name) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
    return name, None


def parse_image(reference: object) -> ImageRef | None:
    """An image reference (``nginx``, ``ghcr.io/org/app:1.2@sha256:…``) or OCI/Docker purl, normalized;
    ``None`` when it is not one. Docker Hub names get ``docker.io/`` (and ``library/``), a
    reference with neither tag nor digest means ``latest``, as ``docker pull`` reads it."""
    if not isinstance(reference, str):
        return None
    text = reference.strip()
    if not text or len(text) > MAX_REFERENCE_CHARS or any(c.isspace() for c in text):
        return None
    if text.startswith("pkg:"):
        return _parse_purl(text)
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            return None
        digest = digest.lower()
    name, tag = split_image(text)
    if tag is not None and not _TAG.match(tag):
        return None
    return _normalized(name, tag or (None if digest else "latest"), digest)


def _normalized(name: str, tag: str | None, digest: str | None) -> ImageRef | None:
    parts = name.split("/")
    if len(parts) > 1 and _REGISTRY.match(parts[0]):
        registry, path = parts[0].lower(), "/".join(parts[1:])
    else:
        registry, path = "docker.io", name
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
        path = path if "/" in path else f"library/{path}"
    path = path.lower()
    if not _NAME.match(path):
        return None
    return ImageRef(f"{registry}/{path}", tag or None, digest)


def _parse_purl(purl: str) -> ImageRef | None:
    # pkg:oci/myapp@sha256%3A0b31…?repository_url=ghcr.io/org/myapp&tag=v1 (purl-spec, type oci);
    # pkg:docker/org/app@1.2 (type docker: the version is a tag or a digest).
    body, _, query = purl[4:].partition("?")
    body = body.split("#", 1)[0]
    kind, _, rest = body.partition("/")
    if kind.lower() not in ("oci", "docker") or not rest:
        return None
    path, _, version = rest.partition("@")
    version = unquote(version)
    qualifiers = {k: v[0] for k, v in parse_qs(query).items() if v}
    digest = version.lower() if _DIGEST.match(version) else None
    tag = qualifiers.get("tag") or (version if version and digest is None else None)
    if tag is not None and not _TAG.match(tag):
        return None
    if kind.lower() == "oci":
        base = qualifiers.get("repository_url") or unquote(path).rsplit("/", 1)[-1]
        name = base.rstrip("/")
    else:
        name = unquote(path)
    return _normalized(name, tag, digest) if name else None


class StateStore(Protocol):
    """The part of the queue's source state lineage uses (:class:`bridge.queue.QueueBackend`)."""

    async def get_state(self, key: str) -> str | None: ...
    async def get_states(self, prefix: str) -> dict[str, str]: ...
    async def put_state(self, updates: dict[str, str]) -> None: ...
    async def forget_state(self, keys: Sequence[str]) -> int: ...


class Lineage:
    """Learned lineage in the queue's source state, and its use on deploy records."""

    def __init__(self, state: StateStore, settings: LineageSettings) -> None:
        self.state = state
        self.settings = settings
        #: entries believed stored (None: not counted yet in this process)
        self._count: int | None = None

    def updates(self, facts: Iterable[Fact], now: datetime | None = None) -> dict[str, str]:
        """The source-state updates recording ``facts`` (for ``append(..., state_updates=...)``)."""
        learned = (now or utc_now()).isoformat()
        out: dict[str, str] = {}
        for fact in facts:
            if isinstance(fact, Built):
                sha = sha_from_revision(fact.sha)
                parsed = parse_image(fact.image)
                if sha is not None and parsed is not None and sha == fact.sha.strip().lower():
                    for key in parsed.lookup_keys():
                        out[_IMAGE + key] = json.dumps({"sha": sha, "learned": learned})
            elif sha_from_revision(fact.sha) == fact.sha.strip().lower() and fact.time.tzinfo is not None:
                out[_COMMIT + fact.sha.strip().lower()] = json.dumps({"time": fact.time.isoformat(),
                                                                       "learned": learned})
        return out

    async def learn(self, facts: Sequence[Fact]) -> None:
        """Store ``facts`` (one transaction), keep the map within its bounds, and give the sha to
        image-only deploys already appended within the coalescing window (:meth:`enrich_sent`)."""
        updates = self.updates(facts)
        if updates:
            await self.state.put_state(updates)
            await self.bound(len(updates))
            await self.enrich_sent(updates)

    async def enrich_sent(self, updates: Mapping[str, str]) -> int:
        """Image-only deploy groups (queued or sent) whose image ``updates`` now map to a commit
        get that sha: the queue rekeys the group, so a later CI report of the sha joins it, and
        the deploy is updated by PUT (bridge/queue/enrichment.py). Returns how many were."""
        learned: dict[str, str] = {}
        for key, value in updates.items():
            sha = json.loads(value).get("sha") if key.startswith(_IMAGE) else None
            if isinstance(sha, str):
                learned[key.removeprefix(_IMAGE)] = sha
        if not learned or not isinstance(self.state, EnrichableGroups):
            return 0
        enriched = 0
        for group in await self.state.image_deploy_groups():
            keys: list[str] = []
            for ref in group.images:
                parsed = parse_image(ref)
                keys.extend(parsed.lookup_keys() if parsed is not None else [])
            sha = next((learned[k] for k in keys if k in learned), None)
            if sha is not None and await self.state.enrich_deploy_group(group, enrichment_report(group, sha)):
                enriched += 1
        return enriched

    async def bound(self, added: int) -> None:
        """Note ``added`` new entries; prune when the map may have outgrown ``max_entries`` (or was never counted)."""
        if self._count is None or self._count + added > self.settings.max_entries:
            self._count = await self.prune()
        else:
            self._count += added

    async def prune(self, now: datetime | None = None) -> int:
        """Forget expired entries and the oldest beyond ``max_entries``; returns how many are kept."""
        cutoff = (now or utc_now()) - timedelta(days=self.settings.retention_days)
        entries = await self.state.get_states(PREFIX)
        aged: list[tuple[datetime, str]] = []
        forget: list[str] = []
        for key, value in entries.items():
            learned = _learned(value)
            if learned is None or learned < cutoff:
                forget.append(key)
            else:
                aged.append((learned, key))
        aged.sort(reverse=True)
        forget.extend(key for _, key in aged[self.settings.max_entries:])
        if forget:
            await self.state.forget_state(forget)
        return min(len(aged), self.settings.max_entries)

    async def sha_of(self, images: Iterable[str], pending: Mapping[str, str] | None = None) -> str | None:
        """The commit the first known image was built from (``pending``: updates not yet stored)."""
        for image in images:
            parsed = parse_image(image)
            for key in parsed.lookup_keys() if parsed else []:
                value = await self._value(_IMAGE + key, pending)
                if value is not None and isinstance(value.get("sha"), str):
                    return str(value["sha"])
        return None

    async def commit_time(self, sha: str, pending: Mapping[str, str] | None = None) -> datetime | None:
        """When commit ``sha`` was made, if some source said so."""
        value = await self._value(_COMMIT + sha.strip().lower(), pending)
        return first_timestamp(value.get("time")) if value is not None else None

    async def _value(self, key: str, pending: Mapping[str, str] | None) -> dict[str, Any] | None:
        raw = (pending or {}).get(key)
        if raw is None:
            raw = await self.state.get_state(key)
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def enrich(self, records: list[Record], facts: Sequence[Fact] = ()) -> list[Record]:
        """``records`` with the sha of image-only deploys filled in, plus their lead-time points."""
        pending = self.updates(facts)
        out: list[Record] = []
        points: list[Record] = []
        for record in records:
            if isinstance(record, DeployRecord):
                record = await self._with_sha(record, pending)
                point = await self._lead_time(record, pending)
                if point is not None:
                    points.append(point)
            out.append(record)
        return out + points

    async def _with_sha(self, record: DeployRecord, pending: Mapping[str, str]) -> DeployRecord:
        images = (record.custom_data or {}).get("images")
        if record.sha or not isinstance(images, dict):
            return record
        sha = await self.sha_of([str(v) for v in images.values()], pending)
        return record if sha is None else record.model_copy(update={"sha": sha})

    async def _lead_time(self, record: DeployRecord, pending: Mapping[str, str]) -> MetricRecord | None:
        metric = self.settings.lead_time_metric
        if metric is None or not record.sha or record.type != "DEPLOY":
            return None
        committed = await self.commit_time(record.sha, pending)
        if committed is None or record.timestamp < committed:
            return None
        # The deploy's identity, not the reporting source's record id: one point per deploy.
        rid = record_id("lead-time", metric, record.entity, record.environment or "", record.sha.lower())
        return MetricRecord(id=rid, entity=record.entity, provenance=record.provenance, key=metric,
                            timestamp=record.timestamp, value=(record.timestamp - committed).total_seconds())


def _learned(value: str) -> datetime | None:
    try:
        document = json.loads(value)
    except ValueError:
        return None
    return first_timestamp(document.get("learned")) if isinstance(document, dict) else None
