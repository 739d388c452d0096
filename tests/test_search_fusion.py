"""Hybrid fusion: exact identifiers first, BM25's best not buried, totals without reading the text of unshown rows."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.archive import search
from pipeline.archive.search import Fusion, Ranked, fuse, identifiers
from pipeline.cli import main


def ranked(ids: list[int], capped: bool = False) -> Ranked:
    return Ranked(np.array(ids, dtype=np.uint64), np.linspace(1.0, 0.5, len(ids)), capped)


def test_identifiers_are_tokens_with_a_digit_or_underscore():
    query = 'What does "max_wal_size" do, and E1234, HX-7/220, 2.4.1 or 0x3fa9? a:b (state-of-the-art) 7'
    assert identifiers(query) == ["max_wal_size", "E1234", "HX-7/220", "2.4.1", "0x3fa9"]


def test_bm25_first_is_not_buried_under_chunks_mediocre_in_both_lists():
    """The measured defect: with RRF k=60, BM25's first hit (absent from the vector list) fell below chunks
    ranked 20th in both lists."""
    noise = list(range(100, 140))
    vector, fts = ranked(noise), ranked([7] + noise[::-1])  # the vector list is noise: its order unrelated
    old = fuse(vector, fts, [], Fusion("rrf", 60, 1.0, False))[0].tolist()
    assert old.index(7) > 10  # reproduces the defect with the old fusion
    assert fuse(vector, fts, [], Fusion())[0].tolist().index(7) < 3


def test_exact_tier_ranks_phrase_matches_first_and_scores_still_fall():
    vector, fts = ranked([1, 2, 3, 4]), ranked([2, 1, 3, 5])
    ids, scores = fuse(vector, fts, [np.array([5], dtype=np.uint64), np.array([5, 4], dtype=np.uint64)], Fusion())
    assert ids.tolist()[:2] == [5, 4] and set(ids.tolist()) == {1, 2, 3, 4, 5}
    assert all(np.diff(scores) <= 0)


def test_fusion_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion("mean")


def test_an_identifier_in_many_chunks_does_not_bury_the_answer(demo_archive):
    """The demo's q03 (session 15): "the Hydra-7", in 9 of the 224 chunks, put all of them ahead of the seal page
    (10th); a rare identifier (E-117, in one) still ranks its chunk first."""
    seal = demo_archive.search("After how many operating hours must the mechanical seal of the Hydra-7 be replaced?",
                               mode="hybrid", top_k=5)
    assert any("4,000 operating hours" in hit.text for hit in seal.hits)
    assert sum("Hydra-7" in hit.text for hit in seal.hits) < 5
    code = demo_archive.search("What does error code E-117 on the Hydra-7 controller mean?", mode="hybrid", top_k=1)
    assert "E-117" in code.hits[0].text


@pytest.fixture(scope="module")
def identifier_archive(tmp_path_factory, embedder):
    """A real archive of generated manuals full of identifiers and their near-miss twins."""
    from pipeline.archive.store import Archive
    from pipeline.config import Settings
    from pipeline.idcorpus import generate
    from pipeline.ingest.local import ingest_directory

    root = tmp_path_factory.mktemp("identifiers")
    lookups = generate(root / "docs", documents=20, facts_per_document=12, seed=3)
    settings = Settings.from_env(store=root / "store")
    assert ingest_directory(root / "docs", settings, progress=False, embedder=embedder).failed == 0
    return Archive.open(settings.store, embedder=embedder), lookups


@pytest.mark.slow
def test_a_query_holding_an_identifier_gets_a_chunk_with_it_first(identifier_archive):
    from pipeline.idcorpus import contains_token

    archive, lookups = identifier_archive
    assert {lookup.kind for lookup in lookups} == {"uuid", "part", "version", "option", "error", "hex"}
    missed = [lookup.query for lookup in lookups
              if not contains_token(archive.search(lookup.query, mode="hybrid", top_k=1).hits[0].text, lookup.token)]
    assert missed == []
    archive.fusion = Fusion("rrf", 60, 1.0, False, 0)  # LanceDB's RRF, as before: the defect reproduces
    before = [lookup.query for lookup in lookups
              if not contains_token(archive.search(lookup.query, mode="hybrid", top_k=1).hits[0].text, lookup.token)]
    archive.fusion = Fusion()
    assert before


class TextReads:
    """The real chunks table, counting every row of `text` that a query or a take on its Lance dataset (the one
    search queries and reads) hands back."""

    def __init__(self, table) -> None:
        self.table, self.rows = table, 0

    def __getattr__(self, name):
        attribute = getattr(self.table, name)
        return (lambda: _CountedReads(attribute(), self)) if name == "to_lance" else attribute


class _CountedReads:
    """A Lance dataset whose queries and takes count their rows of `text`."""

    def __init__(self, dataset, reads: TextReads) -> None:
        self.dataset, self.reads = dataset, reads

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def scanner(self, **kwargs):
        scanner = self.dataset.scanner(**kwargs)
        reads = self.reads

        class Counted:
            def to_table(self):
                table = scanner.to_table()
                reads.rows += table.num_rows if "text" in table.column_names else 0
                return table
        return Counted()

    def _take_rows(self, row_ids, columns):
        self.reads.rows += len(row_ids) if "text" in columns else 0
        return self.dataset._take_rows(row_ids, columns=columns)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hybrid", "vector", "fts"])
def test_totals_are_counted_without_reading_the_text_of_unshown_rows(tiny_archive, mode, table_dataset):
    reads = TextReads(tiny_archive.chunks)
    result = search.search_chunks(reads, tiny_archive.embedder, "pump seals alpacas espresso Titan tart", mode=mode,
                                  top_k=2, page=1)
    assert result.total >= 4 and result.total_exact and len(result.hits) == 2  # rows 3-4 shown, others not read
    assert reads.rows == 2


@pytest.mark.slow
def test_a_total_cut_at_the_count_limit_says_so(tiny_archive, monkeypatch):
    monkeypatch.setattr(search, "COUNT_LIMIT", 1)
    result = tiny_archive.search("pump", mode="fts", top_k=1)
    assert (result.total, result.total_exact) == (1, False)
    out = CliRunner().invoke(main, ["search", "pump", "--store", str(tiny_archive.path), "--mode", "fts", "-k", "1"])
    assert "Showing results 1-1 of at least 1 (page 1 of at least 1, fts)" in out.output


def test_vector_matches_through_an_ivf_index_keep_their_similarity_floor(tmp_path):
    """The measured defect: `distance_range` was applied to IVF-PQ's approximate distances (another scale), so
    vector search on an indexed table (50,000 chunks and up) dropped nearly every match. The same holds for
    the IVF-SQ index used now, with and without rows the index does not hold yet."""
    import lancedb

    from pipeline.bench.search_latency import Corpus

    rows = Corpus().batch(0, 3000)
    table = lancedb.connect(str(tmp_path)).create_table("chunks", rows)
    table.create_index("vector", config=search.vector_index())
    vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False))

    def check(ns):
        for n in ns:  # chunks with neighbours of their own topic (cosine about 0.6)
            exact = np.nonzero(vectors @ vectors[n] >= search.MIN_SIMILARITY)[0]
            for depth in (1, 2, 64):  # 2: every match past the second is judged by its scaled approximate distance
                found = [row if row < 1 << 32 else 3000 + row - (1 << 32)  # row ids of the second fragment
                         for row in search.vector_matches(table, vectors[n], depth).ids.tolist()]
                assert len(exact) > 1 and found[0] == n and sorted(found) == exact.tolist()

    check((17, 1234, 2999))
    added = Corpus().batch(3000, 300)  # rows the index does not hold yet: searched flat, merged by LanceDB
    table.add(added)
    vectors = np.concatenate([vectors, np.stack(added["vector"].to_numpy(zero_copy_only=False))])
    check([n for n in range(3000, 3300) if (vectors @ vectors[n] >= search.MIN_SIMILARITY).sum() > 1][:3] + [17])


def test_the_vector_index_keeps_its_partitions_through_optimize(tmp_path):
    """The measured defect: an index built with a partition count was retrained by `optimize()` to LanceDB's
    default partition size (447 partitions became 7; at 1M chunks, 31 of 32,768 rows each), so every query
    compared about a third of the table."""
    import lance
    import lancedb

    from pipeline.bench.search_latency import Corpus

    table = lancedb.connect(str(tmp_path)).create_table("chunks", Corpus().batch(0, 4000))
    table.add(Corpus().batch(4000, 4000))
    table.create_index("vector", config=search.vector_index())

    def partitions() -> int:
        return lance.dataset(str(tmp_path / "chunks.lance")).stats.index_stats("vector_idx")["indices"][0][
            "num_partitions"]

    before = partitions()
    table.optimize()
    assert before >= 8000 // search.PARTITION_ROWS - 1 and partitions() == before
