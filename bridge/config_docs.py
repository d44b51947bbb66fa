"""Documents derived from the settings model, so they cannot drift from what the daemon reads.

* :func:`render_markdown` is ``docs/configuration.md``: every setting with its type, default,
  environment variable and description (``python -m bridge.config_docs > docs/configuration.md``),
  then the keys of each source type, from the settings model the type validates its entry of
  ``sources`` with (found through :mod:`bridge.sources.registry`; ``Settings.sources`` itself is a
  list of mappings, so that :mod:`bridge.config` does not depend on the sources).
* :func:`settings_json_schema` is the JSON Schema of the YAML config file, with ``$ref``s inlined
  so it can be embedded in another schema (the Helm chart's ``values.schema.json`` embeds it under
  ``config``, minus the keys the chart sets itself).
"""

from __future__ import annotations

import copy
import json
import sys
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridge.config import Settings
from bridge.sources.registry import SOURCE_TYPES, settings_model

ENV_PREFIX = "BRIDGE_"
ENV_NESTED_DELIMITER = "__"


@dataclass(frozen=True)
class SettingDoc:
    """One leaf setting as documented."""

    key: str  #: dotted path in the YAML file, e.g. ``cortex.url``
    type: str
    default: str
    env: str
    description: str
    constraints: str


def _type_name(annotation: Any) -> str:
    """A reader-friendly name of a field's type (``int``, ``path or null``, ``one of: a, b``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained type (e.g. a metric key): its base type
        return _type_name(args[0])
    if origin is typing.Literal:
        return "one of: " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "path"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of: " + ", ".join(f"`{m.value}`" for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "(not set)"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{value:.1f}`"
    return f"`{json.dumps(value)}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        if isinstance(meta, Ge):
            parts.append(f"≥ {meta.ge}")
        elif isinstance(meta, Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, Le):
            parts.append(f"≤ {meta.le}")
        elif isinstance(meta, Lt):
            parts.append(f"< {meta.lt}")
    return ", ".join(parts)


def _env_name(path: list[str]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in path)


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def iter_settings(model: type[BaseModel] = Settings, prefix: list[str] | None = None) -> Iterator[SettingDoc]:
    """Every leaf setting of ``model`` in declaration order, sections expanded."""
    prefix = prefix or []
    for name, field in model.model_fields.items():
        path = [*prefix, name]
        section = _section_model(field)
        if section is not None:
            yield from iter_settings(section, path)
            continue
        yield SettingDoc(
            key=".".join(path),
            type=_type_name(field.annotation),
            default=_default_text(field),
            env=_env_name(path),
            description=(field.description or "").strip(),
            constraints=_constraints(field),
        )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_INTRO = """\
# Configuration reference

<!-- Generated by `python -m bridge.config_docs > docs/configuration.md` from the settings model
     in bridge/config.py and those of the source types (bridge/sources/registry.py). Do not edit
     by hand: tests/deploy/test_generated_files.py fails when it is stale. -->

The bridge reads one YAML file, given with `cortex-bridge --config PATH` or the `BRIDGE_CONFIG`
environment variable, then applies `BRIDGE_*` environment variables on top (they win). A nested
key becomes a variable by joining its parts with `__`: `cortex.rate_limit_per_minute` is
`BRIDGE_CORTEX__RATE_LIMIT_PER_MINUTE`. Lists and mappings given as variables are JSON
(`BRIDGE_SOURCES='[{"name": "github", "type": "github"}]'`). Unknown keys are an error, so a typo
fails at start instead of being ignored. `cortex-bridge check-config` prints the effective
configuration with secrets hidden.

Secrets (`cortex.token`, `ingest.token`) are best given as files: `cortex.token_file` and
`ingest.token_file` point at files mounted from a Kubernetes Secret (the Helm chart does this),
and the Cortex token file is read again after a 401, so a rotated token is picked up without a
restart. A file setting wins over the inline value.

