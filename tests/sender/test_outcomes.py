"""The outcome classifier as a table: every status class and the edge cases, for both send paths."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.cortex.client import Ambiguous, CortexResponse, NotSent
from bridge.records import RecordKind
from bridge.sender.outcomes import Outcome, classify_failure, classify_response

ERROR_BODY = {"message": "Bad Request", "details": "title: required"}

TABLE = [
    (200, "deploy", Outcome.DELIVERED),
    (201, "event", Outcome.DELIVERED),
    (204, "metric", Outcome.DELIVERED),
    (100, "deploy", Outcome.RETRY),
    (302, "deploy", Outcome.RETRY),
    (400, "metric", Outcome.REJECT),
    (401, "deploy", Outcome.AUTH),
    (403, "custom_data", Outcome.AUTH),
    (404, "event", Outcome.NOT_FOUND),
    (405, "deploy", Outcome.REJECT),
    (408, "deploy", Outcome.RETRY),
    (409, "event", Outcome.RETRY),
    (413, "custom_data", Outcome.REJECT),
    (422, "metric", Outcome.REJECT),
    (429, "metric", Outcome.RATE_LIMITED),
    (451, "deploy", Outcome.REJECT),
    (499, "deploy", Outcome.REJECT),
    (500, "deploy", Outcome.RETRY),
    (502, "custom_data", Outcome.RETRY),
    (503, "metric", Outcome.RETRY),
    (504, "event", Outcome.RETRY),
    (599, "deploy", Outcome.RETRY),
]


@pytest.mark.parametrize(("status", "kind", "outcome"), TABLE)
def test_status_table(status: int, kind: RecordKind, outcome: Outcome) -> None:
    verdict = classify_response(CortexResponse(status, ERROR_BODY), kind)
    assert verdict.outcome is outcome
    assert verdict.status == status


@pytest.mark.parametrize(("status", "error"), [
    (400, "Cortex 400: Bad Request - title: required"),
    (401, "Cortex rejected the token (401)"),
    (403, "Cortex rejected the token (403)"),
    (404, "Bad Request - title: required"),
    (429, "rate limited (429)"),
    (503, "Cortex 503: Bad Request - title: required"),
])
def test_errors_recorded_in_the_queue(status: int, error: str) -> None:
    verdict = classify_response(CortexResponse(status, ERROR_BODY), "deploy")
    assert verdict.error == error
    assert verdict.message == "Bad Request - title: required"


def test_created_uuid_is_kept() -> None:
    verdict = classify_response(CortexResponse(200, {"uuid": "u-1"}), "deploy")
    assert verdict.cortex_uuid == "u-1" and verdict.missing == frozenset()
    assert classify_response(CortexResponse(200, None), "deploy").cortex_uuid is None


@pytest.mark.parametrize(("kind", "body", "missing"), [
    ("custom_data", {"errors": {"ghost": "NOT_FOUND", "svc": "other"}}, {"ghost"}),
    ("custom_data", {"errors": {"ghost": "not_found"}}, {"ghost"}),
    ("custom_data", {"errors": None}, set()),
    ("custom_data", "not json", set()),
    ("metric", {"errors": {"ghost": "NOT_FOUND"}}, set()),  # only custom data reports per entity
])
def test_custom_data_200_with_not_found_entities(kind: RecordKind, body: Any, missing: set[str]) -> None:
    verdict = classify_response(CortexResponse(200, body), kind)
    assert verdict.outcome is Outcome.DELIVERED
    assert verdict.missing == missing


def test_a_response_outside_a_write_has_no_missing_entities() -> None:
    verdict = classify_response(CortexResponse(200, {"errors": {"ghost": "NOT_FOUND"}}))
    assert verdict.outcome is Outcome.DELIVERED and verdict.missing == frozenset()


@pytest.mark.parametrize(("exc", "harmless", "outcome"), [
    (NotSent("refused"), False, Outcome.RETRY),
    (NotSent("refused"), True, Outcome.RETRY),
    (Ambiguous("timeout"), False, Outcome.AMBIGUOUS),
    (Ambiguous("timeout"), True, Outcome.RETRY),
])
def test_failures(exc: NotSent | Ambiguous, harmless: bool, outcome: Outcome) -> None:
    verdict = classify_failure(exc, resend_is_harmless=harmless)
    assert verdict.outcome is outcome
    assert verdict.error == str(exc) and verdict.status is None
