"""Pseudo-relevance feedback in hybrid search: the first pass's best chunks expand the query on both sides, and the
second pass re-orders the same matches."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.archive import search
from pipeline.archive.feedback import expansion_terms, feedback_vector
from pipeline.archive.search import Fusion, hybrid_matches


def test_expansion_terms_are_the_words_the_best_chunks_use_most_by_their_scores():
    texts = ["Impeller bearing wear: the impeller shakes.",
             "The bearing of 2024 is a b c 7 7 7 7 7 and E1234 in the casing gasket.", "Harbor seals and more seals."]
    terms = expansion_terms(texts, np.array([1.0, 0.5, 0.0]))
    assert terms[:2] == ["impeller", "bearing"] and "e1234" in terms  # an identifier with letters stays
    assert not {"the", "is", "and", "of", "a", "b", "2024", "7"} & set(terms)  # stop words, letters, bare numbers
    assert "seals" not in terms and "harbor" not in terms  # a text of weight 0 adds nothing
    assert len(expansion_terms(texts * 20, np.ones(60), count=3)) == 3
    assert expansion_terms(["the a 12"], np.ones(1)) == []


def test_the_feedback_vector_moves_the_query_towards_the_heavier_feedback_chunks():
    query, a, b = np.eye(3)
    moved = feedback_vector(query, np.stack([2 * a, b]), np.array([3.0, 1.0]))
    assert np.isclose(np.linalg.norm(moved), 1.0)
    assert moved @ query > moved @ a > moved @ b > 0


def test_the_second_pass_orders_the_first_pass_matches_and_only_those():
    ids, scores = search._within(np.array([5, 6, 7, 8], dtype=np.uint64), np.array([9, 7, 5], dtype=np.uint64),
                                 np.array([1.0, 0.8, 0.5]))
    assert ids.tolist() == [7, 5, 6, 8]  # 9 was no first-pass match; 6 and 8 follow in their first-pass order
    assert scores.tolist() == [0.8, 0.5, 0.5, 0.5]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3))


@pytest.fixture
def pump_chunks(tmp_path):
    """A real LanceDB table: one chunk about pump seals and impeller bearings (A), one about impeller bearings
    without the query's words (B, the one only feedback can bring up) and 60 chunks that mention pumps among
    words of their own, nearer the query vector than B is."""
    import lancedb
    from lancedb.index import FTS

    rng, dim = random.Random(7), 16
    basis = np.eye(dim, dtype=np.float32)

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    texts = ["Pump seals wear out when the impeller bearing shakes.", "The impeller bearing shakes and wears out."]
    vectors = [unit(basis[0] + 0.3 * basis[1]), unit(0.35 * basis[0] + basis[1])]
    for n in range(60):
        texts.append(f"Pump {' '.join(_word(rng) for _ in range(6))}.")
        vectors.append(unit(0.6 * basis[0] + basis[2 + n % (dim - 2)] + 0.2 * basis[2 + (n + 5) % (dim - 2)]))
    table = lancedb.connect(str(tmp_path)).create_table("chunks", pa.table({
        "search_text": texts, "vector": pa.array(vectors, type=pa.list_(pa.float32(), dim))}))
    table.create_index(search.SEARCH_COLUMN, config=FTS(with_position=True))
    return table, basis[0]


def test_feedback_brings_up_a_chunk_that_shares_the_best_hit_s_words_but_not_the_query_s(pump_chunks):
    table, query_vector = pump_chunks
    without, _, exact = hybrid_matches(table, query_vector, "pump seals", Fusion(feedback_docs=0))
    ids, scores, exact_too = hybrid_matches(table, query_vector, "pump seals", Fusion(feedback_docs=5))
    a, b = without[0], 1  # row ids are row numbers in a table written at once
    assert without.tolist().index(b) > 40  # no query word, far from the query: last but few without feedback
    assert ids[0] == a and ids.tolist().index(b) < 10  # among the first tenth
    assert sorted(ids.tolist()) == sorted(without.tolist()) and exact == exact_too  # the same matches, re-ordered
    assert all(np.diff(scores) <= 0)


def test_feedback_leaves_a_query_with_few_matches_alone(pump_chunks):
    """Where the feedback chunks would be most of the matches they only pull the query to their centroid (on a
    handful of documents a query's best hit fell to second), so feedback needs FEEDBACK_SHARE matches each."""
    table, query_vector = pump_chunks
    few = np.eye(16, dtype=np.float32)[1]  # near A and B only
    assert len(hybrid_matches(table, few, "impeller", Fusion(feedback_docs=0))[0]) < search.FEEDBACK_SHARE * 5
    for arrays in zip(hybrid_matches(table, few, "impeller", Fusion(feedback_docs=0)),
                      hybrid_matches(table, few, "impeller", Fusion(feedback_docs=5))):
        assert np.array_equal(*arrays)


def test_feedback_docs_must_not_be_negative():
    with pytest.raises(ValueError, match="must not be negative"):
        Fusion(feedback_docs=-1)


class _Calls:
    """The real table, or its Lance dataset, counting the queries search asks for ("nearest", "full_text_query",
    the latter "within" rows where it is restricted to some) and recording each take's row ids."""

    def __init__(self, inner, calls: dict[str, int], takes: list[list[int]]) -> None:
        self.inner, self.calls, self.takes = inner, calls, takes

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if name == "to_lance":
            return lambda *args, **kwargs: _Calls(attribute(*args, **kwargs), self.calls, self.takes)
        if name == "scanner":
            def scanner(**kwargs):
                self._count("nearest" if kwargs.get("nearest") else "full_text_query")
                if kwargs.get("row_addr_allowlist"):
                    self._count("within")
                return attribute(**kwargs)
            return scanner
        if name == "_take_rows":
            return lambda row_ids, **kwargs: (self._count(name), self.takes.append(list(row_ids)),
                                              attribute(row_ids, **kwargs))[-1]
        return attribute

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


def test_feedback_asks_the_vector_index_once_and_bm25_twice_and_reads_no_row_twice(pump_chunks, table_dataset):
    """The second pass only orders first-pass matches: Rocchio's vector re-ranks the fused head from stored
    vectors, and only BM25 runs again, over the head's rows only. Once both retrievers are done, one take reads
    the search text and vectors of the first 5 rows of each (the vector side's are the only ones it re-ranks
    exactly: the second pass re-ranks the head), so the second pass has the feedback chunks' text at hand and
    reads only the head's other vectors."""
    table, query_vector = pump_chunks
    calls: dict[str, int] = {}
    takes: list[list[int]] = []
    ids, _, _ = hybrid_matches(_Calls(table, calls, takes), query_vector, "pump seals", Fusion(feedback_docs=5))
    assert calls == {"nearest": 1, "full_text_query": 2, "within": 1, "_take_rows": 2}
    first, head = takes
    assert 5 <= len(first) <= 10 and not set(first) & set(head)  # the two lists' first 5 may share rows
    assert sorted(first + head) == sorted(ids[:62].tolist())  # each head row's vector read once
    assert all(len(set(rows)) == len(rows) for rows in takes)


def test_feedback_reads_what_the_first_pass_did_not(pump_chunks, monkeypatch, table_dataset):
    """With no text read ahead, the second pass reads the feedback chunks' text itself: the same ranking."""
    table, query_vector = pump_chunks
    expected = hybrid_matches(table, query_vector, "pump seals", Fusion(feedback_docs=5))
    monkeypatch.setattr(search._Read, "ahead", lambda self, rankings, feedback: [True] * len(rankings))  # "read"
    takes: list[list[int]] = []
    got = hybrid_matches(_Calls(table, {}, takes), query_vector, "pump seals", Fusion(feedback_docs=5))
    assert sorted(len(rows) for rows in takes) == [5, 5, 57]  # the vector side's first 5 vectors, the feedback
    # chunks' text, the rest of the head's vectors
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))
