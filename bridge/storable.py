"""Which JSON values the durable queue can store, and send, exactly as given.

Refused: text with lone surrogates (in values or keys), non-finite numbers (JSON has none; they
would be stored as ``null``), nesting deeper than :data:`MAX_JSON_DEPTH`. Every record is checked
at the door (:class:`bridge.records` runs :func:`json_problem` on each), so the check is fast for
the common record and builds paths only when something may be wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel

#: Deepest nesting accepted inside a record (``customData``, custom-data values). The queue reads
#: records back with pydantic-core, whose JSON reader refuses documents nested deeper than ~200
#: levels; no CI payload needs more than a handful. Refusing at the door keeps every stored
#: record readable (and sendable: Cortex's own JSON reader has a nesting limit too).
MAX_JSON_DEPTH = 64

def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" from a JSON escape): no UTF-8 for it
        return False
    return True


def json_problem(value: Any, where: str = "") -> str | None:
    """Why ``value`` cannot be stored and sent as JSON exactly as given, or ``None``.

    Refused: text with lone surrogates (in values or keys), non-finite numbers (JSON has none;
    they would be stored as ``null``), nesting deeper than :data:`MAX_JSON_DEPTH`. Iterative,
    so a hostile depth cannot exhaust the stack.
    """
    return None if _plainly_storable(value) else walk_for_problem(value, where)


def walk_for_problem(value: Any, where: str = "") -> str | None:
    """:func:`json_problem` by walking every value with its path (what the fast check defers to)."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(value, (where,) if where else (), 0)]
    while stack:
        item, path, depth = stack.pop()
        problem: str | None = None
        if isinstance(item, str):
            if not _is_unicode(item):
                problem = "text is not valid Unicode (lone surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                problem = f"{item} is not a JSON number"
        elif isinstance(item, BaseModel):
            stack.extend((v, (*path, k), depth) for k, v in item.__dict__.items())
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                problem = f"nested deeper than {MAX_JSON_DEPTH} levels"
            else:
                entries = item.items() if isinstance(item, dict) else enumerate(item)
                for key, child in entries:
                    if isinstance(key, str) and not _is_unicode(key):
                        return f"{_dotted((*path, '?'))}: a key is not valid Unicode (lone surrogate)"
                    stack.append((child, (*path, str(key)), depth + 1))
        if problem is not None:
            return f"{_dotted(path)}: {problem}"
    return None


#: Values that are always storable as they are (no text, no float, no nesting).
_PLAIN_TYPES = (type(None), bool, int, datetime)


def _plainly_storable(item: Any, depth: int = 0) -> bool:
    """True only if :func:`json_problem` finds nothing in ``item`` (the common record, checked
    without building paths); False means "walk it": something may be wrong, or it is a type only
    the walk knows (a ``str`` subclass ...). Recursive, but never deeper than MAX_JSON_DEPTH.
    Text and plain leaves are checked inline: this runs on every record at the door."""
    kind = type(item)
    if kind is str:
        return item.isascii() or _is_unicode(item)
    if kind is float:
        return math.isfinite(item)
    if kind in _PLAIN_TYPES:
        return True
    if kind is dict:
        if depth >= MAX_JSON_DEPTH:
            return False
        for key, child in item.items():
            if type(key) is not str or not (key.isascii() or _is_unicode(key)):
                return False
            if type(child) is str:
                if not (child.isascii() or _is_unicode(child)):
                    return False
            elif type(child) not in _PLAIN_TYPES and not _plainly_storable(child, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        if depth >= MAX_JSON_DEPTH:
            return False
        return _plain_children(item, depth + 1)
    if isinstance(item, BaseModel):
        return _plain_children(item.__dict__.values(), depth)
    return False


def _plain_children(children: Iterable[Any], depth: int) -> bool:
    for child in children:
        if type(child) is str:
            if not (child.isascii() or _is_unicode(child)):
                return False
        elif type(child) not in _PLAIN_TYPES and not _plainly_storable(child, depth):
            return False
    return True


def _dotted(path: tuple[str, ...]) -> str:
    if len(path) > 6:  # a hostile depth must not make a hostile error message
        path = (*path[:3], "…", *path[-2:])
    return ".".join(path) or "value"
