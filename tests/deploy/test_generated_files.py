"""Files generated from the chart and the settings model are up to date."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from _deploy_support import ROOT, render

import bridge
from bridge import config_docs
from bridge.config import Settings


def test_plain_manifests_match_the_chart() -> None:
    stale = [str(p.relative_to(ROOT)) for p in render.stale_files()]
    assert not stale, f"out of date, run `python deploy/render.py`: {stale}"


def test_plain_manifests_cover_every_example() -> None:
    names = {p.name for p in render.MANIFESTS_DIR.glob("*.yaml")}
    assert names == {p.name for p in render.example_paths()} | {"monitoring.yaml"}
    kinds = {d["kind"] for d in yaml.safe_load_all((render.MANIFESTS_DIR / "monitoring.yaml").read_text()) if d}
    assert kinds == {"ServiceMonitor", "PrometheusRule"}


def test_stale_check_notices_edits_and_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in render.MANIFESTS_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(render, "MANIFESTS_DIR", tmp_path)
    assert render.stale_files() == []
    edited = tmp_path / "webhooks-only.yaml"
    edited.write_text(edited.read_text().replace("replicas: 1", "replicas: 2"))
    (tmp_path / "old-example.yaml").write_text("kind: ConfigMap\n")
    assert set(render.stale_files()) == {edited, tmp_path / "old-example.yaml"}


def test_render_script_check_mode_passes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "render.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_values_schema_config_is_the_settings_model() -> None:
    schema = json.loads(render.SCHEMA_PATH.read_text())
    assert schema["properties"]["config"] == render.config_schema()
    sections = schema["properties"]["config"]["properties"]
    assert set(sections) == set(Settings.model_fields)


def test_configuration_doc_is_generated_from_the_settings() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config_docs.render_markdown(), "run `python -m bridge.config_docs > docs/configuration.md`"


def test_configuration_doc_lists_every_setting() -> None:
    doc = config_docs.render_markdown()
    settings = list(config_docs.iter_settings())
    assert len(settings) >= 25
    for s in settings:
        assert f"`{s.key}`" in doc and f"`{s.env}`" in doc
    assert "`BRIDGE_CORTEX__RATE_LIMIT_PER_MINUTE`" in doc
    row = next(line for line in doc.splitlines() if line.startswith("| `queue.path`"))
    assert "`/var/lib/cortex-bridge/queue.db`" in row and "path" in row


def test_config_docs_module_prints_the_doc() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge.config_docs"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert result.stdout == config_docs.render_markdown()


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((render.CHART_DIR / "Chart.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The package declares its version once, in bridge/__init__.py; pyproject reads it from there.
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bridge.__version__"}
    assert chart["appVersion"] == bridge.__version__
