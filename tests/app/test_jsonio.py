"""app.jsonio: the same bytes as json.dumps, in slices that leave the GIL between them."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import jsonio

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


def reference(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@settings(max_examples=300, deadline=None)
@given(value=documents)
def test_small_documents_encode_exactly_as_json_dumps(value: object) -> None:
    assert jsonio.dumps(value) == reference(value)


@pytest.mark.parametrize(
    "count", [jsonio.CHUNK_VALUES + 1, 3 * jsonio.CHUNK_VALUES, 5 * jsonio.CHUNK_VALUES + 7]
)
def test_long_lists_encode_in_slices_to_the_same_bytes(count: int, monkeypatch) -> None:
    calls = []
    encode = jsonio._compact
    monkeypatch.setattr(jsonio, "_compact", lambda value: calls.append(1) or encode(value))
    values = [math.sin(i) * 1e3 for i in range(count)]
    nested = [[1.5, -2.0]] * count
    document = {"outputs": [{"name": "stage1", "data": values}, {"name": "pairs", "data": nested}]}
    assert jsonio.dumps(document) == reference(document)
    slices = math.ceil(count / jsonio.CHUNK_VALUES)
    assert len(calls) >= 2 * slices  # each long list went through several short calls


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused_as_json_dumps_refuses_them(bad: float) -> None:
    with pytest.raises(ValueError):
        jsonio.dumps({"data": [0.0] * (jsonio.CHUNK_VALUES + 10) + [bad]})
    with pytest.raises(ValueError):
        jsonio.dumps({"data": [bad]})
