"""OCR benchmark: pages/s of the OCR readers, the ingest time of a scanned PDF against the same PDF with a text
layer, and the character error rate of every sample scan (`pipeline.scans.SAMPLES`).

The scanned PDF has PAGES full A4 pages of manual prose (11 pt, about 2,900 characters a page) scanned at 300
dpi; the typed PDF holds the same text as a text layer. Each ingest runs in a fresh process with default
settings (OCR and embedding workers sized by cores).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from pipeline.bench.ingest import ingest_in_child

PAGES = 6


def page_texts(pages: int = PAGES) -> list[str]:
    from pipeline.democorpus import filler_paragraph

    rng = random.Random(10)
    return ["\n\n".join(filler_paragraph(rng, 5) for _ in range(6)) for _ in range(pages)]


def reading_rate(pdf: Path, texts: list[str], workers: int) -> dict:
    """Pages/s of a PageReader with `workers` processes (1: in this process), its workers started and warm, and
    the CER of what it read against `texts`, the pages' source."""
    from pipeline.ingest.ocr import PageReader
    from pipeline.scans import cer

    pages = len(texts)
    with PageReader("force", workers) as reader:
        for future in [reader.submit(str(pdf), 1) for _ in range(max(workers, 1))]:
            future.result()  # start (and warm) every worker
        started = time.perf_counter()
        futures = [reader.submit(str(pdf), n) for n in range(1, pages + 1)]
        read = [reader.result(f, str(pdf), n).text for n, f in enumerate(futures, start=1)]
        seconds = time.perf_counter() - started
    rates = [cer(r, t) for r, t in zip(read, texts)]
    return {"workers": workers, "pages": pages, "seconds": round(seconds, 2), "pages_per_s": round(pages / seconds, 3),
            "cer_mean": round(sum(rates) / pages, 4), "cer_max": round(max(rates), 4)}


def sample_cer() -> dict:
    """CER and confidence of each sample scan, read in this process (one page each)."""
    import numpy as np

    from pipeline.ingest.ocr import Engine
    from pipeline.scans import POOR, SAMPLES, cer, scan_image

    engine = Engine(threads=1)
    out = {}
    for name, scan in {**SAMPLES, "60 dpi, grain sd 60 (poor)": POOR}.items():
        read = engine.read(np.asarray(scan_image(scan)))
        out[name] = {"cer": round(cer(read.text, scan.text), 4), "confidence": read.confidence}
    return out


def run(out_dir: Path) -> dict:
    from pipeline.ingest.ocr import ocr_workers
    from pipeline.scans import Scan, write_pdf

    texts = page_texts()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "scanned").mkdir(), (tmp / "typed").mkdir()
        scanned = write_pdf(tmp / "scanned" / "manual.pdf", [Scan(t, dpi=300) for t in texts])
        write_pdf(tmp / "typed" / "manual.pdf", texts)

        workers = ocr_workers(0)
        rates = [reading_rate(scanned, texts, workers)] + ([reading_rate(scanned, texts, 1)] if workers > 1 else [])

        runs = {}
        for kind in ("typed", "scanned"):
            started = time.perf_counter()
            report = ingest_in_child(tmp / kind, tmp / f"store-{kind}")
            runs[kind] = {"seconds": round(time.perf_counter() - started, 2), "pages": report["pages"],
                          "ocr_pages": report["ocr_pages"], "chunks": report["chunks"],
                          "peak_rss_mb": round(report["peak_rss_mb"]),
                          "worker_peak_rss_mb": round(report["worker_peak_rss_mb"])}

    return {
        "pages": PAGES, "dpi": 300, "chars_per_page": round(sum(len(t) for t in texts) / PAGES),
        "ocr_reading": rates,
        "ingest": runs,
        "scanned_over_typed_ingest_time": round(runs["scanned"]["seconds"] / runs["typed"]["seconds"], 2),
        "sample_cer": sample_cer(),
    }
