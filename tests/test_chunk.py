"""Chunking with the embedder's tokenizer: bounded length, overlap, provenance, no empty chunks."""

from __future__ import annotations

import pytest

from pipeline.ingest.chunk import chunk_sections, content_hash, split_text
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
