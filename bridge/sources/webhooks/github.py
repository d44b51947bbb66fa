"""GitHub repository/organization webhooks (``type: github``).

Signed with ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>``; redeliveries keep
their ``X-GitHub-Delivery`` GUID. Mapped events:

* ``deployment_status``: ``success`` -> deploy (type ROLLBACK when a ``rollback_when`` expression
  holds); ``failure``/``error`` -> event ``DEPLOY_FAILED``; other states are ignored.
* ``workflow_run`` ``completed``: for ``deploy_workflows``, success -> deploy, failure -> event
  ``DEPLOY_FAILED``; for every workflow, a duration point of ``workflow_duration_metric`` if set.
* ``release`` ``published`` -> event ``RELEASE``. ``ping`` -> 202. Everything else: ignored.
* lineage (:mod:`bridge.sources.lineage`), stored, no records: ``registry_package`` ``published``
  (the image, by digest and tag, was built from the commit of its OCI revision label, or of
  ``target_commitish`` when that is a sha); commit times of ``push`` (every commit) and of
  ``workflow_run`` (``head_commit``).

One deploy per deployment: a job with ``environment:`` makes GitHub create a deployment whose
``deployment_status`` payloads carry the ``workflow_run`` that created it. Both paths therefore
key deploys (and failure events) by *(repository, run id, run attempt, environment)* when a run is
known, and by *(repository, deployment id, environment)* otherwise. A deploy workflow whose
``environment`` matches the job's environment yields the same record id from ``workflow_run`` and
from ``deployment_status``, and the queue stores it once, whichever arrives first.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.expressions import check_expression, search
from bridge.sources.lineage import OCI_REVISION, Built, Fact, commit_facts
from bridge.sources.payload import Headers, dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, HmacScheme
from bridge.sources.webhooks.adapter import MetricKey, WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

SIGNATURE = HmacScheme(header="X-Hub-Signature-256", prefix="sha256=")
_RUN_FAILED = frozenset({"failure", "timed_out", "startup_failure"})


class DeployWorkflow(BaseModel):
    """A workflow whose runs are deploys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: str = Field(min_length=1, description="File name (deploy.yml), path, or workflow name.")
    environment: str | None = Field(
        None, description="Environment it deploys to; match the job's `environment:` to correlate."
    )


class GitHubSettings(WebhookSettings):
    """``type: github``."""

    type: Literal["github"]
    deploy_workflows: list[DeployWorkflow] = Field(default_factory=list)
    workflow_duration_metric: MetricKey | None = Field(None, description="Metric key for run durations.")
    rollback_when: list[str] = Field(
        default_factory=list, description="JMESPath expressions over the payload; any true -> ROLLBACK."
    )
    failure_event_type: str = Field("DEPLOY_FAILED", min_length=1)

    @field_validator("rollback_when")
    @classmethod
    def _expressions_valid(cls, value: list[str]) -> list[str]:
        return [check_expression(expression) for expression in value]


class GitHubAdapter(WebhookAdapter[GitHubSettings]):
    """Maps GitHub webhook payloads to drafts."""

    def scheme(self) -> AuthScheme:
        return SIGNATURE

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        return headers.get("X-GitHub-Delivery") or None

    async def map(self, delivery: Delivery) -> list[Draft]:
        event = delivery.headers.get("X-GitHub-Event")
        if not event:
            raise UnusablePayload("missing X-GitHub-Event header")
        payload = delivery.payload
        if event == "ping":
            raise MapsToNothing("ping: webhook is configured")
        if not isinstance(payload, dict):
            raise UnusablePayload("payload must be a JSON object")
        if event == "deployment_status":
            return [self._deployment_status(payload)]
        if event == "workflow_run":
            delivery.facts.extend(_committed(dig(payload, "workflow_run", "head_commit")))
            return self._workflow_run(payload)
        if event == "push":
            for commit in [dig(payload, "head_commit"), *(dig(payload, "commits") or [])]:
                delivery.facts.extend(_committed(commit))
            raise MapsToNothing("lineage: push commit times kept")
        if event == "registry_package":
            delivery.facts.extend(package_facts(payload))
            raise MapsToNothing(f"lineage: registry_package {dig(payload, 'action')}")
        if event == "release":
            return [self._release(payload)]
        raise MapsToNothing(f"event-not-mapped: {event}")

    # -- deployment_status --------------------------------------------------------------------

    def _deployment_status(self, payload: dict[str, Any]) -> Draft:
        repo, subject = _subject(payload)
        status, deployment = dig(payload, "deployment_status"), dig(payload, "deployment")
        state = text(dig(status, "state"))
        environment = text(dig(status, "environment")) or text(dig(deployment, "environment"))
        deployment_id = dig(deployment, "id")
        if state not in ("success", "failure", "error"):
            raise MapsToNothing(f"state-not-mapped: deployment_status {state}")
        if deployment_id is None:
            raise UnusablePayload("deployment_status payload has no deployment.id")
        key = _correlation(payload, deployment_id, environment)
        sha = text(dig(deployment, "sha"))
        url = (text(dig(status, "environment_url")) or text(dig(status, "target_url"))
               or text(dig(status, "log_url")) or _deployments_page(payload))
        timestamp = first_timestamp(dig(status, "created_at"), dig(status, "updated_at"))
        custom = {"repository": repo, "deploymentId": deployment_id, "ref": text(dig(deployment, "ref")),
                  "task": text(dig(deployment, "task")), "workflowRunId": dig(payload, "workflow_run", "id")}
        custom = {k: v for k, v in custom.items() if v is not None}
        if state == "success":
            creator = text(dig(deployment, "creator", "login")) or text(dig(status, "creator", "login"))
            fields = {
                "title": text(dig(deployment, "description")) or f"Deploy {_short(sha)} to {environment or 'default'}",
                "timestamp": timestamp, "type": self._deploy_type(payload), "sha": sha,
                "environment": environment, "url": url,
                "deployer": {"name": creator} if creator else None, "custom_data": custom,
            }
            return Draft("deploy", record_id("github", "deploy", repo, *key), fields, subject)
        fields = {
            "type": self.settings.failure_event_type,
            "title": f"Deploy of {_short(sha)} to {environment or 'default'} {'failed' if state == 'failure' else 'errored'}",
            "description": text(dig(status, "description")), "timestamp": timestamp, "url": url,
            "custom_data": {**custom, "state": state, "sha": sha, "environment": environment},
        }
        return Draft("event", record_id("github", "deploy-failed", repo, *key), fields, subject)

    # -- workflow_run -------------------------------------------------------------------------

    def _workflow_run(self, payload: dict[str, Any]) -> list[Draft]:
        action = dig(payload, "action")
        if action != "completed":
            raise MapsToNothing(f"action-not-mapped: workflow_run {action}")
        repo, subject = _subject(payload)
        run = dig(payload, "workflow_run")
        run_id, attempt = dig(run, "id"), dig(run, "run_attempt") or 1
        if run_id is None:
            raise UnusablePayload("workflow_run payload has no workflow_run.id")
        conclusion = text(dig(run, "conclusion"))
        name = text(dig(payload, "workflow", "name")) or text(dig(run, "name")) or "workflow"
        finished = first_timestamp(dig(run, "updated_at"))
        drafts: list[Draft] = []
        target = self._deploy_workflow(payload)
        if target is not None and (conclusion == "success" or conclusion in _RUN_FAILED):
            drafts.append(self._run_outcome(payload, repo, subject, target, name))
        metric = self.settings.workflow_duration_metric
        started = first_timestamp(dig(run, "run_started_at"), dig(run, "created_at"))
        if metric and started is not None and finished is not None and finished >= started:
            fields = {"key": metric, "timestamp": finished, "value": (finished - started).total_seconds()}
            rid = record_id("github", "workflow-duration", metric, repo, run_id, attempt)
            drafts.append(Draft("metric", rid, fields, subject))
        if not drafts:
            why = "is not a deploy workflow" if target is None else f"concluded {conclusion}"
            raise MapsToNothing(f"workflow-not-mapped: workflow {name!r} {why}")
        return drafts

    def _run_outcome(self, payload: dict[str, Any], repo: str, subject: Subject, target: DeployWorkflow,
                     name: str) -> Draft:
        run = dig(payload, "workflow_run")
        run_id, attempt = dig(run, "id"), dig(run, "run_attempt") or 1
        key = ("run", run_id, attempt, target.environment)
        sha, env = text(dig(run, "head_sha")), target.environment or "default"
        label = f"{name} #{dig(run, 'run_number')}"
        custom = {"repository": repo, "workflow": name, "workflowRunId": run_id, "runAttempt": attempt,
                  "ref": text(dig(run, "head_branch"))}
        custom = {k: v for k, v in custom.items() if v is not None}
        finished = first_timestamp(dig(run, "updated_at"))
        conclusion = text(dig(run, "conclusion"))
        if conclusion == "success":
            actor = text(dig(run, "triggering_actor", "login")) or text(dig(run, "actor", "login"))
            fields = {
                "title": f"Deploy {_short(sha)} to {env} ({label})", "timestamp": finished,
                "type": self._deploy_type(payload), "sha": sha, "environment": target.environment,
                "url": text(dig(run, "html_url")), "deployer": {"name": actor} if actor else None,
                "custom_data": custom,
            }
            return Draft("deploy", record_id("github", "deploy", repo, *key), fields, subject)
        fields = {
            "type": self.settings.failure_event_type,
            "title": f"Deploy of {_short(sha)} to {env} failed ({label})", "timestamp": finished,
            "url": text(dig(run, "html_url")),
            "custom_data": {**custom, "conclusion": conclusion, "sha": sha, "environment": target.environment},
        }
        return Draft("event", record_id("github", "deploy-failed", repo, *key), fields, subject)

    def _deploy_workflow(self, payload: dict[str, Any]) -> DeployWorkflow | None:
        run, workflow = dig(payload, "workflow_run"), dig(payload, "workflow")
        names = set()
        for value in (dig(run, "path"), dig(workflow, "path"), dig(run, "name"), dig(workflow, "name")):
            if text(value):
                name = str(value).split("@", 1)[0].strip().lower()
                names.update({name, name.rsplit("/", 1)[-1]})
        for candidate in self.settings.deploy_workflows:
            if candidate.workflow.strip().lower() in names:
                return candidate
        return None

    # -- release ------------------------------------------------------------------------------

    def _release(self, payload: dict[str, Any]) -> Draft:
        action = dig(payload, "action")
        if action != "published":
            raise MapsToNothing(f"action-not-mapped: release {action}")
        repo, subject = _subject(payload)
        release = dig(payload, "release")
        tag = text(dig(release, "tag_name"))
        release_id = dig(release, "id")
        if release_id is None or tag is None:
            raise UnusablePayload("release payload has no release.id or release.tag_name")
        fields = {
            "type": "RELEASE",
            "title": f"Released {text(dig(release, 'name')) or tag}",
            "description": text(dig(release, "body")),
            "timestamp": first_timestamp(dig(release, "published_at"), dig(release, "created_at")),
            "url": text(dig(release, "html_url")),
            "custom_data": {"repository": repo, "tag": tag, "prerelease": bool(dig(release, "prerelease")),
                            "targetCommitish": text(dig(release, "target_commitish"))},
        }
        return Draft("event", record_id("github", "release", repo, release_id), fields, subject)

    def _deploy_type(self, payload: dict[str, Any]) -> str:
        return "ROLLBACK" if any(search(e, payload) for e in self.settings.rollback_when) else "DEPLOY"


