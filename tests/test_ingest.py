"""Ingest into a real LanceDB with real embeddings: incremental runs, bad input, settings guard, crash safety."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import batch_stamps, gone, write_pdf, write_tiny_corpus
from pipeline.config import Settings
from pipeline.ingest import local as ingest
from pipeline.ingest.local import ingest_directory
from pipeline.archive.store import Archive, StoreError
from pipeline.testing import CHILD_TIMEOUT

pytestmark = pytest.mark.slow


def snapshot(store: Path) -> tuple[list, list]:
    archive = Archive.open(store)
    chunks = sorted((r["chunk_id"], r["source"], r["page"], r["ordinal"], r["content_hash"])
                    for r in archive.chunks.to_arrow().select(
                        ["chunk_id", "source", "page", "ordinal", "content_hash"]).to_pylist())
    docs = sorted((r["path"], r["sha256"], r["status"], r["chunks"]) for r in archive.document_rows().values())
    return chunks, docs


@pytest.fixture
def corpus(tmp_path):
    return write_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env(store=tmp_path / "store")


def test_first_ingest_stores_chunks_with_provenance(corpus, settings, embedder):
    report = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (report.new, report.failed, report.pages) == (4, 0, 3)
    archive = Archive.open(settings.store, embedder=embedder)
    rows = archive.chunks.to_arrow().to_pylist()
    assert report.chunks == len(rows) == archive.count()
    pdf = sorted((r["page"], r["heading"]) for r in rows if r["source"] == "manual.pdf")
    assert pdf == [(1, "Installation"), (2, "Specifications"), (3, "Maintenance")]
    assert {r["source"] for r in rows} == {"orbit.txt", "notes/llamas.md", "menu.html", "manual.pdf"}
    assert all(r["text"].strip() and len(r["vector"]) == 384 for r in rows)
    assert len({r["chunk_id"] for r in rows}) == len(rows)


def test_rerun_skips_unchanged_edit_reembeds_only_changed_and_removal_deletes(corpus, settings, embedder):
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    before, _ = snapshot(settings.store)

    again = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (again.unchanged, again.new, again.changed, again.chunks) == (4, 0, 0, 0)
    assert snapshot(settings.store)[0] == before

    os.utime(corpus / "orbit.txt", ns=(1, 1))  # touched, same content: still unchanged, nothing embedded
    touched = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (touched.unchanged, touched.embedded) == (4, 0)

    write_pdf(corpus / "manual.pdf", ["Chapter one covers the installation of the pump.",
                                      "The maximum pressure of the Hydra-7 pump is 55 bar.",
                                      "Maintenance: replace the seals every 500 hours."],
              outline={1: "Installation", 2: "Specifications", 3: "Maintenance"})
    edited = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (edited.changed, edited.chunks, edited.embedded) == (1, 3, 1)  # only page 2 is new text
    archive = Archive.open(settings.store, embedder=embedder)
    assert "55 bar" in archive.search("maximum pressure Hydra-7", top_k=1).hits[0].text
    assert archive.search("42", mode="fts").total == 0  # the old text is gone from the index too

    (corpus / "menu.html").unlink()
    removed = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert removed.removed == 1
    assert "menu.html" not in {s for _, s, *_ in snapshot(settings.store)[0]}
    assert "menu.html" not in Archive.open(settings.store).document_rows()


def test_a_heading_change_reembeds_the_chunks_under_it(corpus, settings, embedder):
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    llamas = corpus / "notes" / "llamas.md"
    llamas.write_text(llamas.read_text().replace("## Alpacas", "## Fleece animals"))
    edited = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (edited.changed, edited.chunks, edited.embedded) == (1, 2, 1)  # same text, new heading: new vector
    top = Archive.open(settings.store, embedder=embedder).search("fleece animals", mode="fts", top_k=1).hits[0]
    assert top.heading == "Camelids > Fleece animals" and top.text.startswith("Alpacas are bred")


def test_bad_files_are_reported_recorded_and_the_rest_lands(corpus, settings, embedder):
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n garbage")
    write_pdf(corpus / "locked.pdf", ["secret"], password="pw")
    (corpus / "empty.md").write_text("")
    (corpus / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (corpus / "old.txt").write_bytes("Der Bäcker öffnet um sechs Uhr früh.".encode("latin-1"))
    seen = []
    report = ingest_directory(corpus, settings, progress=False, embedder=embedder,
                              on_failure=lambda path, reason: seen.append(path))
    assert sorted(seen) == ["broken.pdf", "empty.md", "locked.pdf", "photo.jpg"]
    assert report.new == 5
    docs = Archive.open(settings.store).document_rows()
    assert docs["locked.pdf"]["status"] == "failed" and "encrypted" in docs["locked.pdf"]["error"]
    assert docs["photo.jpg"]["error"] == "unsupported file type .jpg"
    archive = Archive.open(settings.store, embedder=embedder)
    assert "Bäcker" in archive.search("Bäcker", mode="fts").hits[0].text


def test_settings_change_is_refused_unless_rebuild(corpus, settings, embedder):
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    other = settings.with_(chunk_tokens=100)
    with pytest.raises(StoreError, match="chunk_tokens.*--rebuild"):
        ingest_directory(corpus, other, progress=False, embedder=embedder)
    report = ingest_directory(corpus, other, progress=False, embedder=embedder, rebuild=True)
    assert report.new == 4
    assert Archive.open(settings.store).meta.chunk_tokens == 100


def test_chunks_longer_than_the_model_are_refused(corpus, settings, embedder):
    with pytest.raises(ValueError, match="truncated"):
        ingest_directory(corpus, settings.with_(chunk_tokens=400), progress=False, embedder=embedder)


KILLER = textwrap.dedent("""
    import sys
    import pipeline.ingest.local as ingest
    from pipeline.config import Settings
    ingest.WRITE_BATCH = ingest.EMBED_BATCH = 1  # many small writes, so there are many moments to die at
    ingest.ingest_directory(sys.argv[1], Settings.from_env(store=sys.argv[2], embed_workers=int(sys.argv[3])),
                            progress=False)
