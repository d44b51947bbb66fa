"""The dependency and docs record kinds: what the door accepts, and that it reads back as sent.

The OpenAPI documents are Cortex's own official spec (tests/fixtures/cortex/openapi.json, a
real OpenAPI 3.0.1 document of 190 paths), as JSON and converted to YAML.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.openapi_spec import MAX_SPEC_BYTES
from bridge.records import (
    RECORD_ADAPTER,
    DependencyRecord,
    DocsRecord,
    describe_invalid,
    encode_record,
    lane_of,
    record_from_json,
)
from tests.support.paths import FIXTURES

REAL_SPEC = (FIXTURES / "cortex" / "openapi.json").read_text()


def record(**fields: Any) -> Any:
    return RECORD_ADAPTER.validate_python({"id": "r1", "provenance": {"source": "test"}, **fields})


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        record(**fields)
    return describe_invalid(caught.value)


def test_a_real_openapi_document_is_accepted_as_json_text_as_an_object_and_as_yaml() -> None:
    document = json.loads(REAL_SPEC)
    as_text = record(kind="docs", entity="svc", spec=REAL_SPEC)
    as_object = record(kind="docs", entity="svc", spec=document)
    as_yaml = record(kind="docs", entity="svc", spec=yaml.safe_dump(document, sort_keys=False))
    assert isinstance(as_text, DocsRecord)
    assert json.loads(as_text.spec) == json.loads(as_object.spec) == json.loads(as_yaml.spec) == document
    assert record_from_json(encode_record(as_yaml)) == as_yaml  # what the sender reads back
    assert lane_of(as_text) == "docs\x1fsvc"


@pytest.mark.parametrize(("spec", "reason"), [
    ({"swagger": "2.0", "info": {"title": "t", "version": "1"}}, "must be OpenAPI 3.x (no 'openapi' field"),
    ({"openapi": "2.0", "info": {"title": "t", "version": "1"}}, "'openapi' is '2.0'"),
    ({"openapi": "3.0.1"}, "requires 'info' with 'title' and 'version'"),
    ({"openapi": "3.0.1", "info": {"title": "t", "version": "1"}, "paths": []}, "'paths' must be an object"),
    ("[1, 2]", "must be an OpenAPI document"),
    ("openapi: [unclosed", "neither JSON nor YAML"),
    ({"openapi": "3.0.1", "info": {"title": "t", "version": "1"}, "x": float("nan")}, "cannot be written as JSON"),
])
def test_what_is_not_an_openapi_3_document_is_refused_with_the_reason(spec: Any, reason: str) -> None:
    assert reason in refusal(kind="docs", entity="svc", spec=spec)


def test_yaml_anchors_that_expand_beyond_what_fits_are_refused_before_expansion() -> None:
    bomb = "openapi: 3.0.1\ninfo: {title: t, version: '1'}\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n"
    for level in range(1, 10):  # 10^10 nodes once written out
        bomb += f"x{level}: &x{level} [{', '.join([f'*x{level - 1}'] * 10)}]\n"
    assert "anchors and aliases expand" in refusal(kind="docs", entity="svc", spec=bomb)


def test_a_document_too_large_for_one_cortex_request_is_refused() -> None:
    big = {"openapi": "3.0.1", "info": {"title": "t", "version": "1"}, "x-pad": "p" * MAX_SPEC_BYTES}
    assert "fit in one Cortex request" in refusal(kind="docs", entity="svc", spec=big)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_text_is_a_document_or_a_validation_error_never_a_crash(text: str | bytes) -> None:
    try:
        docs = record(kind="docs", entity="svc", spec=text)
    except ValidationError as exc:
        assert describe_invalid(exc)
    else:
        assert json.loads(docs.spec)["openapi"].startswith("3.")
        assert record_from_json(encode_record(docs)) == docs


def test_a_dependency_names_caller_and_callee_and_optionally_one_endpoint() -> None:
    edge = record(kind="dependency", entity="orders", callee="payments", method="POST", path="/charge",
                  description="charges a card", metadata={"protocol": "grpc"})
    assert isinstance(edge, DependencyRecord)
    assert edge.edge == ("orders", "payments", "POST", "/charge")
    assert record_from_json(encode_record(edge)) == edge
    assert lane_of(edge) == "dependency"  # one bulk request carries many callers


@pytest.mark.parametrize(("fields", "reason"), [
    ({"callee": "payments", "method": "POST"}, "method and path go together"),
    ({"callee": "payments", "path": "/x"}, "method and path go together"),
    ({"callee": "payments", "method": "FETCH", "path": "/x"}, "method"),
    ({"callee": "team/payments"}, "callee must be a Cortex tag"),
    ({"callee": " payments"}, "callee must be a Cortex tag"),
    ({"callee": ""}, "callee"),
    ({}, "callee"),
])
def test_an_incomplete_dependency_is_refused_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    assert reason in refusal(kind="dependency", entity="orders", **fields)


@given(st.dictionaries(st.sampled_from(["callee", "method", "path", "description", "metadata"]),
                       st.none() | st.text(max_size=20) | st.integers() | st.dictionaries(st.text(max_size=5),
                                                                                         st.integers())))
def test_any_dependency_fields_are_a_record_that_reads_back_or_a_validation_error(fields: dict[str, Any]) -> None:
    try:
        edge = record(kind="dependency", entity="orders", **fields)
    except ValidationError as exc:
        assert describe_invalid(exc)
    else:
        assert record_from_json(encode_record(edge)) == edge