def _subject(payload: dict[str, Any]) -> tuple[str, Subject]:
    repo = text(dig(payload, "repository", "full_name"))
    if repo is None:
        raise UnusablePayload("payload has no repository.full_name")
    return repo, Subject(keys=(repo,), document=payload, repository=repo)


def _correlation(payload: dict[str, Any], deployment_id: Any, environment: str | None) -> tuple[Any, ...]:
    run_id = dig(payload, "workflow_run", "id")
    if run_id is not None:
        return ("run", run_id, dig(payload, "workflow_run", "run_attempt") or 1, environment)
    return ("deployment", deployment_id, environment)


def _committed(commit: Any) -> list[Fact]:
    return commit_facts(dig(commit, "id"), dig(commit, "timestamp"))


def package_facts(payload: dict[str, Any]) -> list[Fact]:
    """What a published container package says: its image (by digest, and by tag) and its commit."""
    version = dig(payload, "registry_package", "package_version")
    container = dig(version, "container_metadata")
    if dig(payload, "action") != "published" or not isinstance(container, dict):
        return []
    labels = dig(container, "labels")
    all_labels = dig(labels, "all_labels") if isinstance(dig(labels, "all_labels"), dict) else {}
    # The OCI revision label is the commit the image was built from; target_commitish is often a
    # branch ("master"), used only when it is a sha (the lineage store checks).
    shas = [text(dig(labels, "revision")), text(all_labels.get(OCI_REVISION)), text(dig(version, "target_commitish"))]
    sha = next((s for s in shas if s and len(s) >= 7 and all(c in "0123456789abcdefABCDEF" for c in s)), None)
    name = (text(dig(version, "package_url")) or "").rstrip(":")
    if sha is None or not name:
        return []
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    digest = text(dig(container, "manifest", "digest")) or text(dig(container, "tag", "digest"))
    tag = text(dig(container, "tag", "name"))
    images = [f"{name}@{digest}" if digest else None, f"{name}:{tag}" if tag else None]
    return [Built(image, sha) for image in images if image]


def _deployments_page(payload: dict[str, Any]) -> str | None:
    html = text(dig(payload, "repository", "html_url"))
    return f"{html}/deployments" if html else None


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "unknown revision"


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``github``."""
    return WebhookSource(GitHubAdapter(parse_settings(GitHubSettings, config)), ctx)
