"""Embedding backends side by side: export time, raw encode speed, query latency, Cranfield quality, and the
Debian-corpus ingest of the default backend against torch, all in one run (ratios, since this machine drifts).

Parts write the JSON as they finish, so a long run interrupted still leaves its figures. BENCH_DEBIAN=0 skips
the two Debian ingests (about 8 minutes each on a quiet machine).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

from pipeline.bench.retrieval import CRANFIELD, MODES, cranfield_corpus, judged_queries, scores_by_mode

SAMPLE = 1024  # chunks every backend encodes in the raw comparison
QUALITY_SLACK = 0.005  # nDCG@10 and recall@100 a default backend may lose against torch fp32, in every mode


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def export_seconds(backend: str, cache: Path) -> float:
    from pipeline.config import DEFAULT_EMBEDDER
    from pipeline.ingest.embed import Embedder

    started = time.perf_counter()
    Embedder(DEFAULT_EMBEDDER, backend=backend).onnx_file
    return round(time.perf_counter() - started, 2)


def corpus_sample(corpus: Path, embedder, want: int = 4 * SAMPLE) -> list[str]:
    """Chunk texts as ingest makes them, from the corpus's files in order until there are `want` of them."""
    from pipeline.config import Settings
    from pipeline.ingest.chunk import chunk_sections
    from pipeline.ingest.discover import discover
    from pipeline.ingest.parse import parse

    settings, texts = Settings(), []
    for rel in sorted(discover(corpus)[0], key=lambda p: p.suffix != ".html"):  # the small HTML pages first
        sections = parse(corpus / rel).sections
        texts += [c.text for c in chunk_sections(sections, embedder.tokenizer, max_tokens=settings.chunk_tokens,
                                                 overlap=settings.chunk_overlap)]
        if len(texts) >= want:
            break
    return texts


def raw_rate(texts: list[str], embedder) -> float:
    """chunks/s of one `encode` of all `texts` in this process (the runtime's default threads), warmed up."""
    embedder.encode(texts[:32])
    started = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def pool_rate(texts: list[str], embedder, workers: int) -> float:
    from pipeline.bench.ingest import raw_pool_rate

    return raw_pool_rate(texts, embedder, workers)


def query_p50_ms(embedder, queries: list[str]) -> float:
    embedder.encode(queries[:2])
    samples = []
    for query in queries:
        started = time.perf_counter()
        embedder.encode([query])
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 2)


def within(scores: dict, reference: dict) -> bool:
    return all(reference[mode][metric] - scores[mode][metric] <= QUALITY_SLACK
               for mode in MODES for metric in ("ndcg@10", "recall@100"))