In the Helm chart, these settings go under `config:` in the values; the chart sets the listen
ports, the queue backend, path and DSN file, and the secret file paths itself (see
`helm/cortex-bridge/values.yaml`).
"""


#: One line under each section's heading; a section without one gets just its table.
SECTION_NOTES = {
    "cortex": "Where and how fast records are sent to Cortex.",
    "queue": "The durable SQLite queue: a 2xx to any input means the records are in this file.",
    "retry": "What happens to a record Cortex did not accept.",
    "http": "The ingest listener: webhooks, `POST /v1/records`, `GET /healthz`, `GET /readyz`.",
    "metrics": "The Prometheus listener: `GET /metrics`.",
    "ingest": "Authentication of `POST /v1/records` (webhook sources authenticate with their own secrets).",
    "log": "Logs go to stderr, one line per event (stdout carries only the output of CLI commands). With "
           "`format: json` every line is one JSON object, the libraries' own log records (aiohttp, aiokafka) "
           "included; those are written from warning up.",
    "drain": "Shutdown on SIGTERM (docs/operations.md, \"Drain contract\").",
    "sources": "Each source's own keys depend on its `type`: see the sections below. Secrets of sources are "
               "best given as files (`*_file` keys).",
}


def _section_title(name: str) -> str:
    return f"`{name}`"


def render_markdown() -> str:
    """The complete ``docs/configuration.md``."""
    out = [_INTRO]
    for name, field in Settings.model_fields.items():
        model = _section_model(field)
        out.append(f"\n## {_section_title(name)}\n")
        if name in SECTION_NOTES:
            out.append(SECTION_NOTES[name] + "\n")
        out.append("| Setting | Type | Default | Environment variable | Description |")
        out.append("| --- | --- | --- | --- | --- |")
        settings = iter_settings(model, [name]) if model is not None else (
            s for s in iter_settings() if s.key == name
        )
        for s in settings:
            type_text = s.type + (f" ({s.constraints})" if s.constraints else "")
            out.append(
                f"| `{s.key}` | {_cell(type_text)} | {_cell(s.default)} | `{s.env}` | {_cell(s.description)} |"
            )
    out.extend(_source_type_sections())
    return "\n".join(out) + "\n"


def _source_type_sections() -> list[str]:
    """One table per source type: the keys of a ``sources`` entry of that type.

    No environment variable column: a source is one item of ``BRIDGE_SOURCES`` (JSON), not a
    variable of its own.
    """
    out = []
    for kind in SOURCE_TYPES:
        out.append(f"\n## Source type `{kind}`\n")
        out.append(f"The keys of an entry of `sources` with `type: {kind}`.\n")
        out.append("| Setting | Type | Default | Description |")
        out.append("| --- | --- | --- | --- |")
        for s in iter_settings(settings_model(kind)):
            type_text = s.type + (f" ({s.constraints})" if s.constraints else "")
            out.append(f"| `{s.key}` | {_cell(type_text)} | {_cell(s.default)} | {_cell(s.description)} |")
    return out


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = node["$ref"].rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[target]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline_refs(merged, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k not in ("title", "$defs")}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _drop_formats(node: Any) -> Any:
    """Remove pydantic's private formats (``path``, ``password``) that JSON Schema validators reject."""
    if isinstance(node, dict):
        return {
            k: _drop_formats(v)
            for k, v in node.items()
            if not (k == "format" and v in ("path", "password")) and k != "writeOnly"
        }
    if isinstance(node, list):
        return [_drop_formats(v) for v in node]
    return node


def settings_json_schema(exclude: Iterable[str] = ()) -> dict[str, Any]:
    """JSON Schema of the config file, self-contained; ``exclude`` drops dotted keys (``http.port``)."""
    raw = Settings.model_json_schema()
    schema: dict[str, Any] = _drop_formats(_inline_refs(raw, raw.get("$defs", {})))
    schema.pop("default", None)
    for key in exclude:
        *parents, leaf = key.split(".")
        node = schema
        for part in parents:
            node = node["properties"][part]
        if leaf not in node["properties"]:
            raise KeyError(f"no setting {key!r} to exclude")
        del node["properties"][leaf]
        if leaf in node.get("required", []):
            node["required"].remove(leaf)
    for section in schema["properties"].values():
        # Section defaults repeat the leaf defaults; a reader of the schema needs them only once.
        section.pop("default", None)
    return schema


def main() -> int:
    """Print ``docs/configuration.md`` to stdout."""
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
