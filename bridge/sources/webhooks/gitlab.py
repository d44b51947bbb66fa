"""GitLab project/group webhooks (``type: gitlab``).

GitLab sends its secret token in clear in ``X-Gitlab-Token`` (compared in constant time) and keeps
``Idempotency-Key`` (older versions: ``X-Gitlab-Event-UUID``) across retries. Mapped hooks:

* Deployment Hook: ``success`` -> deploy; ``failed`` -> event ``DEPLOY_FAILED``.
* Pipeline Hook: ``failed`` -> event ``PIPELINE_FAILED``; finished pipelines (success, failed)
  -> a point of ``pipeline_duration_metric`` if set.
* Job Hook: ``failed`` (unless ``allow_failure``) -> event ``JOB_FAILED`` if ``job_failure_events``;
  finished jobs -> a point of ``job_duration_metric`` if set.
* Release Hook ``create`` -> event ``RELEASE``. Other hooks and states: ignored.

Records are keyed by project path and GitLab's ids (deployment, pipeline, job, release), so the
same hook delivered twice, or once per status change, stores each record once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.gitrefs import repository_from_url
from bridge.sources.lineage import commit_facts
from bridge.sources.payload import Headers, dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import MetricKey, WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

TOKEN = TokenScheme(header="X-Gitlab-Token")
_FINISHED = frozenset({"success", "failed"})
_KINDS = {"Deployment Hook": "deployment", "Pipeline Hook": "pipeline", "Job Hook": "build",
          "Release Hook": "release"}


class GitLabSettings(WebhookSettings):
    """``type: gitlab``."""

    type: Literal["gitlab"]
    pipeline_duration_metric: MetricKey | None = Field(None, description="Metric key for pipeline durations.")
    job_duration_metric: MetricKey | None = Field(None, description="Metric key for job durations.")
    job_failure_events: bool = Field(True, description="A failed job (not allowed to fail) -> JOB_FAILED.")


class GitLabAdapter(WebhookAdapter[GitLabSettings]):
    """Maps GitLab webhook payloads to drafts."""

    def scheme(self) -> AuthScheme:
        return TOKEN

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        return headers.get("Idempotency-Key") or headers.get("X-Gitlab-Event-UUID") or None

    async def map(self, delivery: Delivery) -> list[Draft]:
        payload = delivery.payload
        if not isinstance(payload, dict):
            raise UnusablePayload("payload must be a JSON object")
        event = delivery.headers.get("X-Gitlab-Event")
        kind = _KINDS.get(event) if event else text(payload.get("object_kind"))
        if kind not in _KINDS.values() or kind != payload.get("object_kind"):
            raise MapsToNothing(f"event-not-mapped: {event or payload.get('object_kind')}")
        if kind == "deployment":
            return [self._deployment(payload)]
        if kind == "pipeline":
            # The pipeline's commit and when it was made: lead time of the deploys of that sha.
            delivery.facts.extend(commit_facts(dig(payload, "commit", "id"), dig(payload, "commit", "timestamp")))
            return self._pipeline(payload)
        if kind == "build":
            return self._job(payload)
        return [self._release(payload)]

    def _deployment(self, payload: dict[str, Any]) -> Draft:
        status = text(payload.get("status"))
        if status not in ("success", "failed"):
            raise MapsToNothing(f"state-not-mapped: deployment {status}")
        project, subject = _project(payload)
        deployment_id, environment = payload.get("deployment_id"), text(payload.get("environment"))
        if deployment_id is None:
            raise UnusablePayload("deployment payload has no deployment_id")
        sha = _full_sha(payload)
        key = (project, deployment_id, environment)
        custom = {"project": project, "deploymentId": deployment_id, "ref": text(payload.get("ref")),
                  "tier": text(payload.get("environment_tier"))}
        custom = {k: v for k, v in custom.items() if v is not None}
        timestamp = first_timestamp(payload.get("status_changed_at"))
        if status == "success":
            user = dig(payload, "user")
            name, email = text(dig(user, "name")) or text(dig(user, "username")), text(dig(user, "email"))
            fields = {
                "title": text(payload.get("commit_title")) or f"Deploy {_short(sha)} to {environment}",
                "timestamp": timestamp, "sha": sha, "environment": environment,
                "url": text(payload.get("deployable_url")) or text(payload.get("environment_external_url")),
                "deployer": {"name": name, "email": email} if name or email else None, "custom_data": custom,
            }
            return Draft("deploy", record_id("gitlab", "deploy", *key), fields, subject)
        fields = {
            "type": "DEPLOY_FAILED", "title": f"Deploy of {_short(sha)} to {environment} failed",
            "timestamp": timestamp, "url": text(payload.get("deployable_url")),
            "custom_data": {**custom, "sha": sha, "environment": environment},
        }
        return Draft("event", record_id("gitlab", "deploy-failed", *key), fields, subject)

    def _pipeline(self, payload: dict[str, Any]) -> list[Draft]:
        attrs = dig(payload, "object_attributes")
        status, pipeline_id = text(dig(attrs, "status")), dig(attrs, "id")
        if status not in _FINISHED:
            raise MapsToNothing(f"state-not-mapped: pipeline {status}")
        if pipeline_id is None:
            raise UnusablePayload("pipeline payload has no object_attributes.id")
        project, subject = _project(payload)
        finished = first_timestamp(dig(attrs, "finished_at"))
        drafts: list[Draft] = []
        if status == "failed":
            fields: dict[str, Any] = {
                "type": "PIPELINE_FAILED",
                "title": f"Pipeline #{dig(attrs, 'iid') or pipeline_id} failed on {text(dig(attrs, 'ref'))}",
                "timestamp": finished, "url": text(dig(attrs, "url")),
                "custom_data": {"project": project, "pipelineId": pipeline_id, "sha": text(dig(attrs, "sha")),
                                "ref": text(dig(attrs, "ref")), "source": text(dig(attrs, "source"))},
            }
            drafts.append(Draft("event", record_id("gitlab", "pipeline-failed", project, pipeline_id), fields,
                                subject))
        duration = dig(attrs, "duration")
        metric = self.settings.pipeline_duration_metric
        if metric and isinstance(duration, int | float) and not isinstance(duration, bool):
            fields = {"key": metric, "timestamp": finished, "value": float(duration)}
            rid = record_id("gitlab", "pipeline-duration", metric, project, pipeline_id)
            drafts.append(Draft("metric", rid, fields, subject))
        if not drafts:
            raise MapsToNothing(f"state-not-mapped: pipeline {status} (no duration metric configured)")
        return drafts

    def _job(self, payload: dict[str, Any]) -> list[Draft]:
        status, job_id = text(payload.get("build_status")), payload.get("build_id")
        if status not in _FINISHED:
            raise MapsToNothing(f"state-not-mapped: job {status}")
        if job_id is None:
            raise UnusablePayload("job payload has no build_id")
        project, subject = _project(payload)
        finished = first_timestamp(payload.get("build_finished_at"))
        name = text(payload.get("build_name")) or str(job_id)
        drafts: list[Draft] = []
        if status == "failed" and self.settings.job_failure_events and not payload.get("build_allow_failure"):
            fields: dict[str, Any] = {
                "type": "JOB_FAILED", "title": f"Job {name} failed ({text(payload.get('build_stage'))})",
                "description": text(payload.get("build_failure_reason")), "timestamp": finished,
                "custom_data": {"project": project, "jobId": job_id, "pipelineId": payload.get("pipeline_id"),
                                "sha": text(payload.get("sha")), "ref": text(payload.get("ref"))},
            }
            drafts.append(Draft("event", record_id("gitlab", "job-failed", project, job_id), fields, subject))
        duration = payload.get("build_duration")
        metric = self.settings.job_duration_metric
        if metric and isinstance(duration, int | float) and not isinstance(duration, bool):
            fields = {"key": metric, "timestamp": finished, "value": float(duration)}
            drafts.append(Draft("metric", record_id("gitlab", "job-duration", metric, project, job_id), fields,
                                subject))
        if not drafts:
            raise MapsToNothing(f"state-not-mapped: job {status} (no failure event or duration metric applies)")
        return drafts

    def _release(self, payload: dict[str, Any]) -> Draft:
        action = text(payload.get("action"))
        if action != "create":
            raise MapsToNothing(f"action-not-mapped: release {action}")
        project, subject = _project(payload)
        tag = text(payload.get("tag"))
        if tag is None:
            raise UnusablePayload("release payload has no tag")
        fields = {
            "type": "RELEASE", "title": f"Released {text(payload.get('name')) or tag}",
            "description": text(payload.get("description")),
            "timestamp": first_timestamp(payload.get("released_at"), payload.get("created_at")),
            "url": text(payload.get("url")),
            "custom_data": {"project": project, "tag": tag, "sha": text(dig(payload, "commit", "id"))},
        }
        return Draft("event", record_id("gitlab", "release", project, payload.get("id") or tag), fields, subject)


def _project(payload: dict[str, Any]) -> tuple[str, Subject]:
    # Job hooks carry no project object, only the repository's homepage URL.
    path = text(dig(payload, "project", "path_with_namespace")) or repository_from_url(
        text(dig(payload, "repository", "homepage")) or text(dig(payload, "repository", "git_http_url"))
    )
    if path is None:
        raise UnusablePayload("payload names no project (project.path_with_namespace or repository.homepage)")
    return path, Subject(keys=(path,), document=payload, repository=path)


def _full_sha(payload: dict[str, Any]) -> str | None:
    # Deployment hooks carry the short sha; the commit URL ends with the full one.
    short = text(payload.get("short_sha"))
    url = text(payload.get("commit_url"))
    tail = url.rstrip("/").rsplit("/", 1)[-1] if url else None
    if tail and short and tail.startswith(short):
        return tail
    return short


def _short(sha: str | None) -> str:
    return sha[:8] if sha else "unknown revision"


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``gitlab``."""
    return WebhookSource(GitLabAdapter(parse_settings(GitLabSettings, config)), ctx)
