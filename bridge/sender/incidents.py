"""Sending event groups: an incident's opening and resolution are one Cortex custom event.

An event group (bridge/queue/deploy_groups.py) holds the events whose ``customData.opened_event``
names one record id: an incident's opening (which names itself) and its resolution. The first of
them to arrive is POSTed as it is; each later one, once the first one's uuid is known, is a PUT
*Update custom event by UUID* of the whole merged event (a PUT replaces every field); while the
first one is queued, the later ones wait. A POST is never merged: the read-back of an ambiguous
POST finds the event by the type and time of the record that was POSTed, so that is what it sends.
"""

from __future__ import annotations

from typing import Any

from bridge.cortex.endpoints import deploy_or_event_body
from bridge.queue.change_failures import OPENED_EVENT_KEY
from bridge.records import BRIDGE_ID_KEY, DeployRecord, EventRecord


def opens_group(record: DeployRecord | EventRecord) -> bool:
    """Whether ``record`` is an event of an event group (it names the event it is or updates)."""
    if not isinstance(record, EventRecord):
        return False
    opened = (record.custom_data or {}).get(OPENED_EVENT_KEY)
    return isinstance(opened, str) and bool(opened)


def merged_event(creator_id: str, members: list[DeployRecord | EventRecord]) -> dict[str, Any]:
    """The whole event a group's events describe.

    The opening (the event the others name) gives title, type, time, description and url; every
    later event's ``customData`` is laid over it in arrival order, so a resolution's ``state``,
    ``resolvedAt`` and ``restore_seconds`` win. Without the opening (never seen, or dead-lettered)
    the first event is the base. The bridge id stays the creator's (the record that was POSTed).
    """
    events = [m for m in members if isinstance(m, EventRecord)]
    names = {(m.custom_data or {}).get(OPENED_EVENT_KEY) for m in events}
    base = next((m for m in events if m.id in names), events[0])
    body = deploy_or_event_body(base)
    custom: dict[str, Any] = dict(base.custom_data or {})
    for member in events:
        if member is not base:
            custom.update(member.custom_data or {})
    custom["events"] = [base.id] + [m.id for m in events if m is not base]  # the opening first
    custom[BRIDGE_ID_KEY] = creator_id
    body["customData"] = custom
    return body
