"""``json_body`` (bridge/sources/payload.py) reads every body exactly as ``json.loads`` does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sources.payload import json_body

_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20)


def _same(a: Any, b: Any) -> bool:
    """Equal, types included, with NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=400)
@given(value=_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 2]),
       encoding=st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
def test_the_value_is_that_of_json_loads(value: Any, ascii_only: bool, indent: int | None, encoding: str) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode(encoding, errors="surrogatepass")
    try:
        expected = json.loads(body)
    except ValueError:
        with pytest.raises(ValueError):
            json_body(body)
        return
    assert _same(json_body(body), expected)


@settings(max_examples=300)
@given(body=st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", errors="surrogatepass")))
def test_what_json_loads_refuses_is_refused_with_its_message(body: bytes) -> None:
    try:
        expected = json.loads(body)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)) as caught:
            json_body(body)
        assert str(caught.value) == str(exc)
        return
    assert _same(json_body(body), expected)


def test_bodies_only_json_loads_reads() -> None:
    for body, value in ((b'{"x": NaN}', None), (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),
                        (b'{"big": 123456789012345678901234567890}', {"big": 123456789012345678901234567890})):
        got = json_body(body)
        if value is None:
            assert math.isnan(got["x"])
        else:
            assert got == value
