"""The import contract of the delivery path: which bridge packages each layer may import.

* ``bridge.cortex`` (the Cortex API layer) knows records, metrics, config and logs, nothing of
  the queue, the sender or the sources;
* ``bridge.cortex.simulator`` imports nothing of the bridge outside itself: it is an independent
  model of Cortex, and agreeing with the bridge by construction would hide bugs;
* ``bridge.sender`` batches queued records into Cortex requests: queue, cortex, records, config,
  metrics; never the simulator.

Every ``import`` counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

BRIDGE = ROOT / "bridge"

#: layer -> (bridge modules it may import, by prefix; prefixes it may never import)
CONTRACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bridge.cortex": (("bridge.records", "bridge.metrics", "bridge.config", "bridge.logs", "bridge.cortex"),
                      ("bridge.cortex.simulator",)),
    "bridge.cortex.simulator": (("bridge.cortex.simulator",), ()),
    "bridge.sender": (("bridge.queue", "bridge.cortex", "bridge.records", "bridge.config", "bridge.metrics",
                       "bridge.sender"), ("bridge.cortex.simulator",)),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bridge_imports(source: str, module: str) -> set[str]:
    """Every ``bridge`` module that ``source`` (the text of ``module``) imports."""
    found: set[str] = set()
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                base = ".".join(package[: len(package) - node.level] + ([base] if base else []))
            if base == "bridge":  # ``from bridge import metrics`` imports bridge.metrics
                found.update(f"bridge.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return {name for name in found if name == "bridge" or name.startswith("bridge.")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(layer: str, module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that ``layer``'s contract forbids."""
    allowed, forbidden = CONTRACTS[layer]
    return sorted(name for name in imported
                  if not any(_within(name, p) for p in allowed) or any(_within(name, p) for p in forbidden))


def _layer_of(module: str) -> str:
    return max((layer for layer in CONTRACTS if _within(module, layer)), key=len)


def _modules(layer: str) -> list[Path]:
    return sorted((BRIDGE / Path(*layer.split(".")[1:])).rglob("*.py"))


@pytest.mark.parametrize("layer", list(CONTRACTS))
def test_layer_imports_only_what_its_contract_allows(layer: str) -> None:
    paths = _modules(layer)
    assert paths, f"no modules found for {layer}"
    broken = {}
    for path in paths:
        module = _module_name(path)
        if _layer_of(module) != layer:
            continue  # a nested layer (the simulator) has a contract of its own
        bad = violations(layer, module, bridge_imports(path.read_text(), module))
        if bad:
            broken[module] = bad
    assert not broken, broken


def test_the_contract_check_can_fail() -> None:
    """The check above sees module-level, function-level, ``from bridge import`` and relative imports."""
    source = (
        "from bridge import metrics, queue\n"
        "from bridge.records import utc_now\n"
        "from ..sender.sender import Sender\n"
        "def f():\n"
        "    import bridge.sources.base\n"
        "    from bridge.cortex.simulator.server import serve\n"
    )
    imported = bridge_imports(source, "bridge.cortex.client")
    assert violations("bridge.cortex", "bridge.cortex.client", imported) == [
        "bridge.cortex.simulator.server", "bridge.queue", "bridge.sender.sender", "bridge.sources.base"]
    assert violations("bridge.cortex.simulator", "bridge.cortex.simulator.store",
                      bridge_imports("from bridge.records import format_timestamp\n",
                                     "bridge.cortex.simulator.store")) == ["bridge.records"]
