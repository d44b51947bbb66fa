"""``cortex-bridge preview`` and the Cortex catalog: looked up only when asked, and said so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from bridge.cortex.simulator import SimulatorServer
from tests.support.webhooks import FIXTURES, SECRET, SIM_TOKEN, github_signature

DEPLOYMENT = FIXTURES / "github" / "deployment_status.success.json"


def write_config(tmp_path: Path, cortex_url: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({
        "cortex": {"url": cortex_url, "token": SIM_TOKEN},
        "queue": {"path": str(tmp_path / "queue.db")},
        "ingest": {"allow_unauthenticated": True},
        # No static map and no template: only the catalog knows Codertocat/Hello-World's entity.
        "sources": [{"name": "github", "type": "github", "secrets": [SECRET]}],
    }))
    return path


async def preview(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, Any]:
    body = DEPLOYMENT.read_bytes()
    args = ["--config", str(config), "preview", "--source", "github", str(DEPLOYMENT), *extra,
            "-H", "X-GitHub-Event: deployment_status", "-H", f"X-Hub-Signature-256: {github_signature(body)}"]
    # In a thread: the simulator answers from this test's event loop, the CLI runs its own.
    code = await asyncio.to_thread(main, args)
    out, _ = capsys.readouterr()
    return code, json.loads(out)


async def test_without_the_flag_the_lookup_is_skipped_and_said_so(
        cortex: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = await preview(capsys, write_config(tmp_path, cortex.url))
    assert code == 0 and result["records"] == []
    assert "no Cortex catalog to look up" in result["dead_letters"][0]["detail"]
    assert result["catalog_lookup"].startswith("skipped: add --lookup-catalog")


async def test_with_the_flag_the_catalog_resolves_the_entity_as_the_daemon_would(
        cortex: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = await preview(capsys, write_config(tmp_path, cortex.url), "--lookup-catalog")
    assert code == 0 and result["dead_letters"] == []
    assert [r["entity"] for r in result["records"]] == ["hello-world"]
    assert result["catalog_lookup"] == f"asked Cortex at {cortex.url}"
    assert not (tmp_path / "queue.db").exists()  # nothing stored


async def test_an_unreachable_cortex_is_a_dead_letter_with_the_reason_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = await preview(capsys, write_config(tmp_path, "http://127.0.0.1:9"), "--lookup-catalog")
    assert code == 0 and result["records"] == []
    assert "catalog lookup of Codertocat/Hello-World failed" in result["dead_letters"][0]["detail"]