""")


@pytest.fixture(scope="module")
def killed_corpus(tmp_path_factory, embedder) -> tuple[Path, Path]:
    """(corpus, clean store): the tiny corpus and an 8-page PDF, and the store one clean run of it leaves; the
    SIGKILL tests below read both, and each kills its own ingest into a store of its own."""
    corpus = write_tiny_corpus(tmp_path_factory.mktemp("killed") / "corpus")
    write_pdf(corpus / "long.pdf", [f"Page {i} describes valve {i} and its torque of {i * 3} Nm." for i in range(1, 9)])
    clean = Settings.from_env(store=corpus.parent / "clean")
    ingest_directory(corpus, clean, progress=False, embedder=embedder)
    return corpus, clean.store


@pytest.mark.parametrize("fault, workers", [
    ("store.write.added@3", 1),  # inside the real Archive.write: chunks landed, their document rows did not
    ("store.write.deleted@3", 1),  # old chunks of a document deleted, its new ones not yet added
    ("store.write@5", 1),  # between two writes
    ("store.write.added@4", 2),  # with embedding workers running
])
def test_sigkill_then_rerun_equals_a_clean_run(killed_corpus, tmp_path, embedder, fault, workers):
    """Killed at a fault point inside the real write path, the rerun (which must not find the dead writer's
    lock held) leaves exactly what a clean run leaves; the embedding workers die with the killed process."""
    corpus, clean_store = killed_corpus
    crashed = tmp_path / "crashed"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent), "PAGEFAULT_FAULT": f"{fault}=kill"}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(corpus), str(crashed), str(workers)],
                          env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith(f"fault point {fault}: SIGKILL pid ")]
    assert said, proc.stderr[-2000:]
    pid = int(said[0].split("SIGKILL pid ")[1].split(";")[0])
    workers_pids = [int(p) for p in said[0].split("children:")[1].split()]
    assert len(workers_pids) == (workers if workers > 1 else 0)
    assert all(gone(pid, within=20) for pid in workers_pids), "embedding workers outlived their killed parent"
    assert f'"pid": {pid}' in (crashed / ".pagefault.lock").read_text()  # it held the lock when it died
    assert snapshot(crashed) != snapshot(clean_store)  # the kill left the store part-written
    ingest_directory(corpus, Settings.from_env(store=crashed), progress=False, embedder=embedder)  # wait=0
    assert snapshot(crashed) == snapshot(clean_store)


def test_embedding_workers_store_what_one_process_stores(corpus, tmp_path, embedder):
    inline = Settings.from_env(store=tmp_path / "inline", embed_workers=1)
    pooled = Settings.from_env(store=tmp_path / "pooled", embed_workers=2)
    ingest_directory(corpus, inline, progress=False, embedder=embedder)
    report = ingest_directory(corpus, pooled, progress=False, embedder=embedder)
    assert (report.new, report.embedded) == (4, report.chunks)
    assert batch_stamps(report) == (2, report.chunks)  # the last chunks shared out between the two workers
    assert snapshot(pooled.store) == snapshot(inline.store)

    def vectors(store):
        rows = Archive.open(store).chunks.to_arrow().select(["chunk_id", "vector"]).to_pylist()
        return np.array([r["vector"] for r in sorted(rows, key=lambda r: r["chunk_id"])])

    np.testing.assert_allclose(vectors(pooled.store), vectors(inline.store), atol=1e-5)


def test_workers_are_used_for_big_ingests_on_several_cores(monkeypatch):
    monkeypatch.setattr(ingest, "available_cores", lambda: 2)
    auto = Settings.from_env(embed_workers=0)
    assert ingest.embed_workers(auto, ingest.POOL_MIN_BYTES - 1) == 1
    assert ingest.embed_workers(auto, ingest.POOL_MIN_BYTES) == 2
    assert ingest.embed_workers(auto.with_(embed_workers=3), 10) == 3
    monkeypatch.setattr(ingest, "available_cores", lambda: 1)
    assert ingest.embed_workers(auto, 10 * ingest.POOL_MIN_BYTES) == 1


def test_dead_embedding_workers_fall_back_to_this_process(corpus, tmp_path, embedder, monkeypatch, capsys):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DeadPool:
        def __init__(self, embedder, workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def submit(self, texts):
            future = Future()
            future.set_exception(BrokenProcessPool("a worker was killed"))
            return future

    monkeypatch.setattr(ingest, "EmbedPool", DeadPool)
    pooled = Settings.from_env(store=tmp_path / "pooled", embed_workers=2)
    report = ingest_directory(corpus, pooled, progress=False, embedder=embedder)
    assert (report.new, report.failed) == (4, 0)
    assert batch_stamps(report) == (2, report.chunks)  # embedded here, stamped here
    assert "embedding workers failed (a worker was killed)" in capsys.readouterr().err
    inline = Settings.from_env(store=tmp_path / "inline")
    ingest_directory(corpus, inline, progress=False, embedder=embedder)
    assert snapshot(pooled.store) == snapshot(inline.store)


def test_a_full_disk_is_one_line_and_the_rerun_resumes(corpus, tmp_path, embedder, monkeypatch):
    from click.testing import CliRunner

    import pipeline.faults as faults
    from pipeline.cli import main

    clean = Settings.from_env(store=tmp_path / "clean")
    ingest_directory(corpus, clean, progress=False, embedder=embedder)
    store = tmp_path / "full"
    monkeypatch.setattr(ingest, "WRITE_BATCH", 1)
    monkeypatch.setattr(ingest, "EMBED_BATCH", 1)  # many small writes: the disk fills in the middle of the run
    monkeypatch.setattr(faults, "_reached", {})
    monkeypatch.setenv(faults.ENV, "store.write.added@2=enospc")  # the real write path finds the disk full
    out = CliRunner().invoke(main, ["ingest", str(corpus), "--store", str(store), "-q", "--workers", "1"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "Traceback" not in out.output, out.output
    assert f"cannot write the store at {store}: No space left on device; free some space and rerun" in out.output
    monkeypatch.delenv(faults.ENV)
    ingest_directory(corpus, Settings.from_env(store=store), progress=False, embedder=embedder)
    assert snapshot(store) == snapshot(clean.store)
