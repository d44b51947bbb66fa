"""What the incident and alert sources share: one report per incident state change, and the
records a report becomes.

Alertmanager, PagerDuty and Opsgenie each say "something is broken on this service" in their
own shape. Their adapters reduce a delivery to :class:`IncidentReport` values (which incident,
opened or resolved, when it opened, where to look), and :func:`incident_drafts` turns reports
into records the same way for all three:

* **opened** -> a custom event (``open_event_type``) on the entity, with the incident's key, url,
  severity and state in ``customData``. Its record id is (system, incident key), so a repeated
  notification of the same incident (Alertmanager's ``repeat_interval``, a PagerDuty retry, a
  second Opsgenie webhook for one alert) is stored once.
* **resolved** -> an update of that same event: a record whose ``customData`` names the opening
  event's record id (``opened_event``, which the opening carries too: the two are one event
  group, bridge/queue/deploy_groups.py) with ``state: resolved``, ``resolvedAt`` and the
  duration. When the opening was delivered, the sender PUTs the merged event by its uuid
  (bridge/sender/incidents.py); when it is queued the resolution waits for it; when the opening
  was never seen the resolution is POSTed on its own, as a ``resolved_event_type`` event. With
  ``restore_metric``, a metric point too: the seconds from opened to resolved (time to restore)
  when the delivery says when the incident opened. Their record ids are (system, key) too, so a
  resolution reported twice is stored once.

The key names one incident *episode*: an alert that fires again after it resolved is a new
incident (the Alertmanager adapter keys by fingerprint and ``startsAt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from bridge.queue.change_failures import OPENED_EVENT_KEY
from bridge.records import format_timestamp, record_id
from bridge.sources.entity import Subject
from bridge.sources.pipeline import Draft
from bridge.sources.webhooks.adapter import MetricKey, WebhookSettings

EventType = str


class IncidentSettings(WebhookSettings):
    """Settings every incident source has."""

    open_event_type: EventType = Field("INCIDENT", min_length=1, description="Custom event type of an opened incident.")
    resolved_event_type: EventType = Field(
        "INCIDENT_RESOLVED", min_length=1,
        description="Custom event type of a resolution whose opening was never seen (else the opening is updated).")
    restore_metric: MetricKey | None = Field(
        None, description="Custom metric key of a time-to-restore point (seconds) per resolution; none when null.")
    environment: str | None = Field(None, description="Environment the incidents are about (customData).")


@dataclass(frozen=True)
class IncidentReport:
    """One incident's state as one delivery reports it."""

    system: Literal["alertmanager", "pagerduty", "opsgenie"]
    #: what identifies the incident episode in its system (fingerprint and start, incident id, alert id)
    key: str
    state: Literal["opened", "resolved"]
    title: str
    subject: Subject
    opened_at: datetime | None
    #: when the reported change happened (opened_at for an opening)
    at: datetime | None
    description: str | None = None
    url: str | None = None
    severity: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)


def opening_id(report: IncidentReport) -> str:
    """Record id of the event that reports ``report``'s incident as opened."""
    return record_id(report.system, "opened", report.key)


def incident_drafts(report: IncidentReport, settings: IncidentSettings) -> list[Draft]:
    """The records one report becomes (see the module docstring)."""
    custom: dict[str, Any] = {"system": report.system, "incident": report.key, "state": report.state,
                              "severity": report.severity, "url": report.url,
                              "environment": settings.environment, **report.custom}
    custom = {k: v for k, v in custom.items() if v is not None}
    base = {"title": report.title, "description": report.description, "url": report.url}
    if report.state == "opened":
        fields = {**base, "type": settings.open_event_type, "timestamp": report.opened_at or report.at,
                  "custom_data": {**custom, OPENED_EVENT_KEY: opening_id(report)}}
        return [Draft("event", opening_id(report), fields, report.subject)]
    seconds = _restore_seconds(report)
    custom = {**custom, OPENED_EVENT_KEY: opening_id(report), "restore_seconds": seconds,
              "resolvedAt": format_timestamp(report.at) if report.at is not None else None}
    custom = {k: v for k, v in custom.items() if v is not None}
    drafts = [Draft("event", record_id(report.system, "resolved", report.key),
                    {**base, "type": settings.resolved_event_type, "timestamp": report.at, "custom_data": custom},
                    report.subject)]
    if settings.restore_metric and seconds is not None:
        drafts.append(Draft("metric", record_id(report.system, "restore", settings.restore_metric, report.key),
                            {"key": settings.restore_metric, "timestamp": report.at, "value": seconds},
                            report.subject))
    return drafts


def _restore_seconds(report: IncidentReport) -> float | None:
    if report.opened_at is None or report.at is None:
        return None
    seconds = (report.at - report.opened_at).total_seconds()
    return round(seconds, 3) if seconds >= 0 else None
