"""Deciding cheaply that a payload cannot match a rule, before anything is decoded.

On a shared Kafka topic or endpoint most inputs are irrelevant, and each one would pay for JSON
decoding and every rule's JMESPath evaluation only to find that nothing matches. Most ``when``
expressions compare a field with a string (``body.kind == 'incident'``, ``headers."x-event" ==
'push'``) or test that a field is there; such an expression can only be truthy if the body's
JSON text contains that string (or key). When the body holds no backslash, no JSON string in it
is escaped, so a string value ``s`` appears in it exactly as ``"s"``: a substring test.

:func:`condition_of` compiles an expression into such a necessary condition, or ``None`` when it
knows none (functions, negations, projections ...): then the rule may match, and the input takes
the full path. So screening only ever skips an input that provably maps to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from bridge.sources.expressions import compile_expression
from bridge.sources.payload import Headers

#: (headers, body) -> False only if the expression it was compiled from cannot be truthy for
#: that input. Bodies passed to it hold no backslash (:func:`plain_json`).
Condition = Callable[[Headers, bytes], bool]
#: body -> why it certainly maps to nothing, else None: an adapter's screening of the bodies sent
#: with one set of headers.
Screener = Callable[[bytes], str | None]

#: An upper bound on nesting below which ``json.loads`` cannot hit Python's recursion limit, so
#: that a body orjson accepts is one the pipeline's decoder accepts too.
_MAX_BRACKETS = 500


def plain_json(body: bytes) -> bool:
    """True if ``body`` is JSON that the pipeline's decoder reads, with no escaped string in it."""
    if b"\\" in body:
        return False
    if len(body) >= _MAX_BRACKETS and body.count(b"{") + body.count(b"[") >= _MAX_BRACKETS:
        return False
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False  # orjson is stricter than json.loads (NaN, BOM ...): let the full path decide
    return True


def condition_of(expression: str) -> Condition | None:
    """A necessary condition for ``expression`` (evaluated against ``{"headers", "body"}``) to be
    truthy, or None when there is none this module can prove."""
    return _condition(compile_expression(expression).parsed)


def _condition(node: dict[str, Any]) -> Condition | None:
    kind = node["type"]
    if kind == "comparator" and node["value"] == "eq":
        left, right = node["children"]
        literal, other = (right, left) if right["type"] == "literal" else (left, right)
        path = _path(other)
        if literal["type"] != "literal" or path is None or not isinstance(literal["value"], str):
            return None
        return _equals(path, literal["value"])
    if kind in ("field", "subexpression"):
        path = _path(node)
        return _present(path) if path is not None else None
    if kind in ("and_expression", "or_expression"):
        first, second = (_condition(child) for child in node["children"])
        if kind == "and_expression":
            if first is None or second is None:
                return first or second
            return lambda headers, body: first(headers, body) and second(headers, body)
        if first is None or second is None:
            return None
        return lambda headers, body: first(headers, body) or second(headers, body)
    return None


def _path(node: dict[str, Any]) -> tuple[str, ...] | None:
    """The field names of a plain path under ``body`` or ``headers`` (``body.a.b``), else None."""
    fields = [node] if node["type"] == "field" else node["children"] if node["type"] == "subexpression" else []
    if not fields or any(child["type"] != "field" for child in fields):
        return None
    names = tuple(str(child["value"]) for child in fields)
    if names[0] == "body" or (names[0] == "headers" and len(names) == 2):
        return names
    return None


def _quoted(text: str) -> bytes | None:
    """``"text"`` as it appears unescaped in JSON, or None if it would need escaping."""
    if '"' in text or "\\" in text or any(ord(c) < 0x20 for c in text):
        return None
    try:
        return b'"' + text.encode("utf-8") + b'"'
    except UnicodeEncodeError:  # a lone surrogate
        return None


def _equals(path: tuple[str, ...], literal: str) -> Condition | None:
    if path[0] == "headers":
        name = path[1]
        return lambda headers, body: any(k.lower() == name and v == literal for k, v in headers.items())
    needle = _quoted(literal)
    if needle is None:
        return None
    return lambda headers, body: needle in body


def _present(path: tuple[str, ...]) -> Condition | None:
    if path[0] == "headers":
        name = path[1]
        return lambda headers, body: any(k.lower() == name and v != "" for k, v in headers.items())
    if len(path) == 1:
        return None
    needle = _quoted(path[-1])  # a truthy value lies under a key of that name
    if needle is None:
        return None
    return lambda headers, body: needle in body
