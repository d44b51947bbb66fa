"""Correctly signed real payloads carrying what an attacker would put in them: lone surrogates
(``\\ud800`` escapes), NaN/Infinity tokens, nesting up to ~1000 levels. Each delivery gets a 2xx
or a 4xx with a reason — never a 5xx — and whatever was accepted reads back as a record."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.records import record_from_json
from bridge.sources.payload import dig
from tests.support.cortex import hostile_json
from tests.support.queue_file import stored_rows
from tests.support.webhooks import (
    FIXTURES_BY_SOURCE,
    SOURCES,
    Running,
    StartBridge,
    credentials,
    fixture_json,
    paths,
    records_for,
)

HOSTILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

surrogate_text = st.builds(lambda a, s: a + s, st.text(max_size=6),
                           st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))


@st.composite
def hostile(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["surrogate", "non_finite", "deep", "deep_with_surrogate_key"]))
    if kind == "surrogate":
        return draw(surrogate_text)
    if kind == "non_finite":
        return draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    depth = draw(st.sampled_from([63, 64, 65, 200, 254, 255, 256, 600, 900]))
    value: Any = draw(st.sampled_from(["x", 1, None, float("nan")]))
    key = draw(surrogate_text) if kind == "deep_with_surrogate_key" else "k"
    for _ in range(depth):
        value = {key: value} if draw(st.booleans()) else [value]
    return value




_REACHING: dict[str, list[tuple[Any, ...]]] = {}


async def reaching_paths(target: Running, source: str, event: str | None, fixture: str) -> list[tuple[Any, ...]]:
    """Paths of the fixture whose value shows up in the records it maps to: where hostile input
    reaches a record (title, sha, customData ...), found by mapping the unmodified payload."""
    if fixture not in _REACHING:
        document = fixture_json(fixture)
        body = hostile_json(document)
        headers = {"X-GitHub-Event" if source == "github" else "X-Gitlab-Event": event} if event else {}
        try:
            mapped = json.dumps(await records_for(target, source, body, headers))
        except AssertionError:  # maps to nothing (ignored): every path is as good as another
            mapped = ""
        found = []
        for path in paths(document)[1:]:
            leaf: Any = document
            for step in path:
                leaf = leaf[step]
            if isinstance(leaf, str | int) and not isinstance(leaf, bool) and len(str(leaf)) >= 3 \
                    and json.dumps(leaf) in mapped:
                found.append(path)
        _REACHING[fixture] = found or paths(document)[1:]
    return _REACHING[fixture]


@pytest.fixture
async def target(start_bridge: StartBridge) -> Running:
    return await start_bridge(*SOURCES)


@HOSTILE
@given(data=st.data())
async def test_signed_hostile_payloads_get_2xx_or_4xx_and_what_is_accepted_reads_back(
    target: Running, data: st.DataObject
) -> None:
    source = data.draw(st.sampled_from(sorted(FIXTURES_BY_SOURCE)))
    event, fixture = data.draw(st.sampled_from(FIXTURES_BY_SOURCE[source]))
    document = fixture_json(fixture)
    reaching = await reaching_paths(target, source, event, fixture)
    for _ in range(data.draw(st.integers(1, 3))):
        # Mostly where input reaches a record; sometimes anywhere (the mapping must cope).
        anywhere = data.draw(st.integers(0, 3)) == 0
        path = data.draw(st.sampled_from(paths(document)[1:] if anywhere else reaching))
        # An earlier change may have replaced what lies on the path: then there is nothing there.
        parent = dig(document, *path[:-1]) if path[:-1] else document
        if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(path[-1], int)
                                        and path[-1] < len(parent)):
            parent[path[-1]] = data.draw(hostile())  # (an earlier change may have replaced the parent)
    body = hostile_json(document)
    headers = credentials(source, body)
    if event is not None:
        headers["X-GitHub-Event" if source == "github" else "X-Gitlab-Event"] = event
    status, answer = await target.post(source, body, headers)
    assert status in (202, 400, 422), (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and answer.get("error"), answer
    rows = stored_rows(target.bridge.queue, "SELECT body FROM records UNION ALL SELECT body FROM dead")
    for (stored,) in rows:
        record_from_json(stored)  # raises if the sender could not read it back
