"""Prometheus Alertmanager ``webhook_config`` receiver (``type: alertmanager``).

Alertmanager signs nothing: give its ``http_config`` an ``authorization`` (``Bearer <token>``) or
``basic_auth`` (the token is the password), checked like Jenkins'. A notification carries a group
of alerts; each alert is one incident episode, keyed by its ``fingerprint`` (a hash of its labels;
old releases send none, then the labels themselves) and its ``startsAt``, so the same alert
firing again after it resolved is a new incident while the repeats of one firing are stored once:

* ``firing`` -> event ``ALERT`` (``open_event_type``) at ``startsAt``;
* ``resolved`` -> event ``ALERT_RESOLVED`` at ``endsAt``, and with ``restore_metric`` the seconds
  from ``startsAt`` to ``endsAt``.

The entity is looked up by the values of ``entity_labels`` (first present label first) in
``entity.static``; ``entity.template`` sees the alert (``{labels.service}``), its group's
``commonLabels`` and ``receiver``. ``match_labels`` keeps only alerts whose labels have those values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bridge.records import record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.payload import first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import WebhookAdapter
from bridge.sources.webhooks.incidents import EventType, IncidentReport, IncidentSettings, incident_drafts
from bridge.sources.webhooks.source import WebhookSource

#: Go's zero time: what Alertmanager sends as ``endsAt`` while it does not know the end.
_ZERO_TIME = "0001-01-01T00:00:00Z"


class AlertmanagerSettings(IncidentSettings):
    """``type: alertmanager``."""

    type: Literal["alertmanager"]
    token_header: str = Field("Authorization", description="Header with the token (Bearer/Basic or raw).")
    open_event_type: EventType = Field("ALERT", min_length=1, description="Custom event type of a firing alert.")
    resolved_event_type: EventType = Field("ALERT_RESOLVED", min_length=1,
                                           description="Custom event type of a resolved alert whose firing was"
                                           " never seen (else the firing alert's event is updated).")
    entity_labels: list[str] = Field(default_factory=lambda: ["service", "app", "job"],
                                     description="Labels whose values name the entity, most specific first.")
    match_labels: dict[str, str] = Field(default_factory=dict,
                                         description="Only alerts whose labels have all these values.")


class AlertmanagerAdapter(WebhookAdapter[AlertmanagerSettings]):
    """Maps Alertmanager notifications to drafts, one incident per alert."""

    def scheme(self) -> AuthScheme:
        return TokenScheme(header=self.settings.token_header)

    async def map(self, delivery: Delivery) -> list[Draft]:
        payload = delivery.payload
        alerts = payload.get("alerts") if isinstance(payload, dict) else None
        if not isinstance(alerts, list):
            raise UnusablePayload("payload is not an Alertmanager notification (no alerts list)")
        common: dict[str, Any] = payload["commonLabels"] if isinstance(payload.get("commonLabels"), dict) else {}
        drafts: list[Draft] = []
        for alert in alerts:
            report = self._report(alert, common, payload)
            if report is not None:
                drafts.extend(incident_drafts(report, self.settings))
        if not drafts:
            raise MapsToNothing(f"no-alert-mapped: {len(alerts)} alert(s), none firing or resolved and matching")
        return drafts

    def _report(self, alert: Any, common: dict[str, Any], payload: dict[str, Any]) -> IncidentReport | None:
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            return None
        labels = {str(k): text(v) or "" for k, v in alert["labels"].items()}
        status = text(alert.get("status"))
        if status not in ("firing", "resolved"):
            return None
        if any(labels.get(k) != v for k, v in self.settings.match_labels.items()):
            return None
        annotations: dict[str, Any] = alert["annotations"] if isinstance(alert.get("annotations"), dict) else {}
        started = first_timestamp(alert.get("startsAt"))
        ended = first_timestamp(alert.get("endsAt")) if text(alert.get("endsAt")) != _ZERO_TIME else None
        fingerprint = text(alert.get("fingerprint")) or record_id(labels)
        alertname = labels.get("alertname") or "alert"
        keys = tuple(labels[k] for k in self.settings.entity_labels if labels.get(k))
        document = {**alert, "commonLabels": common, "receiver": payload.get("receiver")}
        return IncidentReport(
            system="alertmanager", key=f"{fingerprint}@{text(alert.get('startsAt')) or ''}",
            state="opened" if status == "firing" else "resolved",
            title=text(annotations.get("summary")) or alertname,
            description=text(annotations.get("description")) or text(annotations.get("message")),
            url=text(alert.get("generatorURL")), severity=labels.get("severity") or None,
            subject=Subject(keys=keys or (alertname,), document=document),
            opened_at=started, at=started if status == "firing" else ended,
            custom={"alertname": alertname, "labels": labels, "receiver": text(payload.get("receiver")),
                    "groupKey": text(payload.get("groupKey"))},
        )


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``alertmanager``."""
    return WebhookSource(AlertmanagerAdapter(parse_settings(AlertmanagerSettings, config)), ctx)
