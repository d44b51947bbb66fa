"""The reads of ``cortex-bridge doctor``: does Cortex hold what the bridge writes to, and did it record the writes.

Each read is one request through the bridge's :class:`~bridge.cortex.client.CortexClient` (so
under its request budget); a 429 pauses that budget for its ``Retry-After`` and the read is
asked again, at most :data:`READ_ATTEMPTS` times. The caller judges the answer (2xx, 404, 403 ...).

* ``GET /api/v1/catalog/{tag}`` ("Retrieve entity details"): 404 when the entity does not exist.
* ``GET /api/v1/eng-intel/custom-metrics/{key}``: the custom metric definition, 404 when there is
  none (docs/cortex-api.md §3.5; absent from the spec, so only the status is relied on).
* ``GET /api/v1/audit-logs`` ("Retrieve audit logs", needs the "View audit logs" permission),
  filtered to one API key's CREATE and UPDATE actions since a time: one page of 1000 and
  ``total``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import quote

from bridge.cortex.client import CortexClient, CortexResponse
from bridge.records import format_timestamp

#: How often one request is sent when Cortex answers 429.
READ_ATTEMPTS = 4
#: Audit entries read per check: one page, the most Cortex serves.
AUDIT_PAGE_SIZE = 1000


async def past_429(send: Callable[[], Awaitable[CortexResponse]], attempts: int = READ_ATTEMPTS) -> CortexResponse:
    """``send()`` again after each 429 (not applied; the budget waits out its Retry-After), at most
    ``attempts`` times; the last answer."""
    response = await send()
    for _ in range(attempts - 1):
        if response.status != 429:
            break
        response = await send()
    return response


async def read(client: CortexClient, path: str, *, endpoint: str, params: dict[str, str] | None = None) -> CortexResponse:
    """``GET path``, asked again after a 429."""
    return await past_429(lambda: client.request("GET", path, endpoint=endpoint, params=params))


async def entity_details(client: CortexClient, tag: str) -> CortexResponse:
    """The entity ``tag`` (404: Cortex has no such entity)."""
    return await read(client, f"/api/v1/catalog/{quote(tag, safe='')}", endpoint="catalog.get")


async def metric_definition(client: CortexClient, key: str) -> CortexResponse:
    """The custom metric definition ``key`` (404: not defined)."""
    return await read(client, f"/api/v1/eng-intel/custom-metrics/{quote(key, safe='')}",
                      endpoint="custom_metrics.definition")


async def audit_writes(client: CortexClient, *, key_identifier: str | None, since: datetime) -> CortexResponse:
    """The audit log's CREATE and UPDATE entries since ``since`` by the API key ``key_identifier``
    (by any API key when None): ``logs`` (newest first, one page) and ``total``."""
    params = {"startTime": format_timestamp(since), "actions": "CREATE,UPDATE", "actorTypes": "API_KEY",
              "page": "0", "pageSize": str(AUDIT_PAGE_SIZE)}
    if key_identifier:
        params["actorApiKeyIdentifiers"] = key_identifier
    return await read(client, "/api/v1/audit-logs", endpoint="audit_logs.list", params=params)
