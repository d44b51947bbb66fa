"""Jenkins Notification plugin, JSON format (``type: jenkins``).

The plugin cannot sign. Give it a URL with credentials (``https://bridge:<token>@host/webhooks/x``,
sent as HTTP Basic) or a bearer token; the token is the Basic password or the bearer value.
It posts each build's phases (``QUEUED``, ``STARTED``, ``COMPLETED``, ``FINALIZED``); the finished
phases map, both to the same record ids:

* a job listed in ``deploy_jobs``: ``SUCCESS`` -> deploy (sha from ``build.scm.commit``),
  ``FAILURE`` -> event ``DEPLOY_FAILED``;
* any other job: ``FAILURE`` -> event ``BUILD_FAILED`` when ``build_failure_events``;
* any job with ``build.duration``: a point of ``build_duration_metric`` when set.
"""

from __future__ import annotations

from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.gitrefs import repository_from_url
from bridge.sources.payload import dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import MetricKey, WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

_FINISHED_PHASES = frozenset({"COMPLETED", "FINALIZED"})


class DeployJob(BaseModel):
    """Jobs whose builds are deploys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str = Field(min_length=1, description="Job name or full path; shell-style wildcards allowed.")
    environment: str | None = None


class JenkinsSettings(WebhookSettings):
    """``type: jenkins``."""

    type: Literal["jenkins"]
    token_header: str = Field("Authorization", description="Header with the token (Bearer/Basic or raw).")
    deploy_jobs: list[DeployJob] = Field(default_factory=list)
    build_duration_metric: MetricKey | None = None
    build_failure_events: bool = True


class JenkinsAdapter(WebhookAdapter[JenkinsSettings]):
    """Maps Notification plugin payloads to drafts."""

    def scheme(self) -> AuthScheme:
        return TokenScheme(header=self.settings.token_header)

    async def map(self, delivery: Delivery) -> list[Draft]:
        payload = delivery.payload
        name, build = text(dig(payload, "name")), dig(payload, "build")
        number = dig(build, "number")
        if name is None or not isinstance(build, dict) or number is None:
            raise UnusablePayload("payload must have name, build and build.number (Notification plugin JSON)")
        phase, status = text(build.get("phase")), text(build.get("status"))
        if phase not in _FINISHED_PHASES:
            raise MapsToNothing(f"phase-not-mapped: {phase}")
        path = _job_path(text(dig(payload, "url")), name)
        repo = repository_from_url(text(dig(build, "scm", "url")))
        subject = Subject(keys=(path, name) if path != name else (name,), document=payload, repository=repo)
        # Job paths repeat across Jenkins servers; the server URL keeps ids apart.
        key = (_server(text(build.get("full_url"))) or delivery.source, path, number)
        started = first_timestamp(build.get("timestamp"))
        duration = _milliseconds(build.get("duration"))
        finished = started + timedelta(milliseconds=duration) if started and duration is not None else None
        sha, url = text(dig(build, "scm", "commit")), text(build.get("full_url"))
        custom = {"job": path, "build": number, "status": status, "branch": text(dig(build, "scm", "branch"))}
        custom = {k: v for k, v in custom.items() if v is not None}
        drafts: list[Draft] = []
        target = self._deploy_job(path, name)
        label = f"{path} #{number}"
        if target is not None and status == "SUCCESS":
            fields: dict[str, Any] = {"title": f"Deploy {label}", "timestamp": finished, "sha": sha,
                      "environment": target.environment, "url": url, "custom_data": custom}
            drafts.append(Draft("deploy", record_id("jenkins", "deploy", *key), fields, subject))
        elif status == "FAILURE" and (target is not None or self.settings.build_failure_events):
            kind = "DEPLOY_FAILED" if target is not None else "BUILD_FAILED"
            fields = {"type": kind, "title": f"{label} failed", "timestamp": finished, "url": url,
                      "custom_data": {**custom, "sha": sha,
                                      "environment": target.environment if target else None}}
            drafts.append(Draft("event", record_id("jenkins", kind.lower(), *key), fields, subject))
        metric = self.settings.build_duration_metric
        if metric and duration is not None:
            fields = {"key": metric, "timestamp": finished, "value": duration / 1000}
            drafts.append(Draft("metric", record_id("jenkins", "duration", metric, *key), fields, subject))
        if not drafts:
            raise MapsToNothing(f"build-not-mapped: {label} {status} (not a deploy job, no failure, no duration)")
        return drafts

    def _deploy_job(self, path: str, name: str) -> DeployJob | None:
        for candidate in self.settings.deploy_jobs:
            if fnmatchcase(path, candidate.job) or fnmatchcase(name, candidate.job):
                return candidate
        return None


def _milliseconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _job_path(url: str | None, name: str) -> str:
    # "job/folder/job/app/" -> "folder/app": the full name, unique on one server.
    if not url:
        return name
    parts = [p for p in url.strip("/").split("/") if p]
    names = [parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "job"]
    return "/".join(names) or name


def _server(full_url: str | None) -> str | None:
    if not full_url or "/job/" not in full_url:
        return None
    return full_url.split("/job/", 1)[0]


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``jenkins``."""
    return WebhookSource(JenkinsAdapter(parse_settings(JenkinsSettings, config)), ctx)