def run(out_dir: Path) -> dict:
    from pipeline.bench.ingest import ingest_in_child, real_corpus
    from pipeline.config import DEFAULT_EMBED_BACKEND, DEFAULT_EMBEDDER, Settings
    from pipeline.ingest.backends import BACKENDS, cpu_features
    from pipeline.ingest.embed import Embedder
    from pipeline.ingest.local import ingest_directory
    from pipeline.archive.store import Archive

    if not CRANFIELD.exists():
        return {"skipped": f"{CRANFIELD} not available"}
    work = out_dir / "backends-work"
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "model-cache"
    os.environ["ANALYZE_MODEL_CACHE"] = str(cache)  # a fresh cache: the export is timed from nothing
    result: dict = {"cpu_features": sorted(cpu_features()), "load_at_start": _load(), "backends": {}}
    save = lambda: (out_dir / "backends.json").write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731
    embedders = {backend: Embedder(DEFAULT_EMBEDDER, backend=backend) for backend in BACKENDS}
    rows = result["backends"]
    for backend, embedder in embedders.items():
        rows[backend] = {"quantization": embedder.quantization}
        if backend != "torch":
            rows[backend]["export_seconds"] = export_seconds(backend, cache)
    save()

    corpus = cranfield_corpus(out_dir)
    for backend, embedder in embedders.items():
        store = work / f"cranfield-{backend}"
        report = ingest_directory(corpus, Settings.from_env(store=store), progress=False, embedder=embedder)
        rows[backend]["cranfield"] = scores_by_mode(Archive.open(store))
        rows[backend]["cranfield_ingest_chunks_per_s"] = round(report.chunks_per_s, 2)
        save()
    reference = rows["torch"]["cranfield"]
    for backend in BACKENDS:
        rows[backend]["cranfield_within_slack_of_torch"] = within(rows[backend]["cranfield"], reference)

    corpus = real_corpus(out_dir) if os.environ.get("BENCH_DEBIAN", "1") != "0" else None
    if corpus is not None:
        texts, result["raw_sample"] = corpus_sample(corpus, embedders["torch"]), f"{SAMPLE} chunks of {corpus}"
    else:
        texts = Archive.open(work / "cranfield-torch").chunks.to_arrow().column("text").to_pylist()
        result["raw_sample"] = f"{SAMPLE} Cranfield chunks"
    random.Random(0).shuffle(texts)
    texts = texts[:SAMPLE]
    runs: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    for _ in range(2):  # rounds alternate the backends, so that a drift in the machine's speed touches all alike
        for backend, embedder in embedders.items():
            runs[backend].append(raw_rate(texts, embedder))
    pools = {backend: {workers: round(pool_rate(texts[:SAMPLE // 2], embedders[backend], workers), 2)
                       for workers in (1, 2)} for backend in BACKENDS if backend != "torch"}
    torch_rate = statistics.mean(runs["torch"])
    queries = [q["text"] for q in judged_queries()[0]][:100]
    for backend, embedder in embedders.items():
        rate = statistics.mean(runs[backend])
        rows[backend] |= {
            "raw_encode_chunks_per_s": round(rate, 2), "raw_encode_runs": [round(r, 2) for r in runs[backend]],
            "raw_encode_ratio_vs_torch": round(rate / torch_rate, 3),
            "raw_workers_chunks_per_s": pools.get(backend),
            "query_p50_ms": query_p50_ms(embedder, queries),
        }
    eligible = [b for b in BACKENDS if rows[b]["cranfield_within_slack_of_torch"]]
    result["fastest_within_quality_slack"] = max(eligible, key=lambda b: rows[b]["raw_encode_chunks_per_s"])
    result["default_backend"] = DEFAULT_EMBED_BACKEND
    result["load_after_raw"] = _load()
    save()

    if corpus is None:
        result["debian_ingest"] = {"skipped": "BENCH_DEBIAN=0 or ../shared/corpora/debian-docs.sh not available"}
    else:
        runs_e2e = {}
        chosen = result["fastest_within_quality_slack"]
        for backend in dict.fromkeys(["torch", chosen]):
            report = ingest_in_child(corpus, work / f"debian-{backend}", ANALYZE_EMBED_BACKEND=backend)
            runs_e2e[backend] = {key: report[key] for key in ("chunks", "seconds", "chunks_per_s", "embed_seconds",
                                                                "peak_rss_mb", "worker_peak_rss_mb", "failed")}
        best = runs_e2e[chosen]
        result["debian_ingest"] = {
            "corpus": str(corpus), "runs": runs_e2e, "backend": chosen,
            "ratio_vs_torch": round(best["chunks_per_s"] / runs_e2e["torch"]["chunks_per_s"], 3),
            "ratio_vs_its_raw_encode": round(best["chunks_per_s"] / rows[chosen]["raw_encode_chunks_per_s"], 3)}
        result["load_after_debian"] = _load()
    save()
    result["load_at_end"] = _load()
    result["targets"] = {"raw_encode_ratio_vs_torch (default)": ">= 2.0", "debian ratio_vs_torch": ">= 1.8",
                         "debian ratio_vs_its_raw_encode": ">= 0.95",
                         "cranfield": f"within {QUALITY_SLACK} of torch in every mode"}
    save()
    return result
