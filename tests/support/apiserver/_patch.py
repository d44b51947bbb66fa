"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as the apiserver applies them.

Strategic merge patch is applied as a JSON merge patch by the fake apiserver: the two differ
only for lists with merge keys (such as a Pod's containers), which the source never patches.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

__all__ = ["json_patch", "merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> tuple[Any, str]:
    """The parent container of the pointer ``parts`` and the last token."""
    if not parts:
        raise ValueError("the whole document cannot be the target of this operation")
    current = doc
    for part in parts[:-1]:
        current = current[int(part)] if isinstance(current, list) else current[part]
    return current, parts[-1]


def _read(doc: Any, parts: list[str]) -> Any:
    current = doc
    for part in parts:
        current = current[int(part)] if isinstance(current, list) else current[part]
    return current


def _add(doc: Any, parts: list[str], value: Any) -> None:
    parent, last = _container(doc, parts)
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        parent[last] = value


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _container(doc, parts)
    return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)


def json_patch(target: Any, operations: Sequence[Any]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test). Raises ``ValueError``."""
    doc = copy.deepcopy(target)
    try:
        for op in operations:
            if not isinstance(op, dict):
                raise ValueError(f"invalid operation {op!r}")
            kind, parts = op.get("op"), _pointer(str(op.get("path", "")))
            if kind == "add":
                _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                _remove(doc, parts)
            elif kind == "replace":
                _read(doc, parts)  # the target must exist
                parent, last = _container(doc, parts)
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
            elif kind in ("move", "copy"):
                source = _pointer(str(op["from"]))
                value = _remove(doc, source) if kind == "move" else copy.deepcopy(_read(doc, source))
                _add(doc, parts, value)
            elif kind == "test":
                if _read(doc, parts) != op.get("value"):
                    raise ValueError(f"testing value {op.get('path')} failed")
            else:
                raise ValueError(f"unexpected kind of operation {kind!r}")
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"JSON patch cannot be applied: {exc!r}") from exc
    return doc
