"""OCR of PDF pages without a usable text layer: real scans (generated image-only PDFs), the real RapidOCR engine,
a real LanceDB store, offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypdf import PdfReader, PdfWriter
from pypdf.generic import NameObject, NumberObject

from conftest import gone
from pipeline.archive.store import Archive
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.ingest.local import ingest_directory
from pipeline.ingest.ocr import PageReader
from pipeline.ingest.parse import ParseError, parse
from pipeline.scans import CLEAN_300, PASSAGES, POOR, SAMPLES, Scan, cer, write_pdf
from pipeline.testing import CHILD_TIMEOUT
from pipeline.types import LOW_OCR_CONFIDENCE

TYPED = ("The Hydra-7 pump is installed on a level concrete foundation. The operator checks the alignment of the "
         "coupling before the first start and records the readings in the service log.")
FACT = "The coolant used in the chillers is ZEPHYRINE-40."


def test_scans_are_read_offline_within_two_percent_cer(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("OCR tried to reach the network")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    names = list(SAMPLES)
    pdf = write_pdf(tmp_path / "scans.pdf", [SAMPLES[name] for name in names])
    with PageReader("auto", workers=1) as reader:
        parsed = parse(pdf, reader)
        sections = list(parsed.sections)
    assert [s.page for s in sections] == list(range(1, len(names) + 1))
    rates = {name: cer(s.text, SAMPLES[name].text) for name, s in zip(names, sections)}
    with capsys.disabled():
        print("\nOCR character error rates: " + ", ".join(f"{n}: {r:.2%}" for n, r in rates.items()))
    assert all(rates[name] <= 0.02 for name in CLEAN_300), rates
    assert all(rate <= 0.05 for rate in rates.values()), rates
    assert all(s.ocr_confidence is not None and s.ocr_confidence >= LOW_OCR_CONFIDENCE for s in sections)
    assert (parsed.ocr.pages, parsed.ocr.low_confidence, parsed.ocr.failed) == (len(names), 0, [])


def test_which_pages_auto_reads_by_ocr(tmp_path):
    """No OCR runs here: only the decision. A text layer of 100 visible characters or more is kept; a thinner one
    is OCR'd when pictures cover most of the page; a page with no text at all is OCR'd unless it is blank."""
    pdf = write_pdf(tmp_path / "kinds.pdf", [
        TYPED,  # a good text layer
        "Appendix B",  # thin, but nothing else on the page: it is all there is
        Scan(PASSAGES[0], dpi=50),  # a picture and no text layer
        Scan(PASSAGES[0], dpi=50, layer="Scanned 2031-03-14 by ACME Copier"),  # a scanner's stamp over a picture
        Scan(PASSAGES[0], dpi=50, layer=TYPED),  # a searchable scan: its text layer is good
        "",  # blank
    ])
    texts = [page.extract_text() or "" for page in PdfReader(pdf).pages]
    with PageReader("auto") as auto, PageReader("force") as force:
        assert [auto.wants(str(pdf), n, t) for n, t in enumerate(texts, 1)] == [False, False, True, True, False,
                                                                                 False]
        assert [force.wants(str(pdf), n, t) for n, t in enumerate(texts, 1)] == [True] * 5 + [False]


def test_force_reads_typed_pages_by_ocr_and_off_reads_none(tmp_path):
    pdf = write_pdf(tmp_path / "typed.pdf", [TYPED])
    with PageReader("force") as reader:
        [section] = parse(pdf, reader).sections
    assert section.ocr_confidence is not None and cer(section.text, TYPED) <= 0.02
    scan = write_pdf(tmp_path / "scan.pdf", [Scan(FACT, dpi=150)])
    with pytest.raises(ParseError, match=r"^no extractable text \(OCR is off\)$"):
        list(parse(scan).sections)


def test_poor_scan_is_kept_but_marked_low_confidence(tmp_path):
    pdf = write_pdf(tmp_path / "poor.pdf", [POOR])
    with PageReader() as reader:
        parsed = parse(pdf, reader)
        [section] = parsed.sections
    assert section.text.strip() and section.ocr_confidence < LOW_OCR_CONFIDENCE
    assert (parsed.ocr.pages, parsed.ocr.low_confidence) == (1, 1)


def _break_page_tree(path: Path) -> Path:
    """Make the page tree claim one page fewer than it holds: pypdf walks the tree and finds the last page,
    pdfium trusts the count and cannot load it."""
    writer = PdfWriter(clone_from=path)
    pages = writer._root_object["/Pages"].get_object()
    pages[NameObject("/Count")] = NumberObject(len(writer.pages) - 1)
    writer.write(path)
    return path


@pytest.fixture(scope="module")
def scanned_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanned")
    write_pdf(root / "mixed.pdf", [TYPED, Scan(f"Cooling system.\n\n{FACT}", dpi=200), "Maintenance: replace the "
                                   "seals of the Hydra-7 pump every 500 hours, and log each replacement."])
    write_pdf(root / "with-blank.pdf", [Scan("Minutes of the board meeting of 12 March 2029.", dpi=150), Scan("")])
    write_pdf(root / "blank-scan.pdf", [Scan(""), Scan("", noise=8)])
    _break_page_tree(write_pdf(root / "damaged.pdf", [TYPED, Scan("This page cannot be rendered.", dpi=100)]))
    (root / "notes.txt").write_text("The chiller room is on level 2.\n")
    return root


@pytest.fixture(scope="module")
def scanned_store(scanned_corpus, tmp_path_factory, embedder):
    settings = Settings.from_env(store=tmp_path_factory.mktemp("scanned-store") / "archive", ocr_workers=2)
    report = ingest_directory(scanned_corpus, settings, progress=False, embedder=embedder)
    return settings, report


def test_mixed_and_scanned_pdfs_land_with_page_provenance(scanned_store, embedder):
    settings, report = scanned_store
    assert report.failures == [("blank-scan.pdf", "no text layer and OCR found no text")]
    assert report.warnings == [("damaged.pdf", "page 2 failed to render: Failed to load page.")]
    # OCR'd in the documents that landed: mixed.pdf page 2, both pages of with-blank.pdf (one a blank sheet)
    assert (report.new, report.ocr_pages, report.ocr_low_pages) == (4, 3, 0)
    archive = Archive.open(settings.store, embedder=embedder)
    rows = archive.chunks.to_arrow().to_pylist()
    pages = sorted((r["source"], r["page"], r["ocr"]) for r in rows)
    assert pages == [("damaged.pdf", 1, False), ("mixed.pdf", 1, False), ("mixed.pdf", 2, True),
                     ("mixed.pdf", 3, False), ("notes.txt", None, False), ("with-blank.pdf", 1, True)]
    assert all((r["ocr_confidence"] is not None) == r["ocr"] for r in rows)
    docs = archive.document_rows()
    assert {p: (d["ocr_pages"], d["status"]) for p, d in docs.items()} == {
        "mixed.pdf": (1, "ok"), "with-blank.pdf": (2, "ok"), "blank-scan.pdf": (0, "failed"),
        "damaged.pdf": (0, "ok"), "notes.txt": (0, "ok")}
    assert docs["damaged.pdf"]["warning"] == "page 2 failed to render: Failed to load page."
    assert "(3 OCR'd, 0 with low confidence)" in report.summary()


def test_a_fact_only_on_a_scanned_page_is_found_by_search_with_its_page(scanned_store):
    settings, _ = scanned_store
    out = CliRunner().invoke(main, ["search", "Which coolant is used in the chillers?", "--store",
                                    str(settings.store), "--json", "-k", "1"])
    assert out.exit_code == 0, out.output
    [hit] = json.loads(out.output)
    assert (hit["source"], hit["page"], hit["ocr"], hit["low_confidence"]) == ("mixed.pdf", 2, True, False)
    assert "ZEPHYRINE-40" in hit["text"] and hit["ocr_confidence"] >= LOW_OCR_CONFIDENCE
    status = CliRunner().invoke(main, ["status", "--store", str(settings.store)])
    assert "(3 read by OCR, 0 with low confidence)" in status.output
    assert "failed     blank-scan.pdf: no text layer and OCR found no text" in status.output
    assert "warning    damaged.pdf: page 2 failed to render: Failed to load page." in status.output


def test_unchanged_scans_are_not_read_again_and_another_mode_rereads_pdfs(scanned_corpus, scanned_store, embedder,
                                                                          monkeypatch):
    settings, first = scanned_store
    monkeypatch.setattr(PageReader, "submit", lambda *a: pytest.fail("an unchanged file was OCR'd again"))
    again = ingest_directory(scanned_corpus, settings, progress=False, embedder=embedder)
    assert (again.unchanged, again.changed, again.ocr_pages, again.chunks) == (4, 0, 0, 0)
    assert again.failures == first.failures

    off = ingest_directory(scanned_corpus, settings.with_(ocr="off"), progress=False, embedder=embedder)
    assert (off.unchanged, off.changed) == (1, 2)  # notes.txt is no PDF: it is not read again
    assert sorted(off.failures) == [("blank-scan.pdf", "no extractable text (OCR is off)"),
                                    ("with-blank.pdf", "no extractable text (OCR is off)")]
    rows = Archive.open(settings.store, embedder=embedder).chunks.to_arrow().to_pylist()
    assert not any(r["ocr"] for r in rows) and ("mixed.pdf", 2) not in {(r["source"], r["page"]) for r in rows}
    assert off.embedded == 0  # the typed pages' chunks kept their vectors


def test_missing_engine_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    write_pdf(tmp_path / "docs" / "a.pdf", [TYPED])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    out = CliRunner().invoke(main, ["ingest", str(tmp_path / "docs"), "--store", str(tmp_path / "s"), "-q"])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == ["Error: OCR needs rapidocr and onnxruntime: pip install "
                                               "rapidocr==3.10.0 onnxruntime==1.32.0 (or `make setup`), or ingest "
                                               "with --ocr off"]
    monkeypatch.setenv("ANALYZE_OCR", "off")
    assert Settings.from_env().ocr == "off"


def test_dead_ocr_workers_fall_back_to_this_process(tmp_path, capsys):
    pdf = write_pdf(tmp_path / "scan.pdf", [Scan(FACT, dpi=150), Scan(FACT, dpi=150)])
    with PageReader(workers=2) as reader:
        first = reader.submit(str(pdf), 1)
        assert FACT in reader.result(first, str(pdf), 1).text
        for process in list(reader._executor._processes.values()):
            process.kill()
        second = reader.submit(str(pdf), 2)
        assert FACT in reader.result(second, str(pdf), 2).text
        assert reader.workers == 1
    assert "OCR workers failed" in capsys.readouterr().err


KILLER = textwrap.dedent("""
    import multiprocessing, os, signal, sys
    import pipeline.ingest.local as ingest
    from pipeline.config import Settings
    from pipeline.ingest.ocr import PageReader
    ingest.WRITE_BATCH = ingest.EMBED_BATCH = 1
    original = PageReader.result
    def result(self, future, path, number):
        if number == 3:  # pages 1 and 2 were read and their chunks written; the document row was not
            print(*[p.pid for p in multiprocessing.active_children()], flush=True)  # the OCR workers
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, future, path, number)
    PageReader.result = result
    ingest.ingest_directory(sys.argv[1], Settings.from_env(store=sys.argv[2], embed_workers=1, ocr_workers=2),
                            progress=False)
""")


def test_sigkill_during_ocr_then_rerun_equals_a_clean_run(tmp_path, embedder):
    from test_ingest import snapshot

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_pdf(corpus / "scan.pdf", [Scan(f"Page {n}: valve {n} is torqued to {n * 3} Nm.", dpi=100)
                                    for n in range(1, 4)])  # killed as page 3's text is taken: 1 and 2 written
    (corpus / "notes.txt").write_text("Valves are checked yearly.\n")
    clean = Settings.from_env(store=tmp_path / "clean", ocr_workers=1)
    assert ingest_directory(corpus, clean, progress=False, embedder=embedder).ocr_pages == 3

    crashed = tmp_path / "crashed"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(corpus), str(crashed)], env=env, capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    workers = [int(pid) for pid in proc.stdout.split()]
    assert len(workers) == 2 and all(gone(pid, within=20) for pid in workers), "OCR workers outlived their parent"
    assert Archive.open(crashed).chunks.count_rows("source = 'scan.pdf'") > 0  # the crash left chunks behind
    ingest_directory(corpus, Settings.from_env(store=crashed, ocr_workers=1), progress=False, embedder=embedder)
    assert snapshot(crashed) == snapshot(clean.store)
