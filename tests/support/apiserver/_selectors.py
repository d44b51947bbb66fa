"""Label and field selectors with the apiserver's syntax and matching rules.

Only what the apiserver itself accepts is implemented, so a selector that a real
cluster rejects is rejected here too (the caller turns :class:`SelectorError`
into a 400 BadRequest ``Status``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "FieldRequirement",
    "LabelRequirement",
    "SelectorError",
    "fields_match",
    "labels_match",
    "parse_field_selector",
    "parse_label_selector",
]


class SelectorError(ValueError):
    """A label or field selector that the apiserver would reject."""


# Label keys are an optional DNS-subdomain prefix plus a name; values are the
# same alphabet without "/". Kept permissive on length, strict on characters.
_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")
_EQUALITY_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")


@dataclass(frozen=True)
class LabelRequirement:
    """One comma-separated term of a label selector."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfies this requirement (apimachinery semantics)."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            # As in apimachinery: a missing key satisfies "!=" and "notin".
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present


@dataclass(frozen=True)
class FieldRequirement:
    """One comma-separated term of a field selector."""

    field: str
    operator: str  # "=" or "!="
    value: str


def _split_top_level(selector: str) -> list[str]:
    """Split on commas that are not inside a ``(...)`` value set."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


def parse_label_selector(selector: str | None) -> list[LabelRequirement]:
    """Parse ``a=b,c!=d,e in (f,g),h,!i``; an empty selector matches everything."""
    if not selector:
        return []
    requirements: list[LabelRequirement] = []
    for term in _split_top_level(selector):
        if match := _EQUALITY_RE.match(term):
            key, op, value = match.groups()
            requirements.append(LabelRequirement(key, "!=" if op == "!=" else "=", frozenset({value})))
        elif match := _SET_RE.match(term):
            key, op, raw_values = match.groups()
            values = frozenset(v.strip() for v in raw_values.split(",") if v.strip())
            requirements.append(LabelRequirement(key, op, values))
        elif match := _EXISTS_RE.match(term):
            negated, key = match.groups()
            requirements.append(LabelRequirement(key, "!" if negated else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return requirements


def parse_field_selector(selector: str | None) -> list[FieldRequirement]:
    """Parse ``a=b,c==d,e!=f``; field selectors support no set or existence operators."""
    if not selector:
        return []
    requirements: list[FieldRequirement] = []
    for term in _split_top_level(selector):
        # "!=" and "==" must be tried before "=" because they contain it.
        op = next((candidate for candidate in ("!=", "==", "=") if candidate in term), None)
        field, _, value = term.partition(op) if op else ("", "", "")
        if not op or not field.strip():
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{term}'")
        requirements.append(FieldRequirement(field.strip(), "!=" if op == "!=" else "=", value.strip()))
    return requirements


def labels_match(requirements: list[LabelRequirement], labels: Mapping[str, str] | None) -> bool:
    """Whether every requirement holds for ``labels`` (``None`` counts as no labels)."""
    present = labels or {}
    return all(req.matches(present) for req in requirements)


def fields_match(requirements: list[FieldRequirement], get_field: Callable[[str], str]) -> bool:
    """Whether every requirement holds, reading field values through ``get_field``."""
    for req in requirements:
        value = get_field(req.field)
        if (value == req.value) != (req.operator == "="):
            return False
    return True
