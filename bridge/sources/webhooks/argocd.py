"""Argo CD Notifications, webhook service (``type: argocd``).

Argo CD has no fixed webhook payload: the body is whatever a notification template renders. The
bridge expects the template documented in docs/webhooks.md (and shipped in
config/examples/argocd-notifications-cm.yaml): a JSON object built from the Application with

``event`` (``sync-succeeded`` | ``sync-failed`` | ``health-degraded``), ``app``, ``namespace``,
``project``, ``revision``, ``repoURL``, ``destination`` {``server``, ``name``, ``namespace``},
``syncStatus``, ``healthStatus``, ``phase``, ``message``, ``startedAt``, ``finishedAt``,
``healthChangedAt``, ``initiatedBy``, ``url``, ``images`` (``status.summary.images``, optional).

``sync-succeeded`` -> deploy; ``sync-failed`` -> event ``SYNC_FAILED``; ``health-degraded`` ->
event ``HEALTH_DEGRADED``. Argo CD cannot sign; its webhook service sends the bearer token set in
its ``headers`` (or Basic auth). Ids are keyed by application, revision and operation finish time,
so the once-per-revision triggers and Argo CD's retries store each record once.

The images become ``customData.images`` (image name -> reference: Argo CD's summary names no
containers); a deploy whose revision is no commit (a Helm chart version) gets the sha those images
were built from, when the bridge learned it (:mod:`bridge.sources.lineage`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.gitrefs import repository_from_url, sha_from_revision
from bridge.sources.lineage import split_image
from bridge.sources.payload import dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

EVENTS = ("sync-succeeded", "sync-failed", "health-degraded")


class ArgoCDSettings(WebhookSettings):
    """``type: argocd``."""

    type: Literal["argocd"]
    token_header: str = Field("Authorization", description="Header with the token (Bearer/Basic or raw).")
    environment: str | None = Field(
        None, description="Environment of deploys; default: the destination cluster name or server."
    )


class ArgoCDAdapter(WebhookAdapter[ArgoCDSettings]):
    """Maps bodies of the documented notification template to drafts."""

    def scheme(self) -> AuthScheme:
        return TokenScheme(header=self.settings.token_header)

    async def map(self, delivery: Delivery) -> list[Draft]:
        body = delivery.payload
        if not isinstance(body, dict):
            raise UnusablePayload("payload must be a JSON object (see the documented notification template)")
        event, app = text(body.get("event")), text(body.get("app"))
        if event not in EVENTS:
            raise MapsToNothing(f"event-not-mapped: {event}")
        if app is None:
            raise UnusablePayload("payload has no app name (see the documented notification template)")
        namespace = text(body.get("namespace")) or ""
        repo = repository_from_url(text(body.get("repoURL")))
        subject = Subject(keys=(f"{namespace}/{app}", app) if namespace else (app,), document=body,
                          repository=repo)
        revision = text(body.get("revision"))
        destination = body.get("destination") if isinstance(body.get("destination"), dict) else {}
        environment = (self.settings.environment or text(dig(destination, "name"))
                       or text(dig(destination, "server")))
        finished = first_timestamp(body.get("finishedAt"))
        url = text(body.get("url"))
        values = {"application": app, "namespace": namespace or None, "project": text(body.get("project")),
                  "revision": revision, "syncStatus": text(body.get("syncStatus")),
                  "healthStatus": text(body.get("healthStatus")),
                  "destinationNamespace": text(dig(destination, "namespace"))}
        custom: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
        images = _images(body.get("images"))
        if images:
            custom["images"] = images
        # Two Argo CD instances may both have an application "web"; the environment tells them apart.
        instance = environment or delivery.source
        key = (instance, namespace, app, revision, text(body.get("finishedAt")))
        if event == "sync-succeeded":
            initiator = text(body.get("initiatedBy"))
            fields = {
                "title": f"Sync {app} to {(revision or 'unknown revision')[:12]}", "timestamp": finished,
                "sha": sha_from_revision(revision), "environment": environment, "url": url,
                "deployer": {"name": initiator} if initiator else None, "custom_data": custom,
            }
            return [Draft("deploy", record_id("argocd", "deploy", *key), fields, subject)]
        if event == "sync-failed":
            fields = {
                "type": "SYNC_FAILED", "title": f"Sync of {app} failed ({text(body.get('phase'))})",
                "description": text(body.get("message")), "timestamp": finished, "url": url,
                "custom_data": {**custom, "environment": environment},
            }
            return [Draft("event", record_id("argocd", "sync-failed", *key), fields, subject)]
        changed = text(body.get("healthChangedAt"))
        fields = {
            "type": "HEALTH_DEGRADED", "title": f"{app} is degraded",
            "description": text(body.get("message")), "timestamp": first_timestamp(changed), "url": url,
            "custom_data": {**custom, "environment": environment},
        }
        return [Draft("event", record_id("argocd", "health-degraded", instance, namespace, app, revision, changed), fields,
                      subject)]


def _images(value: Any) -> dict[str, str]:
    """Argo CD's image list as ``customData.images``: keyed by image name (numbered when repeated)."""
    found: dict[str, str] = {}
    for image in value if isinstance(value, list) else []:
        if not isinstance(image, str) or not image.strip():
            continue
        name = split_image(image.strip())[0].rsplit("/", 1)[-1] or "image"
        key, n = name, 1
        while key in found:
            n += 1
            key = f"{name}-{n}"
        found[key] = image.strip()
    return found


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``argocd``."""
    return WebhookSource(ArgoCDAdapter(parse_settings(ArgoCDSettings, config)), ctx)
