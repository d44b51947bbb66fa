"""OpenAPI documents as the ``docs`` record kind carries them: parsed, checked, sent as JSON text.

Cortex's *Update OpenAPI docs for entity* takes ``{"spec": "<the document as JSON text>"}``. CI
jobs have the document as JSON or YAML; either is accepted here, checked to be OpenAPI 3.x
(``openapi: 3.*``, ``info`` with ``title`` and ``version``) and normalized to compact JSON text
that fits one Cortex request. A full schema validation is left to Cortex: its ``400`` names the
problem and dead-letters the record with that reason.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import yaml

#: Largest OpenAPI document accepted (as compact JSON): Cortex takes 2 MB per request body, and
#: the document travels as a JSON string (escaping adds to it) inside ``{"spec": ...}``.
MAX_SPEC_BYTES = 1_800_000


def openapi_document(value: Any) -> str:
    """An OpenAPI 3.x document given as an object, JSON text or YAML text, as compact JSON text."""
    document = value
    if isinstance(value, str | bytes):
        document = _parse_spec_text(value)
    if not isinstance(document, dict):
        raise ValueError("spec must be an OpenAPI document (a JSON or YAML object)")
    version = document.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        found = "no 'openapi' field" if version is None else f"'openapi' is {str(version)[:20]!r}"
        raise ValueError(f"spec must be OpenAPI 3.x ({found}; convert a Swagger 2.0 document first)")
    info = document.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("title"), str) or "version" not in info:
        raise ValueError("spec: OpenAPI requires 'info' with 'title' and 'version'")
    if "paths" in document and not isinstance(document["paths"], dict):
        raise ValueError("spec: 'paths' must be an object")
    try:
        # YAML dates and times become their ISO text, as they would be in a JSON document.
        text = json.dumps(document, separators=(",", ":"), allow_nan=False, default=_iso_text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"spec cannot be written as JSON: {str(exc)[:200] or type(exc).__name__}") from None
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise ValueError(f"spec is {len(text.encode())} bytes as JSON; at most {MAX_SPEC_BYTES} fit in one Cortex request")
    return text


def _parse_spec_text(text: str | bytes) -> Any:
    if len(text) > 4 * MAX_SPEC_BYTES:  # YAML is wordier than JSON, but not by this much
        raise ValueError(f"spec is larger than {4 * MAX_SPEC_BYTES} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when built with it
    try:
        root = yaml.compose(text, Loader=loader)
        # Aliases share nodes: count the document as it would be written out, so that a few
        # nested anchors (a "billion laughs") are refused before anything is expanded.
        too_large = root is not None and _expanded_nodes(root, {}) > MAX_SPEC_BYTES // 4
        document = None if too_large else yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ValueError(f"spec is neither JSON nor YAML: {str(exc).splitlines()[0][:200]}") from None
    if too_large:
        raise ValueError("spec: its YAML anchors and aliases expand to a document too large to send")
    return document


def _expanded_nodes(node: yaml.Node, seen: dict[int, int]) -> int:
    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = 1  # a cycle counts once; the loader refuses what it cannot build
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_nodes(k, seen) + _expanded_nodes(v, seen) for k, v in node.value)
    seen[id(node)] = total
    return total


def _iso_text(value: Any) -> str:
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} values have no JSON form")
