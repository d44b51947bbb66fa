"""Minimal entity descriptors and "Create or patch entity" (``PATCH /api/v1/open-api``).

What ``cortex-bridge dlq register-entities`` creates for an entity the bridge could not resolve:
a ``cortex.yaml`` with the tag, a name and, when known, the git repository, nothing an owner
would set by hand. Sent as raw YAML (``application/openapi;charset=UTF-8``) with
``dryRun=true`` first (Cortex validates and answers as the write would: 201 for a new entity);
the write itself merges into an entity that exists by then, so it never replaces one.
"""

from __future__ import annotations

from typing import Literal

import yaml

from bridge.cortex.client import CortexClient, CortexResponse
from bridge.cortex.inspection import past_429

GitProvider = Literal["github", "gitlab", "bitbucket", "azure"]
PATH = "/api/v1/open-api"
CONTENT_TYPE = "application/openapi;charset=UTF-8"


def entity_descriptor(tag: str, *, name: str, repository: str | None = None,
                      provider: GitProvider = "github", entity_type: str = "service") -> str:
    """The YAML of a minimal entity: tag, name, type and, when known, its git repository."""
    info: dict[str, object] = {"title": name, "x-cortex-tag": tag, "x-cortex-type": entity_type}
    if repository:
        info["x-cortex-git"] = {provider: {"repository": repository}}
    return yaml.safe_dump({"openapi": "3.0.1", "info": info}, sort_keys=False)


async def create_or_patch_entity(client: CortexClient, descriptor: str, *, dry_run: bool) -> CortexResponse:
    """Send ``descriptor``: with ``dry_run`` Cortex only validates it (200 patch / 201 create / 400)."""
    params = {"dryRun": "true"} if dry_run else None
    endpoint = "entities.create_or_patch" + (".dry_run" if dry_run else "")
    body = descriptor.encode()
    return await past_429(lambda: client.request("PATCH", PATH, endpoint=endpoint, params=params, body=body,
                                                 content_type=CONTENT_TYPE))
