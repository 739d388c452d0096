"""Ingest benchmark on a real corpus: end-to-end vs raw encode throughput, re-ingest cost, peak memory.

Corpus: `../shared/corpora/debian-docs.sh` (3 PDFs of ~2,700 pages and 15 HTML pages), built once into
outputs/bench/debian-docs (or BENCH_CORPUS). The 100-file edit test uses the Cranfield abstracts, 14 per file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"

CHILD = """
import json, resource, sys
from pipeline.config import Settings
from pipeline.ingest.local import ingest_directory
if __name__ == "__main__":
    report = ingest_directory(sys.argv[1], Settings.from_env(store=sys.argv[2]), progress=False)
    # VmHWM is this process's own peak; ru_maxrss would also count the parent's RSS at fork. A worker's peak
    # comes from ru_maxrss of the children: they were started while this process was still small.
    peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps(report.to_dict() | {"peak_rss_mb": peak,
                                         "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def ingest_in_child(corpus: Path, store: Path, **env: str) -> dict:
    """Run one ingest in a fresh process (with `env` added to its environment) so that its peak RSS is its own."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(store)], capture_output=True, text=True,
                          env=os.environ | env)
    if proc.returncode not in (0, 2):
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def real_corpus(out_dir: Path) -> Path | None:
    corpus = Path(os.environ.get("BENCH_CORPUS", out_dir / "debian-docs"))
    script = SHARED / "corpora" / "debian-docs.sh"
    if not corpus.exists() and script.exists():
        subprocess.run(["bash", str(script), str(corpus), "small"], check=True)
    return corpus if corpus.exists() else None


def sample_texts(store: Path, sample: int = 1024) -> list[str]:
    """A random sample of the chunks the ingest produced."""
    from pipeline.archive.store import Archive

    texts = Archive.open(store).chunks.to_arrow().column("text").to_pylist()
    random.Random(0).shuffle(texts)
    return texts[:sample]


def raw_encode_rate(texts: list[str], embedder) -> float:
    """chunks/s of plain `SentenceTransformer.encode` (torch's default threads) in this process."""
    model = embedder.model
    model.encode(texts[:32])  # warm up
    started = time.perf_counter()
    model.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def raw_pool_rate(texts: list[str], embedder, workers: int) -> float:
    """chunks/s of the ingest's embedding workers alone, fed the same chunks in the ingest's batch size."""
    from pipeline.ingest.embed import EmbedPool
    from pipeline.ingest.local import EMBED_BATCH

    with EmbedPool(embedder, workers) as pool:
        for future in [pool.submit(texts[:32]) for _ in range(workers)]:  # start and warm up every worker
            future.result()
        started = time.perf_counter()
        share = min(EMBED_BATCH, -(-len(texts) // workers))
        for future in [pool.submit(texts[i:i + share]) for i in range(0, len(texts), share)]:
            future.result()
        return len(texts) / (time.perf_counter() - started)


def hundred_file_corpus(root: Path) -> Path | None:
    source = SHARED / "eval" / "cranfield" / "corpus.jsonl"
    if not source.exists():
        return None
    docs = [json.loads(line) for line in source.read_text().splitlines()]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(100):
        part = docs[i * 14:(i + 1) * 14]
        (root / f"report-{i:03d}.txt").write_text("\n\n".join(f"{d['title'].upper()}\n\n{d['text']}" for d in part))
    return root


def run(out_dir: Path) -> dict:
    from pipeline.config import Settings
    from pipeline.ingest.embed import Embedder
    from pipeline.ingest.local import POOL_MIN_BYTES, embed_workers, ingest_directory

    result: dict = {}
    embedder = Embedder(Settings.from_env().embedder)
    work = out_dir / "ingest-work"
    shutil.rmtree(work, ignore_errors=True)
    corpus = real_corpus(out_dir)
    if corpus is None:
        result["real_corpus"] = {"skipped": "../shared/corpora/debian-docs.sh not available"}
    else:
        store = work / "debian-store"
        first = ingest_in_child(corpus, store)
        texts = sample_texts(store)
        workers = embed_workers(Settings.from_env(), POOL_MIN_BYTES)
        encode_rates, pool_rates = [], []
        for _ in range(2):  # alternated, so that a drift in the machine's speed touches both alike
            encode_rates.append(raw_encode_rate(texts, embedder))
            pool_rates.append(raw_pool_rate(texts, embedder, workers))
        raw, pool = statistics.mean(encode_rates), statistics.mean(pool_rates)
        rerun = ingest_in_child(corpus, store)
        result["real_corpus"] = {
            "corpus": str(corpus), "pages": first["pages"], "chunks": first["chunks"], "failed": first["failed"],
            "first_ingest": first, "raw_encode_chunks_per_s": round(raw, 2),
            "raw_encode_runs": [round(r, 2) for r in encode_rates],
            "throughput_ratio_vs_raw_encode": round(first["chunks_per_s"] / raw, 3),
            "embed_workers": workers, "raw_workers_chunks_per_s": round(pool, 2),
            "raw_workers_runs": [round(r, 2) for r in pool_rates],
            "throughput_ratio_vs_raw_workers": round(first["chunks_per_s"] / pool, 3),
            "unchanged_reingest": rerun, "unchanged_reingest_time_ratio": round(rerun["seconds"] / first["seconds"], 4),
            "peak_rss_mb": round(first["peak_rss_mb"], 1),
            "worker_peak_rss_mb": round(first["worker_peak_rss_mb"], 1),
        }

    small = hundred_file_corpus(work / "hundred")
    if small is None:
        result["edit_one_of_100"] = {"skipped": "Cranfield corpus not available"}
    else:
        settings = Settings.from_env(store=work / "hundred-store")
        first = ingest_directory(small, settings, progress=False, embedder=embedder)
        unchanged = ingest_directory(small, settings, progress=False, embedder=embedder)
        target = small / "report-042.txt"
        target.write_text(target.read_text() + "\n\nAddendum: the tunnel was recalibrated in 1962.\n")
        edited = ingest_directory(small, settings, progress=False, embedder=embedder)
        result["edit_one_of_100"] = {
            "files": 100, "chunks": first.chunks, "first_seconds": round(first.seconds, 2),
            "unchanged_seconds": round(unchanged.seconds, 3), "edit_seconds": round(edited.seconds, 3),
            "edit_embedded_chunks": edited.embedded,
            "unchanged_time_ratio": round(unchanged.seconds / first.seconds, 4),
            "edit_time_ratio": round(edited.seconds / first.seconds, 4),
        }
    result["targets"] = {"throughput_ratio_vs_raw_encode": ">= 0.90", "unchanged_reingest_time_ratio": "<= 0.02",
                         "edit_time_ratio": "<= 0.05"}
    return result
