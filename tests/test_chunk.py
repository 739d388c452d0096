"""Chunking with the embedder's tokenizer: bounded length, overlap, provenance, no empty chunks."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.chunk import chunk_sections, content_hash, split_spans, split_text
from pipeline.ingest.parse import Section


@pytest.fixture(scope="module")
def tokenizer(embedder):
    return embedder.tokenizer


def n_tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_no_chunk_exceeds_the_budget_and_neighbours_overlap(tokenizer):
    text = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(200))
    pieces = split_text(text, tokenizer, max_tokens=64, overlap=16)
    assert len(pieces) > 5
    assert all(n_tokens(tokenizer, p) <= 64 for p in pieces)
    for left, right in zip(pieces, pieces[1:]):
        assert left.split()[-1] in right  # the tail of one chunk reappears in the next
    assert " ".join(pieces).count("Sentence number 199") >= 1


def test_chunks_prefer_sentence_ends(tokenizer):
    text = " ".join(f"This is sentence {i} of the text." for i in range(60))
    pieces = split_text(text, tokenizer, max_tokens=50, overlap=8)
    assert all(p.endswith(".") for p in pieces)


def test_a_single_long_word_is_still_cut(tokenizer):
    pieces = split_text("x" * 5000, tokenizer, max_tokens=40, overlap=5)
    assert pieces and all(n_tokens(tokenizer, p) <= 40 for p in pieces)


def test_provenance_travels_and_whitespace_sections_vanish(tokenizer):
    sections = [Section("First page text.", 1, "Intro"), Section("   \n ", 2, "Intro"),
                Section("Third page text.", 3, "Body")]
    chunks = list(chunk_sections(sections, tokenizer, max_tokens=32, overlap=4))
    assert [(c.page, c.heading, c.ordinal, c.text) for c in chunks] == [
        (1, "Intro", 0, "First page text."), (3, "Body", 1, "Third page text.")]


def test_overlap_must_be_smaller_than_chunk(tokenizer):
    with pytest.raises(ValueError):
        list(chunk_sections([Section("a b c", 1, "")], tokenizer, max_tokens=8, overlap=8))


def test_search_text_is_the_heading_path_then_the_text_within_the_budget(tokenizer):
    text = " ".join(f"Valve {i} opens at {i * 3} bar." for i in range(80))
    chunks = list(chunk_sections([Section(text, 4, "Manual > Valves")], tokenizer, max_tokens=48, overlap=8))
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.search_text == f"Manual > Valves\n{chunk.text}"
        assert n_tokens(tokenizer, chunk.search_text) <= 48
        assert chunk.content_hash == content_hash(chunk.search_text)  # a heading change re-embeds


def test_a_heading_path_too_long_to_repeat_gets_a_chunk_of_its_own_once(tokenizer):
    heading = " > ".join(f"Part {i} of the very long installation and maintenance guide" for i in range(4))
    sections = [Section("First page body.", 1, heading), Section("Second page body.", 2, heading)]
    chunks = list(chunk_sections(sections, tokenizer, max_tokens=64, overlap=8))
    assert [(c.page, c.text) for c in chunks] == [(1, heading), (1, "First page body."), (2, "Second page body.")]
    assert chunks[0].search_text == heading
    tail = "Part 3 of the very long installation and maintenance guide"
    assert chunks[1].search_text == f"{tail}\nFirst page body."  # the deepest titles still lead each chunk
    assert all(n_tokens(tokenizer, c.search_text) <= 64 for c in chunks)


def uuid_lines(n: int, seed: int = 0) -> list[str]:
    import random
    import uuid

    rng = random.Random(seed)
    return [f"Key-value pair: key = {uuid.UUID(int=rng.getrandbits(128))}, value = {uuid.UUID(int=rng.getrandbits(128))}"
            for _ in range(n)]


def assert_cut_between_words(text: str, spans: list[tuple[int, int]]) -> None:
    for start, end in spans:
        assert start == 0 or text[start - 1].isspace(), f"starts inside a word: {text[start - 8:start + 8]!r}"
        assert end == len(text) or text[end].isspace(), f"ends inside a word: {text[end - 8:end + 8]!r}"


def test_identifiers_are_never_cut_and_every_line_is_whole_somewhere(tokenizer):
    lines = uuid_lines(40)
    text = "\n".join(lines)  # one-line facts, no punctuation at their ends
    spans = split_spans(text, tokenizer, max_tokens=224, overlap=32)
    assert len(spans) > 5
    assert_cut_between_words(text, spans)
    pieces = [text[a:b] for a, b in spans]
    assert all(n_tokens(tokenizer, p) <= 224 for p in pieces)
    assert all(any(line in p for p in pieces) for line in lines)
    assert all(p.startswith("Key-value pair:") and p == p.strip() for p in pieces)  # whole lines, no fragments


def test_a_line_cut_by_a_window_starts_the_next_one(tokenizer):
    long_line = " ".join(f"word{i}" for i in range(30))  # about 90 pieces, on one line
    text = "\n".join(["short opening line", long_line, "closing line"] * 3)
    pieces = split_text(text, tokenizer, max_tokens=100, overlap=10)
    assert all(n_tokens(tokenizer, p) <= 100 for p in pieces)
    assert any(long_line in p for p in pieces)
    assert all(any(line in p for p in pieces) for line in text.splitlines())


def test_a_word_longer_than_a_window_is_cut_inside_it_and_nothing_is_lost(tokenizer):
    blob = "-".join(f"k{i}" for i in range(150))  # one word (no spaces) of a few hundred pieces
    text = f"before the blob {blob} after the blob"
    pieces = split_text(text, tokenizer, max_tokens=40, overlap=8)
    assert all(n_tokens(tokenizer, p) <= 40 for p in pieces)
    assert pieces[0] == "before the blob" and pieces[-1].endswith(" after the blob")
    assert "".join(pieces[1:]).replace(" after the blob", "") == blob  # consecutive pieces, no overlap


_HEX = st.text("0123456789abcdef", min_size=4, max_size=12)
_WORDS = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12),
    st.uuids().map(str),
    st.tuples(st.sampled_from(["max", "wal", "size", "io", "timeout"]), _HEX).map("_".join),  # snake_case
    st.tuples(st.sampled_from("EHX"), st.integers(0, 99999)).map(lambda p: f"{p[0]}{p[1]}"),  # error codes
    st.tuples(st.text("abcdefghij", min_size=1, max_size=6), st.sampled_from(".;:!?,")).map("".join),  # punctuation
    st.integers(3, 60).map(lambda n: "-".join(f"q{i}" for i in range(n))),  # one long hyphenated identifier
)
_LINES = st.lists(st.lists(_WORDS, min_size=1, max_size=40).map(" ".join), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_LINES, breaks=st.lists(st.sampled_from(["\n", "\n\n", " \n", "\r\n"]), min_size=24, max_size=24),
       max_tokens=st.sampled_from([16, 24, 48, 96, 224]), share=st.floats(0, 0.5))
def test_windows_keep_every_line_and_sentence_that_fits_whole(tokenizer, lines, breaks, max_tokens, share):
    text = "".join(line + breaks[i % len(breaks)] for i, line in enumerate(lines))
    spans = split_spans(text, tokenizer, max_tokens=max_tokens, overlap=int(max_tokens * share))
    pieces = [text[a:b] for a, b in spans]
    assert all(n_tokens(tokenizer, p) <= max_tokens for p in pieces)
    for start, end in spans:  # inside a word only where the word alone exceeds a window
        for at in (start, end):
            if 0 < at < len(text) and not text[at - 1].isspace() and not text[at].isspace():
                word = next(m.group() for m in re.finditer(r"\S+", text) if m.start() < at < m.end())
                assert n_tokens(tokenizer, word) > max_tokens, f"cut inside {word!r}"
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())  # nothing is lost
    for line in lines:
        units = [line] if n_tokens(tokenizer, line) <= max_tokens else re.split(r"(?<=[.;:!?])\s+", line)
        for unit in units:
            if n_tokens(tokenizer, unit) <= max_tokens:
                assert any(unit in p for p in pieces), f"{unit!r} is whole in no window"
