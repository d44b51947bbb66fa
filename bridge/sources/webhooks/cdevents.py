"""CDEvents (https://cdevents.dev) carried in CloudEvents, mapped to drafts.

``type`` is ``dev.cdevents.<subject>.<predicate>.<version>``; the event data is the CDEvent
document (``context``, ``subject``, optional ``customData``). Mapped:

* ``service.deployed`` / ``service.upgraded`` -> deploy; ``service.rolledback`` -> deploy ROLLBACK
  (environment: ``subject.content.environment.id``; artifact in customData);
* ``pipelinerun.finished`` -> event ``PIPELINE_<OUTCOME>`` and, when ``pipeline_duration_metric``
  is set, a duration point: ``pipelinerun.started`` stores the start in the queue's source state
  (durable, so a restart between the two keeps the duration);
* ``incident.detected`` -> event ``INCIDENT_DETECTED``;
* lineage (:mod:`bridge.sources.lineage`), no records: ``artifact.packaged``/``artifact.published``
  (``subject.id``, a purl) and ``build.finished`` (``content.artifactId``) were built from
  ``content.change.id`` when that is a commit sha; ``change.merged`` with a sha ``subject.id`` was
  committed at the event's time. The conformance samples carry no commit: nothing is learned.

Entity subject keys: the service (or pipeline) name, then ``subject.id``; templates see the
CloudEvent (attributes and ``data``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from bridge.queue import QueueBackend
from bridge.records import record_id
from bridge.sources.entity import Subject
from bridge.sources.lineage import Built, Fact, commit_facts
from bridge.sources.payload import dig, first_timestamp, text
from bridge.sources.pipeline import Draft, MapsToNothing, UnusablePayload

_TYPE = re.compile(r"^dev\.cdevents\.([a-z]+)\.([a-z]+)\.[0-9][0-9A-Za-z.+-]*$")
_OUTCOMES = {"success": "PIPELINE_SUCCEEDED", "failure": "PIPELINE_FAILED", "error": "PIPELINE_ERRORED",
             "cancel": "PIPELINE_CANCELLED"}


class CDEventsMapper:
    """Maps one CloudEvent whose type is a CDEvents type; keeps pipeline start times durable."""

    def __init__(self, queue: QueueBackend, source_name: str, duration_metric: str | None) -> None:
        self.queue = queue
        self.source_name = source_name
        self.duration_metric = duration_metric

    async def map(self, event: dict[str, Any], data: Any, facts: list[Fact] | None = None) -> list[Draft]:
        """Drafts for ``event``; raises ``MapsToNothing`` for types that map to nothing. What it says
        about images and commits is added to ``facts``."""
        ce_type = event["type"]
        match = _TYPE.match(ce_type)
        if match is None:
            raise MapsToNothing(f"type-not-mapped: {ce_type}")
        if not isinstance(dig(data, "subject"), dict):
            raise UnusablePayload(f"{ce_type}: data must be a CDEvent document with a subject")
        kind = f"{match.group(1)}.{match.group(2)}"
        base = (ce_type, event["source"], event["id"])
        if kind in ("service.deployed", "service.upgraded", "service.rolledback"):
            return [self._deploy(event, data, kind, base)]
        if kind == "pipelinerun.started":
            await self._remember_start(event, data)
            raise MapsToNothing("pipelinerun-started: start time kept for the duration metric")
        if kind == "pipelinerun.finished":
            return await self._pipeline_finished(event, data, base)
        if kind == "incident.detected":
            return [self._incident(event, data, base)]
        if kind in _LINEAGE:
            learned = _lineage(kind, event, data)
            if facts is not None:
                facts.extend(learned)
            raise MapsToNothing(f"lineage: {kind}" + ("" if learned else " (names no commit)"))
        raise MapsToNothing(f"type-not-mapped: {ce_type}")

    def _deploy(self, event: dict[str, Any], data: Any, kind: str, base: tuple[str, ...]) -> Draft:
        content = dig(data, "subject", "content")
        service = text(dig(data, "subject", "id"))
        artifact = text(dig(content, "artifactId"))
        name = _artifact_name(artifact)
        keys = tuple(k for k in (service, name) if k)
        fields = {
            "title": f"{'Rolled back' if kind.endswith('rolledback') else 'Deployed'} {name or service}",
            "timestamp": _time(event, data), "type": "ROLLBACK" if kind.endswith("rolledback") else "DEPLOY",
            "environment": text(dig(content, "environment", "id")),
            "custom_data": _present({"artifactId": artifact, "cdeventType": event["type"],
                                     "cdeventSource": event["source"], "cdeventId": event["id"],
                                     "customData": dig(data, "customData")}),
        }
        return Draft("deploy", record_id("cdevents", "deploy", *base), fields, _subject(keys, event, data))

    async def _pipeline_finished(self, event: dict[str, Any], data: Any, base: tuple[str, ...]) -> list[Draft]:
        content = dig(data, "subject", "content")
        pipeline = text(dig(content, "pipelineName")) or text(dig(data, "subject", "id")) or "pipeline"
        outcome = text(dig(content, "outcome")) or "unknown"
        finished = _time(event, data)
        subject = _subject(tuple(k for k in (pipeline, text(dig(data, "subject", "id"))) if k), event, data)
        fields = {
            "type": _OUTCOMES.get(outcome, "PIPELINE_FINISHED"), "title": f"Pipeline {pipeline}: {outcome}",
            "description": text(dig(content, "errors")), "timestamp": finished,
            "url": text(dig(content, "url")) or text(dig(content, "uri")),
            "custom_data": _present({"pipelineRun": text(dig(data, "subject", "id")), "outcome": outcome,
                                     "cdeventSource": event["source"], "cdeventId": event["id"]}),
        }
        drafts = [Draft("event", record_id("cdevents", "pipelinerun", *base), fields, subject)]
        if self.duration_metric:
            key = self._state_key(event, data)
            started = first_timestamp(await self.queue.get_state(key))
            if started is not None and finished is not None and finished >= started:
                point = {"key": self.duration_metric, "timestamp": finished,
                         "value": (finished - started).total_seconds()}
                drafts.append(Draft("metric", record_id("cdevents", "duration", self.duration_metric, *base),
                                    point, subject))
                await self._forget(key)
        return drafts

    def _incident(self, event: dict[str, Any], data: Any, base: tuple[str, ...]) -> Draft:
        content = dig(data, "subject", "content")
        service = text(dig(content, "service", "id"))
        keys = tuple(k for k in (service, _artifact_name(text(dig(content, "artifactId"))),
                                 text(dig(data, "subject", "id"))) if k)
        fields = {
            "type": "INCIDENT_DETECTED",
            "title": f"Incident {text(dig(data, 'subject', 'id'))}" + (f" on {service}" if service else ""),
            "description": text(dig(content, "description")), "timestamp": _time(event, data),
            "url": text(dig(content, "url")),
            "custom_data": _present({"environment": text(dig(content, "environment", "id")),
                                     "artifactId": text(dig(content, "artifactId")),
                                     "cdeventSource": event["source"], "cdeventId": event["id"],
                                     "customData": dig(data, "customData")}),
        }
        return Draft("event", record_id("cdevents", "incident", *base), fields, _subject(keys, event, data))

    def _state_key(self, event: dict[str, Any], data: Any) -> str:
        origin = text(dig(data, "subject", "source")) or event["source"]
        return f"cdevents:{self.source_name}:pipelinerun:{origin}:{text(dig(data, 'subject', 'id'))}"

    async def _remember_start(self, event: dict[str, Any], data: Any) -> None:
        started = _time(event, data)
        if self.duration_metric and started is not None:
            await self.queue.put_state({self._state_key(event, data): started.isoformat()})

    async def _forget(self, key: str) -> None:
        # The start is only needed until the run finished; without this the state table grows
        # by one row per pipeline run forever.
        await self.queue.forget_state([key])


_LINEAGE = ("artifact.packaged", "artifact.published", "build.finished", "change.merged")


def _lineage(kind: str, event: dict[str, Any], data: Any) -> list[Fact]:
    content = dig(data, "subject", "content")
    if kind == "change.merged":
        return commit_facts(text(dig(data, "subject", "id")), _time(event, data))
    artifact = text(dig(content, "artifactId")) if kind == "build.finished" else text(dig(data, "subject", "id"))
    sha = text(dig(content, "change", "id"))
    # The lineage store keeps only shas: a change id that is a pull-request number teaches nothing.
    return [Built(artifact, sha)] if artifact and sha else []


def _time(event: dict[str, Any], data: Any) -> Any:
    return first_timestamp(dig(data, "context", "timestamp"), event.get("time"))


def _artifact_name(purl: str | None) -> str | None:
    # "pkg:oci/myapp@sha256%3A0b31..." -> "myapp"; "pkg:golang/mygit.com/myorg/myapp@v1" -> "myapp"
    if not purl or not purl.startswith("pkg:"):
        return None
    path = unquote(purl[4:].split("?", 1)[0].split("#", 1)[0].split("@", 1)[0])
    return path.rstrip("/").rsplit("/", 1)[-1] or None


def _subject(keys: tuple[str, ...], event: dict[str, Any], data: Any) -> Subject:
    return Subject(keys=keys, document={**event, "data": data})


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
