"""Search over the chunks table: the vector and full-text retrievers, their fusion, paging and totals."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.archive.schema import SEARCH_COLUMN
from pipeline.types import Hit, SearchResult

MODES = ("hybrid", "vector", "fts")
MAX_MATCHES = 1000  # the most matches counted per retriever when reporting totals
MIN_SIMILARITY = 0.25  # cosine similarity from which a vector neighbour counts as a match
COLUMNS = ["chunk_id", "source", "page", "page_end", "heading", "text"]


def search_chunks(chunks, embedder, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
    """Rank chunks for `query` and return page `page` (0-based) of `top_k` hits, with the total of matches.

    vector: cosine similarity; a chunk counts as a match from MIN_SIMILARITY. fts: BM25 over the search text
    (heading path and text).
    hybrid: both lists fused by reciprocal rank (LanceDB's RRF reranker); total is their union.
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if top_k < 1 or page < 0:
        raise ValueError("top_k must be at least 1 and page at least 0")
    query = " ".join(query.split())
    if not query:
        return SearchResult(query, [], 0, page, top_k)
    want = (page + 1) * top_k
    ranked: pa.Table
    if mode == "vector":
        ranked = _vector(chunks, embedder, query, MAX_MATCHES)
        total = ranked.num_rows
    elif mode == "fts":
        ranked = _fts(chunks, query, MAX_MATCHES)
        total = ranked.num_rows
    else:
        vector, fts = _vector(chunks, embedder, query, MAX_MATCHES), _fts(chunks, query, MAX_MATCHES)
        total = len(set(vector["chunk_id"].to_pylist()) | set(fts["chunk_id"].to_pylist()))
        ranked = _fuse(query, vector, fts, want)
    rows = ranked.slice(page * top_k, top_k).to_pylist() if ranked.num_rows > page * top_k else []
    return SearchResult(query, [_hit(row) for row in rows], total, page, top_k)


def _vector(chunks, embedder, query: str, limit: int) -> pa.Table:
    vector = embedder.encode([query])[0]
    return (chunks.search(vector, vector_column_name="vector").distance_type("cosine")
            .distance_range(upper_bound=1.0 - MIN_SIMILARITY).select([*COLUMNS, "_distance"]).limit(limit)
            .with_row_id(True).to_arrow())


def _fts(chunks, query: str, limit: int) -> pa.Table:
    from lancedb.query import MatchQuery

    return (chunks.search(MatchQuery(query, SEARCH_COLUMN), query_type="fts").select([*COLUMNS, "_score"])
            .limit(limit).with_row_id(True).to_arrow())


def _fuse(query: str, vector: pa.Table, fts: pa.Table, limit: int) -> pa.Table:
    from lancedb.rerankers import RRFReranker

    if not vector.num_rows or not fts.num_rows:
        ranked = vector if vector.num_rows else fts
        return ranked.slice(0, limit)
    return RRFReranker(return_score="relevance").rerank_hybrid(query, vector, fts).slice(0, limit)


def _hit(row: dict[str, Any]) -> Hit:
    if "_relevance_score" in row:
        score = row["_relevance_score"]
    elif "_distance" in row and row["_distance"] is not None:
        score = 1.0 - row["_distance"]
    else:
        score = row.get("_score") or 0.0
    return Hit(chunk_id=row["chunk_id"], source=row["source"], page=row["page"], page_end=row["page_end"],
               heading=row["heading"] or "", text=row["text"], score=round(float(score), 6))
