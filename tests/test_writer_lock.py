"""One writer per store: real concurrent `analyze ingest` processes, a held lock, duplicate rows and --repair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_pdf, write_tiny_corpus
from pipeline.archive.lock import LocalFileLock, StoreLocked, writer_lock
from pipeline.archive.store import Archive
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.ingest.local import ingest_directory
from pipeline.testing import CHILD_TIMEOUT
from test_ingest import snapshot

pytestmark = pytest.mark.slow

ANALYZE = [sys.executable, "-c", "from pipeline.cli import main; main()"]
ENV = os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)}


def test_two_concurrent_ingests_end_equal_to_one_clean_ingest(tmp_path, embedder):
    corpus = tmp_path / "corpus"  # PDFs only: the processes then never load unstructured's models
    corpus.mkdir()
    for n in range(4):
        write_pdf(corpus / f"report-{n}.pdf", [f"Report {n} page {p}: the pump ran {n * p} hours." for p in (1, 2)])
    clean = Settings.from_env(store=tmp_path / "clean")
    ingest_directory(corpus, clean, progress=False, embedder=embedder)

    store = tmp_path / "store"
    command = [*ANALYZE, "ingest", str(corpus), "--store", str(store), "-q", "--wait", "300", "--workers", "1"]
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=CHILD_TIMEOUT) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    summaries = sorted(out.strip() for out, _ in outputs)
    assert summaries[0].startswith("ingest: 0 new, 0 changed, 4 unchanged")  # the later one found it all done
    assert summaries[1].startswith("ingest: 4 new")
    assert snapshot(store) == snapshot(clean.store)
    assert Archive.open(store, embedder=embedder).duplicates() == {"chunks": 0, "documents": 0}


def test_a_second_writer_fails_at_once_naming_the_holder_or_waits(tmp_path):
    store = tmp_path / "store"
    (tmp_path / "docs").mkdir()
    with writer_lock(store):
        started = time.monotonic()
        out = subprocess.run([*ANALYZE, "ingest", str(tmp_path / "docs"), "--store", str(store), "-q"], env=ENV,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"being written by another ingest (host {os.uname().nodename}, pid {os.getpid()}, since 20" in out.stderr
        assert "--wait SECONDS" in out.stderr

        holder = LocalFileLock(store)
        with pytest.raises(StoreLocked, match="after waiting 0.5s"):
            holder.acquire(wait=0.5)
        assert time.monotonic() - started >= 0.5
    late = subprocess.Popen([*ANALYZE, "ingest", str(tmp_path / "docs"), "--store", str(store), "-q", "--wait", "60"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with writer_lock(store, wait=120):  # taken before or after `late`: either way `late` waits its turn
        time.sleep(1)
    assert late.wait(timeout=120) == 0, late.stderr.read()


def test_readers_are_not_blocked_by_a_writer(tiny_archive):
    with writer_lock(tiny_archive.path):
        out = CliRunner().invoke(main, ["status", "--store", str(tiny_archive.path), "--json"])
        assert out.exit_code == 0 and json.loads(out.output)["documents"] == 4
        out = CliRunner().invoke(main, ["search", "Titan", "--store", str(tiny_archive.path), "--json"])
        assert out.exit_code == 0 and json.loads(out.output)[0]["source"] == "orbit.txt"


def test_status_reports_duplicates_and_repair_removes_them(tmp_path, embedder):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    settings = Settings.from_env(store=tmp_path / "store")
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    clean = snapshot(settings.store)
    archive = Archive.open(settings.store, embedder=embedder)
    chunks, docs = archive.chunks.count_rows(), archive.documents.count_rows()
    archive.chunks.add(archive.chunks.to_arrow())  # what two unlocked writers used to leave behind
    archive.documents.add(archive.documents.to_arrow().slice(0, 2))

    runner = CliRunner()
    status = runner.invoke(main, ["status", "--store", str(settings.store)])
    assert f"duplicates {chunks} chunk rows and 2 document rows repeat an id" in status.output
    assert "--repair" in status.output
    info = json.loads(runner.invoke(main, ["status", "--store", str(settings.store), "--json"]).output)
    assert info["duplicates"] == {"chunks": chunks, "documents": 2}

    out = runner.invoke(main, ["ingest", str(corpus), "--store", str(settings.store), "-q", "--repair"])
    assert out.exit_code == 0, out.output
    assert "4 unchanged" in out.output and f"{chunks + 2} duplicate rows removed" in out.output
    repaired = Archive.open(settings.store, embedder=embedder)
    assert repaired.duplicates() == {"chunks": 0, "documents": 0}
    assert (repaired.chunks.count_rows(), repaired.documents.count_rows()) == (chunks, docs)
    assert snapshot(settings.store) == clean
    assert "42 bar" in repaired.search("Hydra-7 maximum pressure", top_k=1).hits[0].text
    assert "repeat an id" not in runner.invoke(main, ["status", "--store", str(settings.store)]).output
