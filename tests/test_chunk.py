"""Chunking with the embedder's tokenizer: bounded length, overlap, provenance, no empty chunks."""

from __future__ import annotations

import pytest

from pipeline.ingest.chunk import chunk_sections, split_text
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
