"""Screening (bridge/sources/screening.py): an input is skipped before decoding only when the full
pipeline would have ignored it for the same reason; anything else takes the full path."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.sources.base import SourceContext
from bridge.sources.expressions import search
from bridge.sources.kafka.formats import build_decoder, http_headers
from bridge.sources.pipeline import Ignored, InputPipeline, Mapped, Refused
from bridge.sources.screening import condition_of, plain_json
from bridge.sources.webhooks import mapping
from bridge.sources.webhooks.mapping import NO_RULE_MATCHED, truthy
from tests.sources.test_pipeline import NOW, Msg
from tests.support.paths import FIXTURES


def _rule(name: str, when: str) -> dict[str, Any]:
    return {"name": name, "when": when, "kind": "event", "id": ["body.id || 'x'"],
            "constants": {"type": "SCREENED", "title": "t"}}


def _pipeline(ctx: SourceContext, *whens: str) -> InputPipeline:
    built = mapping.adapter({"name": "m", "type": "mapping", "allow_unauthenticated": True,
                             "entity": {"static": {"svc": "checkout-service"}, "lookup": False},
                             "subject": {"keys": ["'svc'"]},
                             "rules": [_rule(f"r{i}", w) for i, w in enumerate(whens)]}, ctx)
    return built.pipeline(ctx)


def _headers(pairs: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", **pairs}))


# -- what a user sees ------------------------------------------------------------------------


async def test_an_irrelevant_message_is_screened_and_a_relevant_one_is_not(ctx: SourceContext) -> None:
    pipeline = _pipeline(ctx, "body.kind == 'incident'")
    deploy = json.dumps({"kind": "deploy", "title": "x"}).encode()
    incident = json.dumps({"kind": "incident", "title": "x"}).encode()
    assert pipeline.screen(_headers({}), deploy) == Ignored(NO_RULE_MATCHED)
    assert pipeline.screen(_headers({}), incident) is None
    assert isinstance(await pipeline.run(_headers({}), incident), Mapped)
    # the same reason either way
    assert await pipeline.run(_headers({}), deploy) == Ignored(NO_RULE_MATCHED)


async def test_malformed_or_unaccepted_bodies_are_never_screened(ctx: SourceContext) -> None:
    pipeline = _pipeline(ctx, "body.kind == 'incident'")
    for body in (b'{"kind": "deploy"', b'{"kind": NaN}', b"\xef\xbb\xbf{}", b'{"kind": "d\\u0065ploy"}'):
        assert pipeline.screen(_headers({}), body) is None, body
    assert isinstance(await pipeline.run(_headers({}), b'{"kind": "deploy"'), Refused)
    text = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain"}))
    assert pipeline.screen(text, b'{"kind": "deploy"}') is None
    assert isinstance(await pipeline.run(text, b'{"kind": "deploy"}'), Refused)


async def test_an_escaped_match_is_not_screened_away(ctx: SourceContext) -> None:
    # "incident" written with an escape: bytes do not contain it, the decoded value does.
    pipeline = _pipeline(ctx, "body.kind == 'incident'")
    body = b'{"kind": "\\u0069ncident"}'
    assert pipeline.screen(_headers({}), body) is None
    assert isinstance(await pipeline.run(_headers({}), body), Mapped)


async def test_a_rule_without_a_known_condition_disables_screening(ctx: SourceContext) -> None:
    pipeline = _pipeline(ctx, "body.kind == 'incident'", "contains(body.tags, 'x')")
    assert pipeline.screen(_headers({}), b'{"kind": "deploy"}') is None


async def test_kafka_mapping_topic_ignores_screened_messages_and_decodes_the_rest(ctx: SourceContext) -> None:
    options = {"rules": [_rule("r", "headers.\"x-kind\" == 'incident' || body.kind == 'incident'")],
               "entity": {"static": {"svc": "checkout-service"}, "lookup": False}, "subject": {"keys": ["'svc'"]}}
    decoder = build_decoder("mapping", source="m", options=options, ctx=ctx)
    assert decoder.ignores(Msg(b'{"kind": "deploy"}'))
    assert not decoder.ignores(Msg(b'{"kind": "deploy"}', [("x-kind", b"incident")]))
    assert not decoder.ignores(Msg(None))  # a tombstone is poison, decided in full
    decoded = await decoder(Msg(b'{"kind": "deploy"}', [("x-kind", b"incident")]), NOW)
    assert [r.entity for r in decoded.records] == ["checkout-service"]
    assert not build_decoder("native", source="n", options={}, ctx=ctx).ignores(Msg(b"{}"))


# -- the class: a condition is necessary, over any document and any expression ----------------

_WORDS = ["incident", "deploy", "push", "", "naïve", "a\"b", "1"]
_KEYS = ["kind", "action", "id", "x-kind", "naïve"]

_scalars = st.one_of(st.sampled_from(_WORDS), st.integers(-2, 2), st.booleans(), st.none())
_documents = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                      st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=12)


def _literal(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "\\'") + "'"


_paths = st.one_of(
    st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3).map(lambda ks: "body." + ".".join(f'"{k}"' for k in ks)),
    st.sampled_from(_KEYS).map(lambda k: f'headers."{k}"'),
    st.just("body"), st.just("headers"), st.just("other.kind"),
)
_atoms = st.one_of(
    st.tuples(_paths, st.sampled_from(_WORDS)).map(lambda t: f"{t[0]} == {_literal(t[1])}"),
    st.tuples(_paths, st.sampled_from(_WORDS)).map(lambda t: f"{_literal(t[1])} == {t[0]}"),
    st.tuples(_paths, st.integers(-1, 1)).map(lambda t: f"{t[0]} == `{t[1]}`"),
    _paths,
    _paths.map(lambda p: f"!{p}"),
    st.tuples(_paths, st.sampled_from(_WORDS)).map(lambda t: f"{t[0]} != {_literal(t[1])}"),
    st.tuples(_paths, st.sampled_from(_WORDS)).map(lambda t: f"lower({t[0]}) == {_literal(t[1])}"),
)
_expressions = st.recursive(_atoms, lambda inner: st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
    lambda t: f"({t[0]}) {t[1]} ({t[2]})"), max_leaves=4)
_header_values = st.dictionaries(st.sampled_from(["x-kind", "X-Kind", "action"]), st.sampled_from(_WORDS), max_size=2)


@settings(max_examples=400, deadline=None)
@given(document=_documents, headers=_header_values, expression=_expressions, ascii_only=st.booleans())
def test_a_failed_condition_means_the_expression_is_not_truthy(
    document: Any, headers: dict[str, str], expression: str, ascii_only: bool
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    condition = condition_of(expression)
    if condition is None or not plain_json(body):
        return
    proxy = _headers(headers)
    evaluated = {"headers": {k.lower(): v for k, v in proxy.items()}, "body": json.loads(body)}
    if not condition(proxy, body):
        assert not truthy(search(expression, evaluated)), (expression, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents, headers=_header_values, whens=st.lists(_expressions, min_size=1, max_size=3))
async def test_screening_never_changes_what_the_pipeline_answers(
    ctx: SourceContext, document: Any, headers: dict[str, str], whens: list[str]
) -> None:
    pipeline = _pipeline(ctx, *whens)
    body = json.dumps(document).encode()
    screened = pipeline.screen(_headers(headers), body)
    if screened is not None:
        assert screened == Ignored(NO_RULE_MATCHED)
        # the full path without screening
        decoded = pipeline.mapper.decode(_headers(headers), body)
        rules = pipeline.mapper.settings.rules  # type: ignore[attr-defined]
        evaluated = {"headers": {k.lower(): v for k, v in _headers(headers).items()}, "body": decoded}
        assert not any(truthy(search(rule.when, evaluated)) for rule in rules)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents, headers=_header_values, whens=st.lists(_expressions, min_size=1, max_size=3),
       malformed=st.booleans())
def test_a_kafka_topic_ignores_exactly_what_the_pipeline_screens(
    ctx: SourceContext, document: Any, headers: dict[str, str], whens: list[str], malformed: bool
) -> None:
    # Messages without headers take a screening decided once per topic; with headers, per message.
    options = {"rules": [_rule(f"r{i}", w) for i, w in enumerate(whens)],
               "entity": {"static": {"svc": "checkout-service"}, "lookup": False}, "subject": {"keys": ["'svc'"]}}
    decoder = build_decoder("mapping", source="m", options=options, ctx=ctx)
    pipeline = _pipeline(ctx, *whens)
    body = json.dumps(document).encode() + (b"}" if malformed else b"")
    for message in (Msg(body), Msg(body, [(k, v.encode()) for k, v in headers.items()])):
        expected = pipeline.screen(http_headers(message), body) is not None
        assert decoder.ignores(message) is expected
        assert decoder.ignores(message) is expected  # the second time from what was decided once


def test_real_payloads_are_screened_only_when_no_rule_would_match() -> None:
    """Every real webhook fixture against conditions on the fields CI systems put first."""
    whens = ["body.action == 'completed'", "body.kind == 'incident'", "headers.\"x-github-event\" == 'push'",
             "body.object_kind == 'pipeline' && body.object_attributes.status == 'success'",
             "body.deployment_status", "body.build.status == 'FAILURE' || body.status == 'failed'"]
    checked = 0
    for path in sorted((FIXTURES / "webhooks").rglob("*.json")):
        body = path.read_bytes()
        if not plain_json(body):
            continue
        document = {"headers": {"content-type": "application/json"}, "body": json.loads(body)}
        for when in whens:
            condition = condition_of(when)
            assert condition is not None, when
            if not condition(_headers({}), body):
                assert not truthy(search(when, document)), (path.name, when)
            checked += 1
    assert checked > 100
