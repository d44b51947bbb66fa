"""JMESPath, the expression language of entity templates and declarative mapping rules.

Standard JMESPath (https://jmespath.org) plus four functions webhook payloads keep needing:

* ``lower(s)``: lowercase (``null`` stays ``null``).
* ``split(s, sep)``: a list of the parts of ``s``.
* ``seconds_between(start, end)``: seconds from one timestamp to another (ISO-8601, CI styles such
  as ``2019-08-11 06:01:16 UTC``, or epoch numbers); ``null`` if either is missing or unparsable.
* ``repository(url)``: ``org/repo`` from a git URL (https, ssh or scp-like).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jmespath
from jmespath import functions
from jmespath.parser import ParsedResult

from bridge.sources.gitrefs import repository_from_url
from bridge.sources.timestamps import parse_ci_timestamp


# jmespath ships no type information, hence the ignores on its base class and decorator.
class _BridgeFunctions(functions.Functions):  # type: ignore[misc]
    # jmespath dispatches on the ``_func_`` prefix; the signatures type-check the arguments.

    @functions.signature({"types": ["string", "null"]})  # type: ignore[untyped-decorator]
    def _func_lower(self, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})  # type: ignore[untyped-decorator]
    def _func_split(self, value: str | None, sep: str) -> list[str] | None:
        if value is None or not sep:
            return None
        return value.split(sep)

    @functions.signature({"types": ["string", "number", "null"]}, {"types": ["string", "number", "null"]})  # type: ignore[untyped-decorator]
    def _func_seconds_between(self, start: str | float | None, end: str | float | None) -> float | None:
        if start is None or end is None:
            return None
        try:
            return (parse_ci_timestamp(end) - parse_ci_timestamp(start)).total_seconds()
        except (ValueError, OverflowError, OSError):
            return None

    @functions.signature({"types": ["string", "null"]})  # type: ignore[untyped-decorator]
    def _func_repository(self, url: str | None) -> str | None:
        return repository_from_url(url)


_OPTIONS = jmespath.Options(custom_functions=_BridgeFunctions())


@lru_cache(maxsize=1024)
def compile_expression(expression: str) -> ParsedResult:
    """Parse once; raises ``jmespath.exceptions.JMESPathError`` on a syntax error."""
    return jmespath.compile(expression)


def check_expression(expression: str, label: str | None = None) -> str:
    """Validate an expression from configuration; ``ValueError`` (for pydantic) naming it if invalid."""
    try:
        compile_expression(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"{label or repr(expression)}: {exc}") from None
    return expression


def search(expression: str, document: Any) -> Any:
    """Evaluate ``expression``; a runtime error (wrong argument types) yields ``None``."""
    try:
        return compile_expression(expression).search(document, options=_OPTIONS)
    except jmespath.exceptions.JMESPathError:
        return None
