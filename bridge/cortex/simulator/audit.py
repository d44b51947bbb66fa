"""The tenant's audit log: ``GET /api/v1/audit-logs`` ("Retrieve audit logs").

Every write the tenant applied (a 2xx to POST, PUT, PATCH or DELETE under ``/api/``, not a dry
run) is logged as an ``AuditLogResponse``: ``action`` (CREATE for POST, UPDATE for PUT and
PATCH, DELETE), ``actorIdentifier`` (the API key's identifier, ``key_identifiers`` in the
tenant's config), ``ipAddress``, ``objectType`` and ``objectIdentifier`` (the entity tag when
the path names one), ``timestamp``. The spec leaves ``objectType`` free text; the simulator
names what was written (``DEPLOY``, ``CUSTOM_EVENT``, ``CUSTOM_METRIC_DATA``, ``CUSTOM_DATA``,
``CATALOG``). Reading the log needs the "View audit logs" permission: a token the config lists
in ``audit_log_denied_tokens`` is answered 403.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: Filters of the list, as the official CLI sends them (comma-joined lists).
_LIST_FILTERS = {"actions": "action", "actorApiKeyIdentifiers": "actorIdentifier",
                 "objectIdentifiers": "objectIdentifier", "objectTypes": "objectType", "actorTypes": "_actorType"}
_ACTIONS = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE", "DELETE": "DELETE"}


def object_of(path: str, tag: str | None) -> tuple[str, str]:
    """``(objectType, objectIdentifier)`` of a write to ``path`` (``tag``: the entity it names)."""
    if "/eng-intel/custom-metrics/" in path:
        kind = "CUSTOM_METRIC_DATA"
    elif path.endswith("/deploys") or "/deploys/" in path:
        kind = "DEPLOY"
    elif "/custom-events" in path:
        kind = "CUSTOM_EVENT"
    elif "/custom-data" in path:
        kind = "CUSTOM_DATA"
    else:
        kind = "CATALOG"
    return kind, tag or path.removeprefix("/api/v1/")


class AuditLog:
    """The log entries, oldest first; only the event loop touches it."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def clear(self) -> None:
        """Forget every entry."""
        self.entries.clear()

    def record(self, *, method: str, path: str, tag: str | None, actor: str, ip: str | None) -> None:
        """Log one applied write."""
        action = _ACTIONS.get(method)
        if action is None:
            return
        object_type, identifier = object_of(path, tag)
        moment = datetime.now(UTC)
        self.entries.append({
            "action": action, "actorIdentifier": actor, "ipAddress": ip or "", "objectType": object_type,
            "objectIdentifier": identifier,
            "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "_at": moment, "_actorType": "API_KEY",  # the simulator knows API keys only
        })

    def query(self, filters: dict[str, list[str]], start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
        """Entries matching every filter (``query name -> accepted values``) in the range, newest first."""
        wanted = {_LIST_FILTERS[name]: set(values) for name, values in filters.items()
                  if name in _LIST_FILTERS and values}
        found = []
        for entry in reversed(self.entries):
            if start is not None and entry["_at"] < start or end is not None and entry["_at"] > end:
                continue
            if all(entry[field] in values for field, values in wanted.items()):
                found.append({k: v for k, v in entry.items() if not k.startswith("_")})
        return found


def list_filters(query: Any) -> dict[str, list[str]]:
    """The list filters of a request's query (repeated or comma-joined)."""
    return {name: [v.strip() for raw in query.getall(name, []) for v in raw.split(",") if v.strip()]
            for name in _LIST_FILTERS}
