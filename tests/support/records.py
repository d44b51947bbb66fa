"""Native records (the JSON of ``POST /v1/records``) for tests: deploys, events and metric points
with distinct, recent timestamps."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bridge.records import format_timestamp, utc_now

NOW = utc_now().replace(microsecond=0)


def deploy(i: int, entity: str = "checkout-service") -> dict[str, Any]:
    return {"kind": "deploy", "entity": entity, "title": f"Deploy {i}", "sha": f"{i:040x}",
            "timestamp": format_timestamp(NOW - timedelta(seconds=i)), "environment": "prod"}


def event(i: int, entity: str = "checkout-service") -> dict[str, Any]:
    return {"kind": "event", "entity": entity, "type": "DEPLOY_FAILED", "title": f"Failure {i}",
            "timestamp": format_timestamp(NOW - timedelta(seconds=i))}


def point(i: int, entity: str = "checkout-service", key: str = "lead-time") -> dict[str, Any]:
    return {"kind": "metric", "entity": entity, "key": key,
            "timestamp": format_timestamp(NOW - timedelta(seconds=i)), "value": float(i)}
