"""Parsing: PDFs page by page, other formats through unstructured offline, encodings, and bad input."""

from __future__ import annotations

import pytest

from conftest import write_docx, write_pdf
from pipeline.ingest.discover import discover
from pipeline.ingest.parse import ParseError, decode_text, parse


def sections(path):
    return list(parse(path).sections)


def test_pdf_pages_are_one_based_with_outline_headings(tmp_path):
    path = write_pdf(tmp_path / "m.pdf", ["Alpha page.", "Beta page.", "Gamma page."],
                     outline={1: "Intro", 3: "Details"})
    parsed = parse(path)
    assert parsed.pages == 3
    got = [(s.page, s.heading, s.text.strip()) for s in parsed.sections]
    assert got == [(1, "Intro", "Alpha page."), (2, "Intro", "Beta page."), (3, "Details", "Gamma page.")]


def test_encrypted_pdf_with_empty_user_password_opens(tmp_path):
    path = write_pdf(tmp_path / "open.pdf", ["Readable secret."], password="")
    assert "Readable secret." in sections(path)[0].text


def test_encrypted_pdf_with_password_is_refused(tmp_path):
    path = write_pdf(tmp_path / "locked.pdf", ["Hidden."], password="hunter2")
    with pytest.raises(ParseError, match="encrypted"):
        parse(path)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"%PDF-1.4\n1 0 obj <<", "corrupt or truncated PDF"),
    (b"not a pdf at all", "PDF"),
])
def test_bad_pdfs_give_one_line_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.pdf"
    path.write_bytes(content)
    with pytest.raises(ParseError, match=reason) as info:
        sections(path)
    assert "\n" not in str(info.value)


def test_truncated_pdf_is_reported(tmp_path):
    good = write_pdf(tmp_path / "good.pdf", ["Some text here."] * 3).read_bytes()
    path = tmp_path / "cut.pdf"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ParseError):
        sections(path)


def test_unsupported_and_whitespace_files(tmp_path):
    (tmp_path / "a.xyz").write_text("data")
    (tmp_path / "blank.txt").write_text("   \n\n  ")
    with pytest.raises(ParseError, match="unsupported file type .xyz"):
        parse(tmp_path / "a.xyz")
    with pytest.raises(ParseError, match="empty"):
        sections(tmp_path / "blank.txt")


@pytest.mark.parametrize("encoding, data", [
    ("latin-1", "Café crème à la carte, über naïve".encode("latin-1")),
    ("cp1252", "Smart “quotes” cost 5€".encode("cp1252")),
    ("utf-16", "Grüße aus Köln".encode("utf-16")),
    ("utf-8-sig", "Zürich ☃".encode("utf-8-sig")),
])
def test_decode_text_handles_legacy_encodings(encoding, data):
    assert decode_text(data) == data.decode(encoding)


def test_latin1_text_file_is_decoded_not_dropped(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Le café de la gare ouvre à sept heures.".encode("latin-1"))
    assert "café de la gare ouvre à sept" in " ".join(s.text for s in sections(path))


def test_markdown_and_html_keep_heading_paths(tmp_path):
    (tmp_path / "a.md").write_text("# Guide\n\nIntro text here.\n\n## Setup\n\nRun the installer now.\n")
    (tmp_path / "b.html").write_text("<h1>Menu</h1><p>Tea is free.</p><h2>Cakes</h2><p>Lemon tart daily.</p>")
    md = {s.heading: s.text for s in sections(tmp_path / "a.md")}
    assert md == {"Guide": "Intro text here.", "Guide > Setup": "Run the installer now."}
    html = {s.heading: s.text for s in sections(tmp_path / "b.html")}
    assert html == {"Menu": "Tea is free.", "Menu > Cakes": "Lemon tart daily."}


def test_docx_headings(tmp_path):
    path = write_docx(tmp_path / "r.docx", [("Budget", "The budget is 3 million."), ("Risks", "Floods.")])
    got = {s.heading: s.text for s in sections(path)}
    assert got == {"Budget": "The budget is 3 million.", "Risks": "Floods."}


def test_plain_text_needs_no_network(tmp_path, monkeypatch):
    import unstructured.nlp.tokenize as tokenize

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download a model")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    (tmp_path / "t.txt").write_text("REPORT\n\nThe committee met on Monday and approved the plan.\n")
    assert any("approved the plan" in s.text for s in sections(tmp_path / "t.txt"))
    assert tokenize._get_nlp() is not None


def test_discover_skips_hidden_and_survives_symlink_loops(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(b"x")
    (tmp_path / "docs" / "b.TXT").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.md").write_text("x")
    (tmp_path / ".hidden.md").write_text("x")
    (tmp_path / "image.png").write_bytes(b"x")
    (tmp_path / "docs" / "loop").symlink_to(tmp_path)
    found = discover(tmp_path)
    assert [p.as_posix() for p in found.supported] == ["docs/a.pdf", "docs/b.TXT"]
    assert [p.as_posix() for p in found.unsupported] == ["image.png"]
    assert found.unusable == []


def test_short_lines_taken_for_titles_are_not_lost(tmp_path):
    (tmp_path / "kv.txt").write_text("Key list\n\nkey: 3f2a9c\n\nvalue: 101fbccc-77aa\n")
    (tmp_path / "heads.md").write_text("# One\n\n# Two\n\nBody of two.\n")
    kv = " ".join(s.text for s in sections(tmp_path / "kv.txt"))
    assert "101fbccc-77aa" in kv and "3f2a9c" in kv
    heads = sections(tmp_path / "heads.md")
    assert [(s.heading, s.text) for s in heads] == [("", "One"), ("Two", "Body of two.")]


def test_plain_text_paragraphs_keep_their_line_ends_and_only_a_lone_line_is_a_title(tmp_path):
    log = "2026-01-01 ERROR disk full\n2026-01-02 WARN disk low\nmax_wal_size = 2GB"
    (tmp_path / "ops.txt").write_text(f"Operations log\n\n{log}\n\nThe disk was replaced on Monday.\n")
    assert [(s.heading, s.text) for s in sections(tmp_path / "ops.txt")] == [
        ("Operations log", f"{log}\n\nThe disk was replaced on Monday.")]


@pytest.mark.parametrize("name, source", [
    ("t.html", "<h1>Limits</h1><table><tr><th>option</th><th>value</th></tr>"
               "<tr><td>max_wal_size</td><td>2 GB</td></tr><tr><td>io_timeout</td><td>30 s</td></tr></table>"),
    ("t.md", "# Limits\n\n| option | value |\n|---|---|\n| max_wal_size | 2 GB |\n| io_timeout | 30 s |\n"),
])
def test_table_rows_stay_lines(tmp_path, name, source):
    (tmp_path / name).write_text(source)
    assert [(s.heading, s.text) for s in sections(tmp_path / name)] == [
        ("Limits", "option | value\nmax_wal_size | 2 GB\nio_timeout | 30 s")]
