"""``cortex-bridge preview``: what a payload would become, with nothing stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from tests.support.webhooks import FIXTURES, SECRET, github_signature

DEPLOYMENT = FIXTURES / "github" / "deployment_status.success.json"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({
        "queue": {"path": str(tmp_path / "queue.db")},
        "ingest": {"token": "ingest-token"},
        "sources": [
            {"name": "github", "type": "github", "secrets": [SECRET],
             "entity": {"static": {"Codertocat/Hello-World": "hello-world"}}},
            {"name": "github-unmapped", "type": "github", "secrets": [SECRET]},
        ],
    }))
    return path


def preview(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any, str]:
    code = main(["--config", str(config), "preview", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def test_preview_prints_the_records(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, result, _ = preview(capsys, config, "--source", "github", str(DEPLOYMENT),
                              "--header", "X-GitHub-Event: deployment_status", "-H", "X-GitHub-Delivery:abc")
    assert code == 0
    assert result["outcome"] == "records" and result["delivery_id"] == "abc"
    [record] = result["records"]
    assert {k: record[k] for k in ("kind", "entity", "title", "timestamp", "sha", "environment")} == {
        "kind": "deploy", "entity": "hello-world", "title": "Deploy f95f852 to production",
        "timestamp": "2019-05-15T15:20:55.000Z", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        "environment": "production"}
    assert result["authentication"].startswith("not checked")
    assert not (config.parent / "queue.db").exists()


def test_preview_shows_dead_letters_without_a_catalog(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, result, _ = preview(capsys, config, "--source", "github-unmapped", str(DEPLOYMENT),
                              "-H", "X-GitHub-Event: deployment_status")
    assert code == 0 and result["records"] == []
    [dead] = result["dead_letters"]
    assert (dead["reason"], dead["detail"]) == (
        "entity-unresolved", "no static entry for Codertocat/Hello-World; no template; no Cortex catalog to look up")
    assert dead["records"][0]["entity"] == "Hello-World"


def test_preview_of_an_ignored_payload(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, result, _ = preview(capsys, config, "--source", "github", str(FIXTURES / "github" / "check_run.completed.failure.json"),
                              "-H", "X-GitHub-Event: check_run")
    assert (code, result["outcome"], result["reason"]) == (0, "ignored", "event-not-mapped: check_run")


def test_preview_checks_signatures_on_request(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    args = ["--source", "github", str(DEPLOYMENT), "-H", "X-GitHub-Event: deployment_status", "--verify-signature"]
    code, result, _ = preview(capsys, config, *args)
    assert (code, result) == (1, {"outcome": "rejected", "status": 401,
                                  "reason": "authentication failed: missing X-Hub-Signature-256 header"})
    signature = github_signature(DEPLOYMENT.read_bytes())
    code, result, _ = preview(capsys, config, *args, "-H", f"X-Hub-Signature-256: {signature}")
    assert (code, result["outcome"]) == (0, "records")
    assert "authentication" not in result


@pytest.mark.parametrize(("args", "error"), [
    (["--source", "nope", str(DEPLOYMENT)], "cortex-bridge: error: no source named 'nope' in the configuration\n"),
    (["--source", "github", str(DEPLOYMENT), "-H", "no-colon"],
     "cortex-bridge: error: --header 'no-colon': expected NAME:VALUE\n"),
    (["--source", "github", "/no/such/file"], "cortex-bridge: error: cannot read /no/such/file: "
                                               "No such file or directory\n"),
])
def test_preview_errors_are_one_line(capsys: pytest.CaptureFixture[str], config: Path, args: list[str],
                                     error: str) -> None:
    code, result, err = preview(capsys, config, *args)
    assert code in (1, 2) and result is None and err == error
