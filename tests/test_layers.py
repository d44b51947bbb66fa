"""The import contract: the tree reads as the data path, and no layer reaches up.

sources -> records, queue; sender -> queue, cortex, records; cortex -> records only; the Cortex
simulator is an independent model of Cortex and imports nothing else of the bridge. ``config``,
``metrics``, ``logs`` and ``tasks`` are the foundation every layer may use; ``app``, ``cli``, ``demo`` and
``config_docs``/``schema_docs`` wire the layers together and may use anything. Lazy imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

BRIDGE = ROOT / "bridge"
FOUNDATION = {"bridge.config", "bridge.config_file", "bridge.metrics", "bridge.logs", "bridge.secrets", "bridge.tasks"}

#: package (or module) -> the bridge packages/modules it may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "bridge.records": {"bridge.openapi_spec", "bridge.storable"},
    "bridge.storable": set(),
    "bridge.openapi_spec": set(),
    "bridge.metrics": set(),
    "bridge.config": {"bridge.secrets", "bridge.config_file"},
    "bridge.config_file": set(),
    "bridge.secrets": set(),
    "bridge.tasks": set(),
    "bridge.logs": {"bridge.config"},
    "bridge.queue": {"bridge.records"} | FOUNDATION,
    "bridge.sources": {"bridge.records", "bridge.queue"} | FOUNDATION,
    "bridge.cortex.simulator": set(),
    "bridge.cortex": {"bridge.records"} | FOUNDATION,
    "bridge.sender": {"bridge.queue", "bridge.cortex", "bridge.records"} | FOUNDATION,
}
#: never imported by the delivery path, whatever the table above allows
SIMULATOR = "bridge.cortex.simulator"
TOP = {"bridge.app", "bridge.cli", "bridge.check_config", "bridge.publish_docs", "bridge.queue_commands", "bridge.doctor", "bridge.register_entities",
       "bridge.operator_session", "bridge.demo", "bridge.config_docs", "bridge.schema_docs", "bridge"}
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every bridge module ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from bridge.queue import inspect`` imports a module, not a name
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if (BRIDGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
    return {m for m in found if m == "bridge" or m.startswith("bridge.")}


def layer_of(module: str) -> str | None:
    """The most specific entry of :data:`ALLOWED` that ``module`` belongs to."""
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def within(module: str, targets: set[str]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in targets)


MODULES = sorted(BRIDGE.rglob("*.py"))


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` its layer does not allow."""
    if module in TOP:
        return []
    layer = layer_of(module)
    assert layer is not None, f"{module} belongs to no layer of the import contract: add it to ALLOWED"
    allowed = ALLOWED[layer] | {layer}
    wrong = {m for m in imported if not within(m, allowed) and m != "bridge"}
    if not within(module, {SIMULATOR}):
        wrong |= {m for m in imported if within(m, {SIMULATOR})}
    return sorted(wrong)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_layer_imports_upward(path: Path) -> None:
    module = module_name(path)
    wrong = violations(module, imports_of(path))
    assert not wrong, f"{module} imports {wrong}, which its layer ({layer_of(module)}) may not"


def test_the_contract_can_fail(tmp_path: Path) -> None:
    """The checker sees lazy, relative and module imports, and refuses what reaches up."""
    sender = imports_of(BRIDGE / "sender" / "sender.py")
    assert any(m.startswith("bridge.queue") for m in sender)
    cli = imports_of(BRIDGE / "cli.py")
    assert any(m.startswith("bridge.cortex.simulator") for m in cli), "lazy imports inside functions are seen"
    assert violations("bridge.sources.webhooks.github", {"bridge.cortex.client"}) == ["bridge.cortex.client"]
    assert violations("bridge.cortex.client", {"bridge.queue"}) == ["bridge.queue"]
    assert violations("bridge.sender.sender", {"bridge.cortex.simulator.server"}) == [
        "bridge.cortex.simulator.server"]
    assert violations("bridge.cortex.simulator.store", {"bridge.records"}) == ["bridge.records"]
    assert violations("bridge.queue.store", {"bridge.sources.base"}) == ["bridge.sources.base"]
    assert violations("bridge.sources.webhooks.github", {"bridge.records", "bridge.queue", "bridge.metrics"}) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_are_small_enough_to_read_in_one_sitting(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module_name(path)} has {lines} lines (at most {MAX_MODULE_LINES})"
