"""Free text the queue keeps (dead-letter reasons and details, errors, source-state keys) may quote
input, and JSON lets a sender put lone surrogates in it: whatever the text, the write succeeds and
the records written beside it are kept."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.queue import BatchPolicy, DurableQueue, RawInput
from bridge.queue.schema import state_key
from bridge.records import Record
from bridge.sources.native import parse_native
from tests.support.queue_file import stored_rows

#: Any text at all, lone surrogates (category Cs) included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
FEW = settings(max_examples=25, deadline=None)


def event(i: int) -> Record:
    return parse_native({"kind": "event", "entity": "svc", "type": "T", "title": f"e{i}",
                         "timestamp": 1_700_000_000 + i}, source="test")[0]


def test_escaping_keeps_ordinary_text_and_escapes_lone_surrogates() -> None:
    assert state_key("cdevents:pipeline/1") == "cdevents:pipeline/1"
    assert state_key("a\ud8feb") == "a\\ud8feb"
    assert state_key("snow ☃") == "snow ☃"


@FEW
@given(reason=ANY_TEXT, detail=ANY_TEXT, error=ANY_TEXT)
async def test_any_reason_detail_or_error_is_stored_and_the_records_beside_it_are_kept(
    reason: str, detail: str, error: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "q.db")
        try:
            await queue.dead_letter_input([event(1)], reason=reason or "r", detail=detail)
            await queue.dead_letter_raw([RawInput("events", "t/0/1", reason or "r", detail, b"{")])
            await queue.append([event(2), event(3)])
            policy = BatchPolicy(max_items={"event": 1})
            first, second = await queue.claim(policy), await queue.claim(policy)
            assert len(first) == len(second) == 1, "the appended records are claimable"
            await queue.reschedule([first[0].seq], next_attempt_at=0.0, error=error, count_attempt=True)
            await queue.mark_ambiguous([second[0].seq], error)
            errors = stored_rows(queue, "SELECT last_error FROM records ORDER BY seq")
            assert errors == [(state_key(error[:1000]),)] * 2
            await queue.dead_letter([first[0].seq], reason=reason or "r", detail=detail, status=400)
            dead = stored_rows(queue, "SELECT id, detail FROM dead")
            assert len(dead) == 3, dead
            assert all(row[1] == state_key(detail[:4000]) for row in dead)
        finally:
            await queue.close()


@FEW
@given(key=ANY_TEXT, value=ANY_TEXT)
async def test_any_state_key_is_written_found_and_forgotten(key: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        queue = await DurableQueue.open(Path(tmp) / "q.db")
        try:
            await queue.put_state({f"cdevents:{key}": value})
            await queue.append([event(1)], state_updates={"other": "1"})
            assert await queue.get_state(f"cdevents:{key}") == state_key(value)
            assert await queue.forget_state([f"cdevents:{key}"]) == 1
            assert await queue.get_states("cdevents:") == {}
            assert queue.depth == 1
        finally:
            await queue.close()
