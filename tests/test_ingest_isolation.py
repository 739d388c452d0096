"""One bad file never stops the rest: odd names, special files, files that vanish or change, huge files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_pdf
from pipeline.archive.store import Archive
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.ingest import local, plan
from pipeline.ingest.local import ingest_directory

pytestmark = pytest.mark.slow

LATIN1 = os.fsdecode(b"caf\xe9.txt")  # a name that is not UTF-8, as Python sees it (with a surrogate escape)


def odd_corpus(root: Path) -> Path:
    root.mkdir()
    (root / "good.txt").write_text("The ferry to Skye leaves at nine every morning.")
    write_pdf(root / "good.pdf", ["The lighthouse keeper logs the weather at dawn."])
    (root / LATIN1).write_bytes("Der Kaffee im Café Kranz kostet drei Euro.".encode("latin-1"))
    os.mkfifo(root / "pipe.txt")
    (root / "dangling.md").symlink_to(root / "nowhere.md")
    (root / "gone.txt").write_text("This file is deleted after listing.")
    (root / "swapped.txt").write_text("This file becomes a folder after listing.")
    with open(root / "huge.txt", "wb") as handle:  # 2 GiB, sparse: no disk used, never to be read
        handle.truncate(2 << 30)
    return root


@pytest.fixture
def racing(monkeypatch):
    """The real listing, then the files change under it before they are read, as if another process ran."""
    real = plan.discover

    def discover(root):
        found = real(root)
        (root / "gone.txt").unlink()
        (root / "swapped.txt").unlink()
        (root / "swapped.txt").mkdir()
        return found

    monkeypatch.setattr(plan, "discover", discover)


def test_every_good_file_lands_and_each_bad_one_fails_alone(tmp_path, embedder, racing):
    corpus = odd_corpus(tmp_path / "corpus")
    settings = Settings.from_env(store=tmp_path / "store")
    seen: dict[str, str] = {}
    report = ingest_directory(corpus, settings, progress=False, embedder=embedder,
                              on_failure=lambda path, reason: seen.setdefault(path, reason))
    assert report.new == 3
    assert seen == {
        "pipe.txt": "not a regular file (a FIFO)",
        "dangling.md": "broken symlink",
        "gone.txt": "vanished before it could be read",
        "swapped.txt": "is a folder now, not a file",
        "huge.txt": "too large (2,048 MiB; the limit is 256 MiB, set by --max-file-mb)",
    }
    assert report.failed == 5
    archive = Archive.open(settings.store, embedder=embedder)
    docs = archive.document_rows()
    assert {p for p, d in docs.items() if d["status"] == "ok"} == {"good.txt", "good.pdf", "caf\\xe9.txt"}
    assert {p for p, d in docs.items() if d["status"] == "failed"} == set(seen)
    assert docs["caf\\xe9.txt"]["path_bytes"] == b"caf\xe9.txt"  # the name's own bytes, losslessly
    hit = archive.search("Kaffee Kranz", mode="fts").hits[0]
    assert hit.source == "caf\\xe9.txt" and "Café" in hit.text
    assert {h.source for h in archive.search("ferry Skye lighthouse keeper", mode="fts", top_k=5).hits} == \
        {"good.txt", "good.pdf"}


def test_odd_names_match_on_reingest_and_deletion(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / LATIN1).write_bytes(b"Cafe au lait costs two euros at the station.")
    (corpus / "plain.txt").write_text("A plain note about trains.")
    settings = Settings.from_env(store=tmp_path / "store")
    assert ingest_directory(corpus, settings, progress=False, embedder=embedder).new == 2
    again = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (again.unchanged, again.new, again.failed) == (2, 0, 0)
    (corpus / LATIN1).unlink()
    removed = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert removed.removed == 1
    archive = Archive.open(settings.store, embedder=embedder)
    assert set(archive.document_rows()) == {"plain.txt"}
    assert {r["source"] for r in archive.chunks.to_arrow().select(["source"]).to_pylist()} == {"plain.txt"}


def test_a_file_changed_while_read_fails_then_lands_next_run(tmp_path, embedder, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "live.txt").write_text("First draft of the log.")
    (corpus / "still.txt").write_text("A note that nobody edits.")
    real = local.parse

    def parse_while_written(path, *rest):
        parsed = real(path, *rest)
        if path.name == "live.txt":  # another process appends while we parse
            with open(path, "a") as handle:
                handle.write(" More lines arrive.")
        return parsed

    monkeypatch.setattr(local, "parse", parse_while_written)
    settings = Settings.from_env(store=tmp_path / "store")
    report = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert report.failures == [("live.txt", "changed while being read (it is read again on the next run)")]
    assert report.new == 1
    assert Archive.open(settings.store).chunks.count_rows() == 1  # nothing torn of live.txt was kept
    monkeypatch.setattr(local, "parse", real)
    later = ingest_directory(corpus, settings, progress=False, embedder=embedder)
    assert (later.new, later.changed, later.unchanged, later.failed) == (0, 1, 1, 0)
    assert "More lines arrive" in Archive.open(settings.store, embedder=embedder).search("lines arrive").hits[0].text


def test_cli_names_bad_files_printably_counts_them_and_exits_2(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("The ferry to Skye leaves at nine every morning.")
    os.mkfifo(corpus / os.fsdecode(b"p\xffipe\x1b[31m.txt"))
    out = CliRunner().invoke(main, ["ingest", str(corpus), "--store", str(tmp_path / "s"), "-q"])
    assert out.exit_code == 2, out.output
    assert "skipped p\\xffipe\\x1b[31m.txt: not a regular file (a FIFO)" in out.output
    assert "\x1b" not in out.output and "1 new" in out.output and "1 failed" in out.output
