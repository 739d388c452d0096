"""Pseudo-relevance feedback for hybrid search: the first pass's best chunks sharpen the query on both sides.

Classic query expansion, with nothing tuned to one collection. Vector side (Rocchio): the query vector plus the
mean of the feedback chunks' vectors, so the second pass looks for what the best hits are about, not only for
the query's wording. BM25 side (a relevance model, RM3-style): the query plus the words the feedback chunks use
most, each weighted by its share of a chunk's words, the most used word as strongly as a query word. Each
feedback chunk counts by its first-pass score, as RM3 weighs a document by its query likelihood. Neither
needs the embedder again: the chunks' stored vectors and search text are read, for those few rows only.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

FEEDBACK_TERMS = 20  # expansion words added to the BM25 query
# The full-text index's own stop words (LanceDB's English list, Lucene's): the index drops them, so they would
# only take the place of words that count.
STOP_WORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                       "there these they this to was will with".split())
_WORD = re.compile(r"[^\W_]+")


def expansion_terms(texts: list[str], weights: np.ndarray, count: int = FEEDBACK_TERMS) -> list[tuple[str, float]]:
    """The `count` words that `texts` use most, by their share of a text's words averaged with the texts' `weights`
    (their first-pass scores), and their weights (the first 1.0).

    Lower-cased words of letters and digits; stop words, single characters and bare numbers are left out (a
    number says little about a topic; an identifier with letters in it stays).
    """
    shares: Counter[str] = Counter()
    for text, weight in zip(texts, weights):
        words = [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOP_WORDS and not w.isdigit()]
        for word, n in Counter(words).items():
            shares[word] += weight * n / len(words)
    top = shares.most_common(count)
    return [] if not top else [(word, share / top[0][1]) for word, share in top]


def feedback_vector(query: np.ndarray, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rocchio's query: the unit query vector plus the mean of the unit feedback `vectors`, weighted by `weights`
    (their first-pass scores), scaled to unit length."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    mean = np.average(unit, axis=0, weights=weights if weights.sum() > 0 else None)
    moved = query / max(float(np.linalg.norm(query)), 1e-12) + mean
    return moved / max(float(np.linalg.norm(moved)), 1e-12)
