"""Search over the chunks table: the vector and full-text retrievers, their fusion, paging and totals.

Both retrievers return row ids and scores only; the ranking, the totals and the exact-match tier are computed
from those, and the text is read for the rows of the page shown and no others (hybrid search's feedback also
reads the search text of a few first rows of each retriever, `_Read`). Queries and reads go to the Lance dataset
behind the table, at the table's version (`_dataset`), on the calling thread; in hybrid mode the vector and phrase
queries, and feedback's second BM25 query, run on worker threads beside the rest (`_beside`; Lance releases the
GIL). Run as a coroutine on LanceDB's event loop instead, as before session 21, a search took 0.6 ms longer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.archive import uring
from pipeline.archive.feedback import expansion_terms, feedback_vector
from pipeline.archive.schema import SEARCH_COLUMN
from pipeline.config import Settings
from pipeline.types import Hit, SearchResult

MODES = ("hybrid", "vector", "fts")
FUSIONS = ("rrf", "score")
# Matches counted per retriever; past it the total is a lower bound ("at least 250"). 250 rows rank 50 pages of 5,
# more than an agent reads. Counting to 1000 cost 1.1 ms more per BM25 query and 0.3-0.6 ms per vector query at 100k
# chunks (session 21); the deeper ranks it adds to the fused scores changed the first page of 8 of the 100 bench
# queries, and Cranfield's nDCG@10 by nothing that counts (0.4474 with 1000, 0.4479 with 250).
COUNT_LIMIT = 250
PHRASE_LIMIT = 1000  # chunks an identifier's phrase lookup counts, to tell a rare identifier (EXACT_RARE_SHARE)
MIN_SIMILARITY = 0.25  # cosine similarity from which a vector neighbour counts as a match
COLUMNS = ["chunk_id", "source", "page", "page_end", "heading", "text", "ocr", "ocr_confidence"]
NPROBES = 20  # IVF partitions probed per vector query (when the table has a vector index)
EXACT_HEAD = 64  # the vector ranking's first rows (at least; twice the rows up to the page shown) re-ranked exactly
FEEDBACK_SHARE = 10  # feedback runs when the first pass found this many matches or more per feedback chunk
# An identifier ranks its chunks first only while it is rare: in at most EXACT_RARE_SHARE of the chunks (or
# EXACT_RARE_ROWS of them in a small table). One in more is a subject, not a key: "the Hydra-7" in a Hydra-7 manual
# would put its nine mentions ahead of the page that answers (the demo's q03, session 15: the seal page 10th).
# A phrase lookup counts at most PHRASE_LIMIT chunks, so past 100k rows a common token can still pass as rare.
EXACT_RARE_SHARE = 0.01
EXACT_RARE_ROWS = 3


PARTITION_ROWS = 1024  # rows per IVF partition of the vector index (LanceDB's own default for IVF-SQ is 32,768)


def vector_index():
    """The vector index LanceDB builds on large tables: IVF with PARTITION_ROWS rows a partition and 8-bit scalar
    quantization (its distances are close to exact ones, and it builds in a fraction of IVF-PQ's time).

    The partition size is given as a target, not a count: `optimize()` retrains an index whose partition count
    was given, to LanceDB's default size (measured: 447 partitions became 7), and keeps a target.
    """
    from lancedb.index import IvfSq

    return IvfSq(distance_type="cosine", target_partition_size=PARTITION_ROWS)


@dataclass(frozen=True)
class Fusion:
    """How hybrid mode merges the two rankings. Defaults are Settings' (chosen by `python -m pipeline.bench retrieval`).

    rrf: sum of weight / (k + rank) over the two lists (reciprocal-rank fusion). score: a weighted sum of each
    list's scores divided by that list's best score. With `exact_first`, chunks holding the query's identifiers
    (tokens with a digit or an underscore, such as `HX-7/220`, `2.4.1`, `max_wal_size`, `E1234`, UUIDs) as phrases
    rank ahead of the rest, the more of them the earlier; an identifier in many chunks (EXACT_RARE_SHARE) is left
    to the two rankings. With `feedback_docs`, the first that many fused chunks
    expand the query (pipeline.archive.feedback) for a second pass of both retrievers, which re-ranks the same
    matches; 0 turns it off.
    """

    method: str = Settings.fusion
    rrf_k: int = Settings.rrf_k
    fts_weight: float = Settings.fts_weight
    exact_first: bool = Settings.exact_first
    feedback_docs: int = Settings.feedback_docs

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"unknown fusion {self.method!r}; use one of {', '.join(FUSIONS)}")
        if self.rrf_k < 0 or self.fts_weight < 0 or self.feedback_docs < 0:
            raise ValueError("rrf_k, fts_weight and feedback_docs must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Fusion":
        return cls(settings.fusion, settings.rrf_k, settings.fts_weight, settings.exact_first, settings.feedback_docs)


@dataclass(frozen=True)
class Ranked:
    """One retriever's matches, best first: row ids and scores (higher is better), `capped` at COUNT_LIMIT."""

    ids: np.ndarray
    scores: np.ndarray
    capped: bool

    @classmethod
    def of(cls, table: pa.Table, score: str, limit: int) -> "Ranked":
        ids = table["_rowid"].to_numpy()
        values = table[score].to_numpy().astype(np.float64)
        return cls(ids, 1.0 - values if score == "_distance" else values, table.num_rows >= limit)


_IDENTIFIER_EDGES = "\"'`()[]{}<>,;:!?."


def identifiers(query: str) -> list[str]:
    """The query's tokens that name something exactly: a digit or an underscore in them (`E1234`, `max_wal_size`)."""
    found = []
    for word in query.split():
        word = word.strip(_IDENTIFIER_EDGES)
        if len(word) > 1 and re.search(r"[\d_]", word) and re.search(r"[^\W_]", word) and word not in found:
            found.append(word)
    return found


def search_chunks(chunks, embedder, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0,
                  fusion: Fusion = Fusion()) -> SearchResult:
    """Rank chunks for `query` and return page `page` (0-based) of `top_k` hits, with the total of matches.

    vector: cosine similarity; a chunk counts as a match from MIN_SIMILARITY. fts: BM25 over the search text
    (heading path and text).
    hybrid: both rankings fused as `fusion` says (`hybrid_matches`); the total is their union. Totals are exact up
    to COUNT_LIMIT matches per retriever and a lower bound past it (`SearchResult.total_exact`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if top_k < 1 or page < 0:
        raise ValueError("top_k must be at least 1 and page at least 0")
    query = " ".join(query.split())
    if not query:
        return SearchResult(query, [], 0, page, top_k)
    vector = None if mode == "fts" else embedder.encode([query])[0]
    return _run(chunks, _search, vector, query, mode, top_k, page, fusion, shown=COLUMNS)


def _search(read: _Read, vector: np.ndarray | None, query: str, mode: str, top_k: int, page: int,
            fusion: Fusion) -> SearchResult:
    depth = max(EXACT_HEAD, 2 * (page + 1) * top_k)
    if mode == "vector":
        ids, scores, exact = _single(_vector_matches(read, vector, depth))
    elif mode == "fts":
        ids, scores, exact = _single(_fts_matches(read, query))
    else:
        ids, scores, exact = _hybrid_matches(read, vector, query, fusion, depth)
    shown = slice(page * top_k, (page + 1) * top_k)
    rows = read.rows(ids[shown])
    hits = [_hit(row, float(score)) for row, score in zip(rows, scores[shown])]
    return SearchResult(query, hits, len(ids), page, top_k, total_exact=exact)


def _run(chunks, search, *args, shown: list[str] | None = None):
    """`search(read, *args)`, `read` a `_Read` of the Lance dataset behind the (sync) table `chunks` at the table's
    version (`_dataset`).

    The search runs at the version last seen while the table's version is asked beside it, on LanceDB's event
    loop (0.3 ms a search, session 21); on a newer one (a write since), it runs again there, so no result is of a
    stale version."""
    from lancedb.background_loop import LOOP

    known = _dataset(chunks)
    asked = asyncio.run_coroutine_threadsafe(chunks._table.version(), LOOP.loop)
    result = search(_Read(known, shown), *args)
    version = asked.result()
    if version == known.version:
        return result
    dataset = _DATASETS[chunks] = known.checkout_version(version)
    return search(_Read(dataset, shown), *args)


def hybrid_matches(chunks, vector: np.ndarray, query: str, fusion: Fusion = Fusion(),
                   depth: int = EXACT_HEAD) -> tuple[np.ndarray, np.ndarray, bool]:
    """Row ids of the hybrid matches of `query` (embedded as `vector`), best first, their scores, and whether the
    total is exact.

    Both retrievers run side by side and their rankings are fused. With `fusion.feedback_docs`, the first fused
    chunks expand the query on both sides (`pipeline.archive.feedback`) for a second pass (`_second_pass`) that
    orders the first pass's matches, so the matches and their total are the query's own, not those of the words
    added to it. Feedback needs the first chunks to be a small part of the matches (FEEDBACK_SHARE): where they
    are most of them (a query matching a handful of chunks) they tell nothing the query does not, and the second
    pass would drift to their centroid.
    """
    return _run(chunks, _hybrid_matches, vector, query, fusion, depth)


def _hybrid_matches(read: _Read, vector: np.ndarray, query: str, fusion: Fusion,
                    depth: int) -> tuple[np.ndarray, np.ndarray, bool]:
    tokens = identifiers(query) if fusion.exact_first else []
    feedback = fusion.feedback_docs

    # the vector and phrase queries go to worker threads, and BM25 runs on this one beside them
    beside = [_beside(_neighbours, read, vector), *(_beside(_phrase_matches, read, token) for token in tokens)]
    lists = _fts_matches(read, query)
    found, *tiers = (future.result() for future in beside)
    # with feedback likely (neighbours enough), only the vector side's first rows are re-ranked exactly: the second
    # pass re-ranks the fused head exactly
    exactly = feedback if read.ahead([found.ids, lists.ids], feedback)[0] else depth
    near = found.ranked(read, vector, exactly)
    rare = max(EXACT_RARE_ROWS, EXACT_RARE_SHARE * read.dataset.count_rows()) if tokens else 0
    tiers = [tier for tier in tiers if len(tier) <= rare]
    ids, scores = fuse(near, lists, tiers, fusion)
    exact = not (near.capped or lists.capped)
    if feedback and len(ids) >= FEEDBACK_SHARE * feedback:
        ids, scores = _second_pass(read, vector, query, ids, scores, tiers, fusion, depth)
    elif exactly < depth:  # too few matches for feedback after all: the vector side's head exactly, as without it
        ids, scores = fuse(found.ranked(read, vector, depth), lists, tiers, fusion)
    return ids, scores, exact


def _second_pass(read: _Read, vector: np.ndarray, query: str, ids: np.ndarray, scores: np.ndarray,
                 tiers: list[np.ndarray], fusion: Fusion, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The first pass's matches `ids` (fused `scores`) ordered by feedback from the first `fusion.feedback_docs`.

    Vector side: Rocchio's vector ranks the first `depth` fused chunks by exact similarity (their vectors are read,
    those the first pass read are not read again; the index is not asked again, as only first-pass matches are
    ordered). BM25 side: the query with the feedback chunks' words, one more query over the index restricted to
    the same head rows; the feedback chunks' search text is mostly read already (`_Read.ahead`). The vectors are
    read while that query runs. Restricting BM25 to the head (as the vector side is) halved that query's CPU at
    100k chunks (2.9 against 1.2 ms) and ranked the same on `python -m pipeline.bench retrieval`.
    """
    best, head = ids[:fusion.feedback_docs], ids[:max(depth, fusion.feedback_docs)]
    weights = scores[:len(best)]

    terms = expansion_terms(read.texts(best), weights)
    expanded = _beside(_fts_matches, read, query, terms, len(head), within=head)
    vectors = read.vectors(head)
    lists = expanded.result()
    sims = _cosine(vectors, feedback_vector(vector, vectors[:len(best)], weights))
    order = np.argsort(-sims, kind="stable")
    order = order[sims[order] >= MIN_SIMILARITY]
    return _within(ids, *fuse(Ranked(head[order], sims[order], False), lists, tiers, fusion))


class _Read:
    """The stored columns one search has read, by row id: a row is read again only for a column it lacks.

    Hybrid search with feedback needs the search text of its first fused chunks and the vectors of the fused head;
    `ahead` reads both for each retriever's first rows in one take once both are done, so that the second pass
    starts at once (the fused first chunks are nearly always among them; any other is read then). A take costs
    about 0.4 ms however few its rows: one take for both retrievers, not one each beside the other's query, saved
    0.4 ms of CPU a search (session 21). Only the search text and vectors of those few rows are read ahead, never
    the columns `shown` for a page (`rows`).
    """

    def __init__(self, dataset, shown: list[str] | None = None) -> None:
        self.dataset, self.shown = dataset, shown or []
        self.read: dict[str, dict[int, Any]] = {}

    def query(self, columns: list[str], **scan) -> pa.Table:
        """One query of the dataset (`scan`: Lance's `scanner` options), `columns` and the row ids."""
        return self.dataset.scanner(columns=columns, with_row_id=True, disable_scoring_autoprojection=True,
                                    **scan).to_table()

    def ahead(self, rankings: list[np.ndarray], feedback: int) -> list[bool]:
        """Read the search text and vectors of the first `feedback` rows of each of `rankings` (row ids, best first)
        that is long enough for feedback to run (FEEDBACK_SHARE), in one take; which were."""
        enough = [bool(feedback) and len(ids) >= FEEDBACK_SHARE * feedback for ids in rankings]
        firsts = [ids[:feedback] for ids, long in zip(rankings, enough) if long]
        if firsts:
            self._fetch(np.concatenate(firsts), [SEARCH_COLUMN, "vector"])
        return enough

    def texts(self, row_ids: np.ndarray) -> list[str]:
        self._fetch(row_ids, [SEARCH_COLUMN])
        return self._values(row_ids, SEARCH_COLUMN)

    def vectors(self, row_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `row_ids`, in their order, as float64 rows."""
        if not len(row_ids):
            return np.zeros((0, 0))
        self._fetch(row_ids, ["vector"])
        return np.stack(self._values(row_ids, "vector"))

    def rows(self, row_ids: np.ndarray) -> list[dict[str, Any]]:
        """The shown columns of `row_ids`, a dict per row, in their order."""
        if not len(row_ids):
            return []
        self._fetch(row_ids, self.shown)
        return [dict(zip(self.shown, values)) for values in zip(*(self._values(row_ids, c) for c in self.shown))]

    def _values(self, row_ids: np.ndarray, column: str) -> list:
        known = self.read[column]
        return [known[i] for i in row_ids.tolist()]

    def _fetch(self, row_ids: np.ndarray, columns: list[str]) -> None:
        """Read the rows of `row_ids` that lack any of `columns`, in one take of the columns some of them lack."""
        wanted = dict.fromkeys(row_ids.tolist())
        columns = [c for c in columns if any(i not in self.read.setdefault(c, {}) for i in wanted)]
        missing = [i for i in wanted if any(i not in self.read[c] for c in columns)]
        if not missing:
            return
        taken = self.dataset._take_rows(missing, columns=columns)
        for column in columns:
            values = self.read[column]
            array = taken[column].combine_chunks()
            values.update(zip(missing, array.flatten().to_numpy().reshape(len(array), -1).astype(np.float64)
                              if column == "vector" else array.to_pylist()))


_DATASETS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
BESIDE_THREADS = 4  # worker threads for the queries searches run beside their other work (two a hybrid search)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The worker threads of `_beside`: made on first use (an executor starts its threads as work comes), and
    anew in a forked child, where the parent's threads do not run."""
    return ThreadPoolExecutor(BESIDE_THREADS, thread_name_prefix="pagefault-search")


os.register_at_fork(after_in_child=_pool.cache_clear)


def _beside(function, *args, **kwargs) -> Future:
    """`function(*args, **kwargs)` started on a worker thread, for a query that runs beside the rest of a search
    (Lance releases the GIL while it works)."""
    return _pool().submit(function, *args, **kwargs)


def _dataset(chunks):
    """The Lance dataset behind the (sync) table `chunks`, opened on its first search (`_run` follows the table to
    newer versions), through io_uring where it can be (`pipeline.archive.uring`): what search queries and reads.
    Measured at 100k chunks against LanceDB's async table, a take of 5 rows' text cost 0.45 ms of CPU against
    1.6 ms (`take_row_ids`: a query plan per take), a vector query 3.1 against 3.5 ms and a BM25 query 3.0 against
    3.8 ms."""
    dataset = _DATASETS.get(chunks)
    if dataset is None:
        dataset = _DATASETS[chunks] = uring.reader(chunks.to_lance())
    return dataset


def _within(matches: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`ids` (with `scores`) that are among `matches`, in their order; then the rest of `matches`, in theirs, at the
    last of those scores. Both hold each row id once (as rankings do), which spares np.isin its sorting."""
    keep = np.isin(ids, matches, assume_unique=True)
    ids, scores = ids[keep], scores[keep]
    rest = matches[~np.isin(matches, ids, assume_unique=True)]
    return np.concatenate([ids, rest]), np.concatenate([scores, np.full(len(rest), scores[-1] if len(scores) else 0.0)])


def _single(ranked: Ranked) -> tuple[np.ndarray, np.ndarray, bool]:
    return ranked.ids, ranked.scores, not ranked.capped


def fuse(vector: Ranked, fts: Ranked, tiers: list[np.ndarray], fusion: Fusion) -> tuple[np.ndarray, np.ndarray]:
    """Row ids of the union of both rankings, best first, and their fused scores.

    The fused score is scaled to 0-1 (1: first in both lists); each identifier phrase a chunk holds adds 1, so
    chunks holding more of the query's identifiers come first and scores still fall down the list.
    """
    ids = np.unique(np.concatenate([vector.ids, fts.ids, *tiers]))
    score = np.zeros(len(ids))
    weights = ((vector, 1.0), (fts, fusion.fts_weight))
    for ranked, weight in weights:
        where = np.searchsorted(ids, ranked.ids)
        if fusion.method == "rrf":
            score[where] += weight / (fusion.rrf_k + 1 + np.arange(len(ranked.ids)))
        elif len(ranked.ids) and ranked.scores[0] > 0:
            score[where] += weight * ranked.scores / ranked.scores[0]
    best = sum(weight / (fusion.rrf_k + 1) if fusion.method == "rrf" else weight for _, weight in weights)
    score /= best or 1.0
    for tier in tiers:
        score[np.searchsorted(ids, tier)] += 1.0
    order = np.argsort(-score, kind="stable")
    return ids[order], score[order]


def vector_matches(chunks, vector: np.ndarray, depth: int = EXACT_HEAD, limit: int | None = None) -> Ranked:
    """Chunks at cosine similarity MIN_SIMILARITY or more from `vector`, nearest first (at most `limit`, default
    COUNT_LIMIT).

    One index query ranks up to `limit` neighbours by the index's approximate distances; the first `depth`
    are re-ranked by their exact similarity (their vectors are read, nothing else), and the rest get the
    similarity their approximate distance implies, scaled to the exact ones of those first rows (IVF indexes
    report another scale than a flat scan, and it differs while new rows are not yet indexed). The similarity
    floor is applied to those: a floor on an index's raw distances drops nearly every match.
    """
    return _run(chunks, _vector_matches, vector, depth, limit)


def _vector_matches(read: _Read, vector: np.ndarray, depth: int = EXACT_HEAD,
                    limit: int | None = None) -> Ranked:
    return _neighbours(read, vector, limit).ranked(read, vector, depth)


def _neighbours(read: _Read, vector: np.ndarray, limit: int | None = None) -> _Neighbours:
    limit = limit or COUNT_LIMIT
    nearest = {"column": "vector", "q": vector, "k": limit, "nprobes": NPROBES, "metric": "cosine"}
    result = read.query(["_distance"], nearest=nearest)
    return _Neighbours(result["_rowid"].to_numpy(), result["_distance"].to_numpy().astype(np.float64),
                       result.num_rows >= limit)


@dataclass(frozen=True)
class _Neighbours:
    """One vector index query's rows, nearest first by the index's approximate cosine distances; `full` when it
    returned as many rows as it was asked for."""

    ids: np.ndarray
    approx: np.ndarray
    full: bool

    def ranked(self, read: _Read, vector: np.ndarray, head: int) -> Ranked:
        """The matches (similarity MIN_SIMILARITY or more), the first `head` rows re-ranked by exact similarity
        (their stored vectors, read through `read`), the rest at the similarity their approximate distance implies,
        scaled to the exact ones of those first rows (`vector_matches`)."""
        ids, approx = self.ids, self.approx
        scores = 1 - approx
        for rows in sorted({min(head, len(ids)), len(ids)} - {0}):  # all rows only when the first give no scale
            sims = _cosine(read.vectors(ids[:rows]), vector)
            far = (approx[:rows] > 1e-6) & (sims < 1 - 1e-6)  # rows identical to the query tell no scale
            if far.any() or rows == len(ids):
                scale = float(np.median((1 - sims[far]) / approx[:rows][far])) if far.any() else 1.0
                scores = np.concatenate([sims, 1 - approx[rows:] * scale])
                order = np.concatenate([np.argsort(-sims, kind="stable"), np.arange(rows, len(ids))])
                ids, scores = ids[order], scores[order]
                break
        keep = scores >= MIN_SIMILARITY
        return Ranked(ids[keep], scores[keep], self.full and bool(keep[-1]))


def _cosine(vectors: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return vectors @ vector / np.maximum(np.linalg.norm(vectors, axis=1) * np.linalg.norm(vector), 1e-12)


def fts_matches(chunks, query: str, expansion: list[str] | None = None, limit: int | None = None) -> Ranked:
    """Chunks holding any of the query's words, by BM25 (at most `limit`, default COUNT_LIMIT); with `expansion`,
    or any of those words, each counting as one more query word."""
    return _run(chunks, _fts_matches, query, expansion, limit)


def _fts_matches(read: _Read, query: str, expansion: list[str] | None = None, limit: int | None = None,
                 within: np.ndarray | None = None) -> Ranked:
    """`fts_matches`, among the rows `within` only where given (the statistics BM25 scores by stay the table's)."""
    from lance.dataset import serialize_row_addrs
    from lance.query import MatchQuery

    limit = limit or COUNT_LIMIT
    match = MatchQuery(" ".join([query, *(expansion or [])]), SEARCH_COLUMN)
    allow = {} if within is None else {"row_addr_allowlist": serialize_row_addrs(within.tolist())}
    result = read.query(["_score"], full_text_query=match, limit=limit, **allow)
    return Ranked.of(result, "_score", limit)


def phrase_matches(chunks, token: str) -> np.ndarray:
    """Row ids of the chunks whose indexed text holds `token` as a phrase (its word pieces in order)."""
    return _run(chunks, _phrase_matches, token)


def _phrase_matches(read: _Read, token: str) -> np.ndarray:
    from lance.query import PhraseQuery

    result = read.query(["_score"], full_text_query=PhraseQuery(token, SEARCH_COLUMN), limit=PHRASE_LIMIT)
    return result["_rowid"].to_numpy()


def _hit(row: dict[str, Any], score: float) -> Hit:
    confidence = row["ocr_confidence"]
    return Hit(chunk_id=row["chunk_id"], source=row["source"], page=row["page"], page_end=row["page_end"],
               heading=row["heading"] or "", text=row["text"], score=round(score, 6), ocr=bool(row["ocr"]),
               ocr_confidence=None if confidence is None else round(float(confidence), 4))
