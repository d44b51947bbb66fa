"""Flux notification-controller, ``generic`` / ``generic-hmac`` Provider (``type: flux``).

With ``generic-hmac`` Flux signs the body: ``X-Signature: sha256=<hex HMAC-SHA256(token, body)>``
(``signature: hmac``, the default). With ``generic`` it sends the headers of the Provider's secret,
e.g. ``Authorization: Bearer <token>`` (``signature: token``). The body is a Flux ``Event``:

* ``severity: info`` from a kind in ``deploy_kinds`` with a reason in ``deploy_reasons`` and a
  revision in ``metadata`` -> deploy (``RollbackSucceeded`` -> type ROLLBACK). The record id is
  the object and its revision, so a revision reconciled again is stored once: only a new revision
  becomes a new deploy.
* ``severity: error`` -> event ``RECONCILIATION_FAILED`` (the Flux reason is in customData).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.gitrefs import sha_from_revision
from bridge.sources.payload import dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, HmacScheme, TokenScheme
from bridge.sources.webhooks.adapter import WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

SIGNATURE = HmacScheme(header="X-Signature", prefix="sha256=")


class FluxSettings(WebhookSettings):
    """``type: flux``."""

    type: Literal["flux"]
    signature: Literal["hmac", "token"] = Field("hmac", description="generic-hmac (hmac) or generic (token).")
    token_header: str = Field("Authorization", description="With signature: token, the header to check.")
    environment: str | None = Field(None, description="Environment of deploys, e.g. the cluster name.")
    deploy_kinds: list[str] = Field(default_factory=lambda: ["Kustomization", "HelmRelease"])
    deploy_reasons: list[str] = Field(
        default_factory=lambda: ["ReconciliationSucceeded", "InstallSucceeded", "UpgradeSucceeded",
                                 "RollbackSucceeded"]
    )


class FluxAdapter(WebhookAdapter[FluxSettings]):
    """Maps Flux events to drafts."""

    def scheme(self) -> AuthScheme:
        if self.settings.signature == "hmac":
            return SIGNATURE
        return TokenScheme(header=self.settings.token_header)

    async def map(self, delivery: Delivery) -> list[Draft]:
        event = delivery.payload
        obj = dig(event, "involvedObject")
        kind, name = text(dig(obj, "kind")), text(dig(obj, "name"))
        if kind is None or name is None:
            raise UnusablePayload("payload is not a Flux event (involvedObject.kind and .name are required)")
        namespace = text(dig(obj, "namespace")) or ""
        severity, reason = text(dig(event, "severity")), text(dig(event, "reason"))
        metadata = dig(event, "metadata") if isinstance(dig(event, "metadata"), dict) else {}
        # The revision key is "<group>/revision" (kustomize.toolkit.fluxcd.io/revision, ...).
        revision = next((text(v) for k, v in metadata.items() if k == "revision" or k.endswith("/revision")), None)
        subject = Subject(keys=(f"{kind}/{namespace}/{name}", f"{namespace}/{name}", name), document=event)
        timestamp = first_timestamp(dig(event, "timestamp"))
        custom = {"kind": kind, "namespace": namespace or None, "name": name, "reason": reason,
                  "revision": revision, "controller": text(dig(event, "reportingController"))}
        custom = {k: v for k, v in custom.items() if v is not None}
        target = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
        # The same object and revision in two clusters are two deploys.
        cluster = self.settings.environment or delivery.source
        if severity == "error":
            fields = {
                "type": "RECONCILIATION_FAILED", "title": f"{target}: {reason or 'reconciliation failed'}",
                "description": text(dig(event, "message")), "timestamp": timestamp,
                "custom_data": {**custom, "environment": self.settings.environment},
            }
            rid = record_id("flux", "error", cluster, kind, namespace, name, reason, text(dig(event, "timestamp")))
            return [Draft("event", rid, fields, subject)]
        if severity != "info" or kind not in self.settings.deploy_kinds or reason not in self.settings.deploy_reasons:
            raise MapsToNothing(f"event-not-mapped: {severity} {reason} from {kind}")
        if revision is None:
            raise MapsToNothing(f"no-revision: {reason} from {target} carries no revision")
        fields = {
            "title": f"{target} reconciled {revision}", "timestamp": timestamp,
            "type": "ROLLBACK" if reason == "RollbackSucceeded" else "DEPLOY",
            "sha": sha_from_revision(revision), "environment": self.settings.environment,
            "custom_data": {**custom, "message": text(dig(event, "message"))},
        }
        return [Draft("deploy", record_id("flux", "deploy", cluster, kind, namespace, name, revision), fields, subject)]


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``flux``."""
    return WebhookSource(FluxAdapter(parse_settings(FluxSettings, config)), ctx)
