"""Fusion candidates scored from one retrieval per query: how `retrieval` and `identifier_lookup` pick the default.

The candidates fuse the first pass only (no pseudo-relevance feedback, which would retrieve again for each);
`Retrieved.default` is the ranking hybrid search itself returns with the default settings, feedback included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.archive.search import (Fusion, Ranked, fts_matches, fuse, hybrid_matches, identifiers, phrase_matches,
                                     vector_matches)

OLD = "rrf k=60, no exact tier (LanceDB's RRF, before issue 13)"
CANDIDATES: dict[str, Fusion] = {
    OLD: Fusion("rrf", 60, 1.0, False, 0),
    **{f"rrf k={k} fts_weight={w}": Fusion("rrf", k, w, True, 0) for k in (5, 10, 20, 30, 60) for w in (1.0, 1.5, 2.0)},
    **{f"score fts_weight={w}": Fusion("score", 0, w, True, 0) for w in (0.5, 1.0, 1.5, 2.0, 3.0)},
}


@dataclass(frozen=True)
class Retrieved:
    """Both rankings and the identifier phrase matches of one query, fused again for each candidate, and the
    ranking of hybrid search with the default settings."""

    vector: Ranked
    fts: Ranked
    tiers: list[np.ndarray]
    default: np.ndarray

    def ranking(self, fusion: Fusion) -> np.ndarray:
        return fuse(self.vector, self.fts, self.tiers if fusion.exact_first else [], fusion)[0]


def retrieve(archive, queries: list[str]) -> list[Retrieved]:
    vectors = archive.embedder.encode(queries)
    return [Retrieved(vector_matches(archive.chunks, vector), fts_matches(archive.chunks, query),
                      [phrase_matches(archive.chunks, token) for token in identifiers(query)],
                      hybrid_matches(archive.chunks, vector, query)[0])
            for query, vector in zip(queries, vectors)]


def row_column(archive, column: str) -> dict[int, str]:
    """row id -> `column` for every chunk (for scoring rankings of row ids)."""
    table = archive.chunks.search().select([column]).with_row_id(True).limit(None).to_arrow()
    return dict(zip(table["_rowid"].to_pylist(), table[column].to_pylist()))
