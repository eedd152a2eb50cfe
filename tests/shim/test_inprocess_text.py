"""Streaming text helpers of the in-process backends: detokenizing and stop strings."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.shim.backends._text import IncrementalDetokenizer, StopMatcher

TEXT = "Héllo wörld — ünïcode ✓ test. The harbour town woke early 日本語 and   spaces"


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model.hf_dir)


@pytest.mark.parametrize("rust_stream", [True, False])
def test_detokenizer_streams_exactly_the_decoded_text(tokenizer: Any, rust_stream: bool) -> None:
    ids = [*tokenizer(TEXT).input_ids, tokenizer.eos_token_id]
    detok = IncrementalDetokenizer(tokenizer)
    if not rust_stream:
        detok._stream = None  # the windowed fallback used for slow tokenizers
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    assert detok.ids == ids


def _run(chunks: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    out, hit = [], False
    for chunk in chunks:
        piece, hit = matcher.feed(chunk)
        out.append(piece)
        if hit:
            break
    if not hit:
        out.append(matcher.flush())
    return out, hit


def test_stop_string_split_across_chunks_is_never_emitted() -> None:
    out, hit = _run(["Hel", "lo w", "orld"], ("o wo",))
    assert hit and "".join(out) == "Hell"
    assert out[1] == "l"  # "o w" was held back: it could have been the start of the stop string


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    out, hit = _run(["ab", "c", "d"], ("cx",))
    assert not hit and out == ["ab", "", "cd", ""]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc x", max_size=40),
    stop=st.text(alphabet="abc x", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_stop_matcher_agrees_with_str_find_however_the_text_is_chunked(text: str, stop: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    out, hit = _run(chunks, (stop,))
    assert hit == (stop in text)
    assert "".join(out) == (text[: text.find(stop)] if hit else text)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc x", max_size=40),
    stops=st.lists(st.text(alphabet="abc x", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_several_stops_cut_at_the_earliest(text: str, stops: list[str]) -> None:
    out, hit = _run([text], tuple(stops))
    found = [text.find(s) for s in stops if s in text]
    assert "".join(out) == (text[: min(found)] if found else text) and hit == bool(found)
