"""PagerDuty v3 webhook subscriptions (``type: pagerduty``).

PagerDuty signs every delivery: ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>``, one
``v1=`` entry per active secret of the subscription (rotation), any of which may match.
``X-Webhook-Id`` is the same on every retry of one delivery (the delivery id). One event per
delivery; the incident (``event.data``) is the incident, keyed by its id:

* ``incident.triggered`` -> event ``INCIDENT`` (``open_event_type``) at ``occurred_at``;
* ``incident.resolved`` -> event ``INCIDENT_RESOLVED`` at ``occurred_at``, and with
  ``restore_metric`` the seconds since ``data.created_at`` (sent by current PagerDuty; older
  payloads without it give no point);
* ``pagey.ping`` (the subscription test) and every other event type map to nothing.

The entity is looked up by the service's name, then its id, in ``entity.static``;
``entity.template`` sees the incident (``{service.summary}``).
"""

from __future__ import annotations

from typing import Any, Literal

from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.payload import Headers, dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, HmacScheme
from bridge.sources.webhooks.adapter import WebhookAdapter
from bridge.sources.webhooks.incidents import IncidentReport, IncidentSettings, incident_drafts
from bridge.sources.webhooks.source import WebhookSource

SIGNATURE = HmacScheme(header="X-PagerDuty-Signature", part="v1")
_STATES: dict[str, Literal["opened", "resolved"]] = {"incident.triggered": "opened", "incident.resolved": "resolved"}


class PagerDutySettings(IncidentSettings):
    """``type: pagerduty``."""

    type: Literal["pagerduty"]


class PagerDutyAdapter(WebhookAdapter[PagerDutySettings]):
    """Maps PagerDuty v3 incident events to drafts."""

    def scheme(self) -> AuthScheme:
        return SIGNATURE

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        return headers.get("X-Webhook-Id") or None

    async def map(self, delivery: Delivery) -> list[Draft]:
        event = dig(delivery.payload, "event")
        event_type = text(dig(event, "event_type"))
        if not isinstance(event, dict) or event_type is None:
            raise UnusablePayload("payload is not a PagerDuty v3 webhook (event.event_type is required)")
        state = _STATES.get(event_type)
        if state is None:
            raise MapsToNothing(f"event-not-mapped: {event_type}")
        data = event.get("data")
        incident = text(dig(data, "id"))
        if not isinstance(data, dict) or incident is None:
            raise UnusablePayload(f"{event_type} has no event.data.id")
        service = dig(data, "service")
        keys = tuple(k for k in (text(dig(service, "summary")), text(dig(service, "id"))) if k)
        occurred = first_timestamp(event.get("occurred_at"))
        opened = first_timestamp(data.get("created_at")) or (occurred if state == "opened" else None)
        report = IncidentReport(
            system="pagerduty", key=incident, state=state,
            title=text(data.get("title")) or f"PagerDuty incident {incident}",
            url=text(data.get("html_url")), severity=text(data.get("urgency")),
            subject=Subject(keys=keys or (incident,), document=data), opened_at=opened, at=occurred,
            custom={"number": data.get("number"), "service": keys[0] if keys else None,
                    "priority": text(dig(data, "priority", "summary")), "status": text(data.get("status")),
                    "incident_key": text(data.get("incident_key")),
                    "resolve_reason": text(dig(data, "resolve_reason", "type"))},
        )
        return incident_drafts(report, self.settings)


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``pagerduty``."""
    return WebhookSource(PagerDutyAdapter(parse_settings(PagerDutySettings, config)), ctx)
