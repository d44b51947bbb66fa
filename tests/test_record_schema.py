"""The native record reference is generated from the models, kept up to date, served, and agrees
with what ``POST /v1/records`` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import aiohttp
import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import schema_docs
from bridge.cortex.simulator import SimulatorServer
from bridge.sources.native import RecordErrors, native_input_schema, parse_native
from tests.support.cortex import BridgeFactory
from tests.support.paths import ROOT
from tests.support.records import deploy, event, point

VALIDATOR = jsonschema.Draft202012Validator(native_input_schema(), format_checker=jsonschema.FormatChecker())


def test_the_generated_files_are_up_to_date() -> None:
    assert schema_docs.stale_files() == [], "run `python3 -m bridge.schema_docs`"
    assert json.loads((ROOT / "docs" / "record-schema.json").read_text()) == native_input_schema()


def test_check_mode_reports_a_stale_file(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(schema_docs, "MARKDOWN_PATH", tmp_path / "records.md")
    monkeypatch.setattr(schema_docs, "SCHEMA_PATH", tmp_path / "record-schema.json")
    assert schema_docs.main(["--check"]) == 1
    assert schema_docs.main([]) == 0 and schema_docs.main(["--check"]) == 0
    (tmp_path / "records.md").write_text("edited\n")
    assert schema_docs.stale_files() == [tmp_path / "records.md"]


def test_the_module_runs_in_check_mode_on_the_repository() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge.schema_docs", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_docs_page_names_every_field_of_every_kind() -> None:
    page = schema_docs.render_markdown()
    defs = native_input_schema()["$defs"]
    for name in ("DeployRecord", "EventRecord", "MetricRecord", "CustomDataRecord", "DependencyRecord", "DocsRecord"):
        for field in defs[name]["properties"]:
            assert f"`{field}`" in page
    assert "## `custom_data`" in page and "`GET /v1/schema`" in page


def test_records_the_endpoint_accepts_are_valid_against_the_schema() -> None:
    body = {"records": [deploy(1), event(2), point(3),
                        {"kind": "custom_data", "entity": "inventory", "key": "owner", "value": {"team": "x"}},
                        {**point(4), "timestamp": 1740830400, "id": "my-id"},
                        {"kind": "dependency", "entity": "checkout", "callee": "payments", "method": "POST",
                         "path": "/charges"},
                        {"kind": "docs", "entity": "checkout", "spec": OPENAPI},
                        {"kind": "docs", "entity": "checkout", "spec": json.dumps(OPENAPI)}]}
    parse_native(body, source="native")
    VALIDATOR.validate(body)
    VALIDATOR.validate(deploy(5))


def test_bodies_the_endpoint_refuses_are_invalid_against_the_schema() -> None:
    refused: list[dict[str, Any]] = [{"entity": "x", "title": "no kind", "timestamp": 1},
                 {**deploy(1), "colour": "blue"},
                 {"kind": "metric", "entity": "x", "key": "lead-time", "timestamp": 1},
                 {"records": []},
                 {"kind": "custom_data", "entity": "x", "key": "k"}]
    for body in refused:
        assert not VALIDATOR.is_valid(body), body
        try:
            parse_native(body, source="native")
        except RecordErrors:
            continue
        raise AssertionError(f"accepted: {body}")


#: the smallest OpenAPI 3 document the door accepts
OPENAPI = {"openapi": "3.0.3", "info": {"title": "checkout", "version": "1"}, "paths": {}}

fields = st.fixed_dictionaries(
    {"kind": st.sampled_from(["deploy", "event", "metric", "custom_data", "dependency", "docs"]),
     "entity": st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/"),
                       min_size=1, max_size=20)},
    optional={"title": st.text(min_size=1, max_size=10), "type": st.sampled_from(["DEPLOY", "ROLLBACK", "X"]),
              "key": st.sampled_from(["lead-time", "k", "-bad"]), "value": st.none() | st.floats(allow_nan=False)
              | st.text(max_size=5), "timestamp": st.integers(0, 2_000_000_000) | st.just("2025-03-01T12:00:00Z")
              | st.just("yesterday"), "sha": st.text(max_size=5), "colour": st.text(max_size=3),
              "callee": st.sampled_from(["payments", "a/b"]), "method": st.sampled_from(["GET", "FETCH"]),
              "path": st.sampled_from(["/charges", ""]), "spec": st.just(OPENAPI) | st.just(json.dumps(OPENAPI))
              | st.just({"swagger": "2.0"}) | st.text(max_size=5)})


@settings(max_examples=300, deadline=None)
@given(record=fields)
def test_whatever_the_endpoint_accepts_the_schema_accepts(record: dict[str, Any]) -> None:
    try:
        parse_native(record, source="native")
    except RecordErrors:
        return
    VALIDATOR.validate(record)


async def test_the_schema_is_served(make_bridge: BridgeFactory, sim: SimulatorServer) -> None:
    bridge = await make_bridge(sim, ingest={"token": "needed-for-posts-not-for-the-schema"})
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{bridge.ingest_port}/v1/schema") as resp:
        assert resp.status == 200 and resp.content_type == "application/schema+json"
        assert await resp.json(content_type=None) == native_input_schema()
