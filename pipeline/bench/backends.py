"""Embedding backends and other ONNX recipes side by side, in one run (ratios, since this machine drifts): export
time and raw encode speed on the same chunks (all of them); query latency, Cranfield quality and ingest speed with
peak RSS per worker (backends; the recipes' Cranfield quality from re-embedded copies of torch's store); the
Debian-corpus ingest of the default's candidate against torch; the --workers rule (on 256 chunks).

Parts write the JSON as they finish (most telling first), so a run cut short still leaves its figures.
BENCH_DEBIAN=0 skips the two Debian ingests (about 8 minutes each on a quiet machine); BENCH_QUICK=1 is a smoke
run of a few minutes (64 chunks, 60 Cranfield abstracts and 10 queries, one round, no Debian): its figures mean
nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.bench.retrieval import CRANFIELD, MODES, cranfield_corpus, judged_queries, scores_by_mode

SAMPLE = 1024  # chunks every backend encodes in the raw comparison
QUALITY_SLACK = 0.005  # nDCG@10 and recall@100 a default backend may lose against torch fp32, in every mode
# Other recipes (pipeline.ingest.onnx_export.RECIPES), candidates for the onnx / onnx-int8 backends that detection
# does not choose today: encoded beside the backends, scored on Cranfield from a copy of torch's store re-embedded.
ALTERNATIVES = (("onnx", "fp32-fused"), ("onnx-int8", "int8-dynamic-avx2-fused"),
                ("onnx-int8", "int8-dynamic-avx2-per-tensor"), ("onnx-int8", "int8-dynamic-avx512_vnni"),
                ("onnx-int8", "int8-dynamic-u8"), ("onnx-int8", "int8-dynamic-avx2-matmul"),
                ("onnx-int8", "int8-dynamic-avx2-ffn-out-fp32"), ("onnx-int8", "int8-dynamic-u8-ffn-out-fp32"))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def export_seconds(embedder) -> float:
    started = time.perf_counter()
    embedder.onnx_file
    return round(time.perf_counter() - started, 2)


def corpus_sample(corpus: Path, embedder, want: int) -> list[str]:
    """Search texts of chunks as ingest makes them, from the corpus's HTML pages (then its PDFs) until there
    are `want` of them."""
    from pipeline.config import Settings
    from pipeline.ingest.chunk import chunk_sections
    from pipeline.ingest.discover import discover
    from pipeline.ingest.parse import parse

    settings, texts = Settings(), []
    for rel in sorted(discover(corpus)[0], key=lambda p: p.suffix != ".html"):  # the small HTML pages first
        sections = parse(corpus / rel).sections
        texts += [c.search_text for c in chunk_sections(sections, embedder.tokenizer,
                                                        max_tokens=settings.chunk_tokens,
                                                        overlap=settings.chunk_overlap)]
        if len(texts) >= want:
            break
    return texts


def timed_encode(texts: list[str], embedder) -> tuple[float, np.ndarray]:
    """chunks/s of one `encode` of all `texts` in this process (the runtime's default threads), warmed up;
    and the vectors."""
    embedder.encode(texts[:32])
    started = time.perf_counter()
    vectors = embedder.encode(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def cosines(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    values = (vectors * reference).sum(axis=1)
    return {"mean": round(float(values.mean()), 4), "min": round(float(values.min()), 4)}


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
    from pipeline.bench.ingest import real_corpus
    from pipeline.config import DEFAULT_EMBED_BACKEND, DEFAULT_EMBEDDER
    from pipeline.ingest.backends import BACKENDS, cpu_features
    from pipeline.ingest.embed import Embedder

    if not CRANFIELD.exists():
        return {"skipped": f"{CRANFIELD} not available"}
    quick = os.environ.get("BENCH_QUICK", "0") != "0"
    work = out_dir / "backends-work"
    shutil.rmtree(work, ignore_errors=True)
    os.environ["ANALYZE_MODEL_CACHE"] = str(work / "model-cache")  # a fresh cache: the export is timed from nothing
    result: dict = {"quick": quick, "cpu_features": sorted(cpu_features()), "load_at_start": _load(),
                    "backends": {}, "alternatives": {}}
    save = lambda: (out_dir / "backends.json").write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731
    embedders = {backend: Embedder(DEFAULT_EMBEDDER, backend=backend) for backend in BACKENDS}
    others = {f"{backend} {quantization}": Embedder(DEFAULT_EMBEDDER, backend=backend, quantization=quantization)
              for backend, quantization in ALTERNATIVES
              if quantization not in {e.quantization for e in embedders.values()}}
    rows, alternatives = result["backends"], result["alternatives"]
    for backend, embedder in embedders.items():
        rows[backend] = {"quantization": embedder.quantization}
        if backend != "torch":
            rows[backend]["export_seconds"] = export_seconds(embedder)
    for name, embedder in others.items():
        alternatives[name] = {"export_seconds": export_seconds(embedder)}
    save()

    sample = 64 if quick else SAMPLE
    debian = None if quick or os.environ.get("BENCH_DEBIAN", "1") == "0" else real_corpus(out_dir)
    source = None if quick else (debian or real_corpus(out_dir))
    if source is not None:
        texts = corpus_sample(source, embedders["torch"], 2 * sample)
        result["raw_sample"] = f"{sample} chunks (search texts) of {source}"
    else:
        texts, result["raw_sample"] = cranfield_texts(out_dir, sample), f"{sample} Cranfield abstracts (their files' text)"
    random.Random(0).shuffle(texts)
    texts = texts[:sample]
    raw_encode(embedders | others, texts, rows | alternatives, rounds=1 if quick else 2)
    result["load_after_raw"] = _load()
    queries = [q["text"] for q in judged_queries()[0]][:10 if quick else 100]
    for backend, embedder in embedders.items():
        rows[backend]["query_p50_ms"] = query_p50_ms(embedder, queries)
    save()

    cranfield(embedders, rows, cranfield_corpus(out_dir, limit=60 if quick else None), work,
              queries=10 if quick else None, save=save)
    reembedded_cranfield(others, alternatives, work, reference=rows["torch"]["cranfield"],
                         queries=10 if quick else None, save=save)
    everything = rows | alternatives
    eligible = [name for name, row in everything.items() if row["cranfield_within_slack_of_torch"]]
    result["fastest_within_quality_slack"] = max(eligible, key=lambda n: everything[n]["raw_encode_chunks_per_s"])
    result["default_backend"] = DEFAULT_EMBED_BACKEND
    result["load_after_cranfield"] = _load()
    save()

    if debian is None:
        result["debian_ingest"] = {"skipped": "BENCH_DEBIAN=0, BENCH_QUICK=1, or ../shared/corpora/debian-docs.sh "
                                              "not available"}
    else:
        result["debian_ingest"] = debian_ingest(debian, rows, work, save)
    result["load_after_debian"] = _load()
    save()

    workers_rule(embedders, rows, texts[:len(texts) // 4])
    result["load_at_end"] = _load()
    result["targets"] = {"raw_encode_ratio_vs_torch (default)": ">= 2.0", "debian ratio_vs_torch": ">= 1.8",
                         "debian ratio_vs_its_raw_encode": ">= 0.95",
                         "cranfield": f"within {QUALITY_SLACK} of torch in every mode"}
    save()
    return result


def raw_encode(embedders: dict, texts: list[str], rows: dict, *, rounds: int) -> None:
    """Every backend and recipe encodes the same chunks, in alternating rounds (a drift in the machine's speed
    touches all alike); ratios to torch and cosines to its vectors go into `rows`."""
    runs: dict[str, list[float]] = {backend: [] for backend in embedders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for backend, embedder in embedders.items():
            rate, vectors[backend] = timed_encode(texts, embedder)
            runs[backend].append(rate)
    torch_rate = statistics.mean(runs["torch"])
    for backend, rates in runs.items():
        rows[backend] |= {"raw_encode_chunks_per_s": round(statistics.mean(rates), 2),
                          "raw_encode_runs": [round(r, 2) for r in rates],
                          "raw_encode_ratio_vs_torch": round(statistics.mean(rates) / torch_rate, 3),
                          "cosine_to_torch": cosines(vectors[backend], vectors["torch"])}


def cranfield(embedders: dict, rows: dict, corpus: Path, work: Path, *, queries: int | None, save) -> None:
    """Each backend ingests Cranfield in a fresh process (its peak RSS and its workers' its own), and its store
    is searched in every mode (the queries embedded with the store's backend)."""
    from pipeline.bench.ingest import ingest_in_child
    from pipeline.archive.store import Archive

    for backend in embedders:
        store = work / f"cranfield-{backend}"
        report = ingest_in_child(corpus, store, ANALYZE_EMBED_BACKEND=backend)
        rows[backend] |= {"cranfield": scores_by_mode(Archive.open(store), queries=queries),
                          "cranfield_ingest": {key: report[key] for key in (
                              "chunks", "seconds", "chunks_per_s", "peak_rss_mb", "worker_peak_rss_mb", "failed")}}
        save()
    for backend in embedders:
        rows[backend]["cranfield_ingest_ratio_vs_torch"] = round(
            rows[backend]["cranfield_ingest"]["chunks_per_s"] / rows["torch"]["cranfield_ingest"]["chunks_per_s"], 3)
        rows[backend]["cranfield_within_slack_of_torch"] = within(rows[backend]["cranfield"], rows["torch"]["cranfield"])


def reembedded_cranfield(embedders: dict, rows: dict, work: Path, *, reference: dict, queries: int | None,
                         save) -> None:
    """Each recipe's copy of torch's Cranfield store, its vectors re-embedded from the same search texts (in this
    process: an ingest per recipe would cost minutes each and give the same vectors), searched in every mode."""
    for name, embedder in embedders.items():
        store = reembedded_store(work / "cranfield-torch", work / f"cranfield-{name.replace(' ', '-')}", embedder)
        rows[name]["cranfield"] = scores_by_mode(store, queries=queries)
        rows[name]["cranfield_within_slack_of_torch"] = within(rows[name]["cranfield"], reference)
        save()


def reembedded_store(source: Path, dest: Path, embedder):
    """A copy of the store at `source` whose vectors `embedder` computed from the same search texts, recording
    its backend and quantization, written and indexed through the store's own write path."""
    from dataclasses import replace

    import pyarrow as pa

    from pipeline.archive.schema import SEARCH_COLUMN
    from pipeline.archive.store import Archive

    original = Archive.open(source)
    chunks = original.chunks.to_arrow()
    vectors = embedder.encode(chunks.column(SEARCH_COLUMN).to_pylist())
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])
    chunks = chunks.set_column(chunks.schema.get_field_index("vector"), chunks.schema.field("vector"), column)
    meta = replace(original.meta, embed_backend=embedder.backend, quantization=embedder.quantization)
    archive = Archive.create(dest, meta, embedder=embedder, rebuild=True)
    archive.write(chunks, replace_sources=[], documents=original.documents.to_arrow().to_pylist())
    archive.refresh_indexes()
    return Archive.open(dest, embedder=embedder)


def workers_rule(embedders: dict, rows: dict, texts: list[str]) -> None:
    """The --workers rule: two 1-thread worker processes against one encode in this process (all the cores)."""
    from pipeline.bench.ingest import raw_pool_rate

    for backend, embedder in embedders.items():
        alone, _ = timed_encode(texts, embedder)
        pool = raw_pool_rate(texts, embedder, 2)
        rows[backend] |= {"workers_rule": {"one_process_chunks_per_s": round(alone, 2),
                                           "two_workers_chunks_per_s": round(pool, 2),
                                           "ratio": round(pool / alone, 3)}}


def debian_ingest(corpus: Path, rows: dict, work: Path, save) -> dict:
    """torch against the default's candidate (the fastest other backend within the quality slack, else the fastest
    other backend), each ingest in a fresh process."""
    from pipeline.bench.ingest import ingest_in_child

    others = [b for b in rows if b != "torch"]
    fastest = max([b for b in others if rows[b]["cranfield_within_slack_of_torch"]] or others,
                  key=lambda b: rows[b]["raw_encode_chunks_per_s"])
    runs = {}
    for backend in ("torch", fastest):
        report = ingest_in_child(corpus, work / f"debian-{backend}", ANALYZE_EMBED_BACKEND=backend)
        runs[backend] = {key: report[key] for key in ("chunks", "seconds", "chunks_per_s", "embed_seconds",
                                                        "peak_rss_mb", "worker_peak_rss_mb", "failed")}
        save()
    return {"corpus": str(corpus), "runs": runs, "backend": fastest,
            "ratio_vs_torch": round(runs[fastest]["chunks_per_s"] / runs["torch"]["chunks_per_s"], 3),
            "ratio_vs_its_raw_encode": round(runs[fastest]["chunks_per_s"] / rows[fastest]["raw_encode_chunks_per_s"], 3)}


def cranfield_texts(out_dir: Path, want: int) -> list[str]:
    """Search texts as ingest makes them of the first Cranfield abstracts (when there is no Debian corpus)."""
    return [path.read_text() for path in sorted(cranfield_corpus(out_dir).iterdir())[:2 * want]]
