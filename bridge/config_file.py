"""Reading the configuration file, and saying what is wrong with a configuration.

The YAML file is the lowest-priority settings source (:class:`YamlFileSource`, below the
environment and explicit overrides); :func:`describe_errors` turns a validation error into one
line per problem, an unknown key with the closest known one.
"""

from __future__ import annotations

import contextvars
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import PydanticBaseSettingsSource

#: The file :func:`bridge.config.load_settings` is reading (``None``: none).
CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_file", default=None)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line, fit for an operator."""


#: the absence of a key that is not text (``None`` can be one)
_ALL_TEXT = object()


class YamlFileSource(PydanticBaseSettingsSource):
    """The YAML config file, lowest priority."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = CONFIG_FILE.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None)
            context = getattr(exc, "context", None)
            context_mark = getattr(exc, "context_mark", None)
            if context and context_mark is not None:
                context = f"{context} (opened at line {context_mark.line + 1})"
            reason = ", ".join(str(r) for r in (context, problem) if r) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {path} is not valid YAML{where}: {reason}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        # YAML allows keys of any type (`1:`, `? [a]`, a bare `?` is a null key); settings are named
        odd = next((key for key in data if not isinstance(key, str)), _ALL_TEXT)
        if odd is not _ALL_TEXT:
            raise ConfigError(f"config file {path}: top-level key {str(odd)[:80]!r} is not a setting name")
        return data


def known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` (the path to an unknown key) accepts, or ``[]`` if not a model."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = field.annotation
        # ``Section | None`` and ``list[Section]``: the model inside
        for inner in typing.get_args(current) or ():
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                current = inner
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def describe_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem of ``exc`` (all of them), an unknown key with the closest known one."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = known_keys(model, tuple(err["loc"]))
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems
