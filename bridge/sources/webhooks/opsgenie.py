"""Opsgenie Webhook integration (``type: opsgenie``).

Opsgenie signs nothing: add a custom header to the integration (``Authorization: Bearer
<token>`` by default, or any header named by ``token_header``) and give the bridge the token.
The body is an alert action; the alert (``alert.alertId``) is the incident:

* ``Create`` -> event ``INCIDENT`` (``open_event_type``) at ``alert.createdAt``;
* ``Close`` -> event ``INCIDENT_RESOLVED`` at ``alert.updatedAt``, and with ``restore_metric``
  the seconds since ``createdAt``;
* every other action (Acknowledge, AddNote, ...) maps to nothing.

``createdAt`` is epoch milliseconds, ``updatedAt`` epoch *nanoseconds* (19 digits, beyond a
double's exact integers: read as an integer, never through a float). The entity is looked up by
``alert.entity``, then ``alert.alias``, then the alert's tags, in ``entity.static``;
``entity.template`` sees the alert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.payload import dig, first_timestamp, text
from bridge.sources.pipeline import Delivery, Draft, MapsToNothing, UnusablePayload
from bridge.sources.signatures import AuthScheme, TokenScheme
from bridge.sources.webhooks.adapter import WebhookAdapter
from bridge.sources.webhooks.incidents import IncidentReport, IncidentSettings, incident_drafts
from bridge.sources.webhooks.source import WebhookSource

_STATES: dict[str, Literal["opened", "resolved"]] = {"Create": "opened", "Close": "resolved"}


class OpsgenieSettings(IncidentSettings):
    """``type: opsgenie``."""

    type: Literal["opsgenie"]
    token_header: str = Field("Authorization", description="Custom header of the integration carrying the token.")


class OpsgenieAdapter(WebhookAdapter[OpsgenieSettings]):
    """Maps Opsgenie alert actions to drafts."""

    def scheme(self) -> AuthScheme:
        return TokenScheme(header=self.settings.token_header)

    async def map(self, delivery: Delivery) -> list[Draft]:
        payload = delivery.payload
        action, alert = text(dig(payload, "action")), dig(payload, "alert")
        alert_id = text(dig(alert, "alertId"))
        if action is None or not isinstance(alert, dict) or alert_id is None:
            raise UnusablePayload("payload is not an Opsgenie webhook (action and alert.alertId are required)")
        state = _STATES.get(action)
        if state is None:
            raise MapsToNothing(f"action-not-mapped: {action}")
        tags = [t for t in alert.get("tags") or [] if isinstance(t, str) and t] if isinstance(alert.get("tags"), list) else []
        keys = tuple(k for k in (text(alert.get("entity")), text(alert.get("alias")), *tags) if k)
        opened = first_timestamp(alert.get("createdAt"))
        at = opened if state == "opened" else _nanoseconds(alert.get("updatedAt")) or delivery.received_at
        priority = alert.get("priority")
        report = IncidentReport(
            system="opsgenie", key=alert_id, state=state,
            title=text(alert.get("message")) or f"Opsgenie alert {alert_id}",
            description=text(alert.get("description")),
            severity=f"P{priority}" if isinstance(priority, int) and not isinstance(priority, bool) else text(priority),
            subject=Subject(keys=keys or (alert_id,), document=alert), opened_at=opened, at=at,
            custom={"tinyId": text(alert.get("tinyId")), "alias": text(alert.get("alias")),
                    "alertSource": text(alert.get("source")), "tags": tags or None,
                    "integration": text(dig(payload, "integrationName"))},
        )
        return incident_drafts(report, self.settings)


def _nanoseconds(value: Any) -> datetime | None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    seconds, nanos = divmod(value, 1_000_000_000)
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=nanos // 1000)
    except (OverflowError, OSError, ValueError):
        return None


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``opsgenie``."""
    return WebhookSource(OpsgenieAdapter(parse_settings(OpsgenieSettings, config)), ctx)
