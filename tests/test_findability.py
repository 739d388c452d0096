"""Everything findable: every line and sentence of a document, in every format, lies whole in some chunk's search
text and is returned by a full-text search for a token of its own (titles included)."""

from __future__ import annotations

import html
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import write_pdf
from pipeline.archive.schema import SEARCH_COLUMN
from pipeline.archive.store import Archive
from pipeline.config import Settings
from pipeline.ingest.local import ingest_directory
from pipeline.nestedkv import generate

pytestmark = pytest.mark.slow


def norm(text: str) -> str:
    return " ".join(text.split())


def ingest(root: Path, store: Path, embedder) -> Archive:
    report = ingest_directory(root, Settings.from_env(store=store), progress=False, embedder=embedder)
    assert report.failed == 0, report.failures
    return Archive.open(store, embedder=embedder)


def search_texts(archive: Archive) -> list[str]:
    return [norm(text) for text in archive.chunks.to_arrow().column(SEARCH_COLUMN).to_pylist()]


def assert_findable(archive: Archive, facts: list[tuple[str, str, str]], *, top_k: int = 50) -> None:
    """Each (source, fact, token): the fact lies whole in the search text of a chunk of its source, and an fts search
    for the token returns such a chunk among its first `top_k` hits."""
    rows = archive.chunks.to_arrow().select(["source", SEARCH_COLUMN]).to_pylist()
    whole_in_none = [(source, fact) for source, fact, _ in facts
                     if not any(row["source"] == source and norm(fact) in norm(row[SEARCH_COLUMN]) for row in rows)]
    assert not whole_in_none, f"{len(whole_in_none)} of {len(facts)} whole in no chunk, e.g. {whole_in_none[:3]}"
    missed = [(source, fact) for source, fact, token in facts
              if not any(hit.source == source and norm(fact) in norm(f"{hit.heading}\n{hit.text}")
                         for hit in archive.search(token, mode="fts", top_k=top_k).hits)]
    assert not missed, f"fts missed {len(missed)} of {len(facts)}, e.g. {missed[:3]}"


def test_every_key_value_fact_is_whole_in_a_chunk_and_found_by_fts(tmp_path, embedder):
    """The measured defect: 14 plain-text files of 10 one-line UUID facts. 9 lines were taken for titles and lived
    only in `heading`, a window started inside an identifier, and a line without end punctuation was split
    between two chunks, whole in neither."""
    pairs = generate(pairs=140).pairs
    facts = [(f"facts-{n // 10:02d}.txt", f"Key-value pair: key = {key}, value = {value}", key)
             for n, (key, value) in enumerate(pairs)]
    (tmp_path / "docs").mkdir()
    for n in range(14):
        lines = [fact for _, fact, _ in facts[n * 10:(n + 1) * 10]]
        (tmp_path / "docs" / f"facts-{n:02d}.txt").write_text("\n".join(lines) + "\n")
    archive = ingest(tmp_path / "docs", tmp_path / "store", embedder)
    rows = archive.chunks.to_arrow().to_pylist()
    assert all(row["text"].startswith("Key-value pair:") and row["text"].endswith(tuple(string.hexdigits))
               for row in rows)  # whole lines: never a piece of an identifier at either end
    assert_findable(archive, facts, top_k=5)  # a key is also the value of at most one other fact


# --- the property over generated documents in every format -------------------------------------------------------

TOKEN = "ZQTOKEN"  # a placeholder, numbered into distinct words such as `zqab` once a document is drawn
_FILLER = st.one_of(
    st.sampled_from(["pump", "valve", "pressure", "the", "of", "rated", "seal", "hours", "bar", "returns", "error"]),
    st.uuids().map(str),
    st.tuples(st.sampled_from(["max", "wal", "io", "retry"]), st.sampled_from(["size", "timeout", "level"])).map(
        "_".join),
    st.integers(0, 99999).map(lambda n: f"E{n}"),
    st.tuples(st.integers(0, 9), st.integers(0, 20), st.integers(0, 9)).map(lambda v: "%d.%d.%d" % v),
    st.tuples(st.sampled_from(["HX", "KV", "P"]), st.integers(1, 999), st.integers(1, 999)).map(
        lambda p: f"{p[0]}-{p[1]}/{p[2]}"),
)


def _line(max_words: int, max_chars: int = 110, end: str = ""):
    """A line of filler holding one distinctive token, short enough for a PDF line; `end` is appended."""
    def build(parts: tuple[list[str], int]) -> str:
        words, at = parts
        words = words[:]
        while len(" ".join(words)) + len(TOKEN) > max_chars - 1:
            words.pop()
        words.insert(at % (len(words) + 1), TOKEN)
        return " ".join(words) + end

    return st.tuples(st.lists(_FILLER, min_size=1, max_size=max_words), st.integers(0, 100)).map(build)


@dataclass(frozen=True)
class Block:
    kind: str  # title, lines (one-line facts), items (a list), rows (a table), prose (one long paragraph)
    parts: tuple  # the lines, items, sentences, or rows (tuples of cells)


_BLOCKS = st.one_of(
    st.builds(Block, st.just("title"), st.sampled_from(["Setup", "Limits", "Log"]).map(lambda w: (f"{w} {TOKEN}",))),
    st.builds(Block, st.just("lines"), st.lists(_line(12), min_size=1, max_size=8).map(tuple)),
    st.builds(Block, st.just("items"), st.lists(_line(8), min_size=1, max_size=5).map(tuple)),
    st.builds(Block, st.just("rows"), st.lists(st.tuples(_line(3, 50), _line(3, 50)), min_size=1, max_size=5).map(
        tuple)),
    st.builds(Block, st.just("prose"), st.lists(_line(14, end="."), min_size=4, max_size=16).map(tuple)),
)


def numbered(blocks: list[Block]) -> list[Block]:
    """The blocks with each placeholder token replaced by a distinct word (zqaa, zqab, ...)."""
    count = iter(range(10 ** 6))

    def word() -> str:
        n = next(count)
        return "zq" + string.ascii_lowercase[n // 26 % 26] + string.ascii_lowercase[n % 26]

    def fill(text: str) -> str:
        return "".join(part if i == 0 else word() + part for i, part in enumerate(text.split(TOKEN)))

    return [Block(b.kind, tuple(tuple(fill(c) for c in p) if isinstance(p, tuple) else fill(p) for p in b.parts))
            for b in blocks]


def facts_of(blocks: list[Block]) -> list[tuple[str, str]]:
    """Each line, list item, table row or sentence that must be findable, with its distinctive token."""
    texts = [" | ".join(part) if block.kind == "rows" else part for block in blocks for part in block.parts]
    return [(text, next(word.strip(".") for word in text.split() if word.startswith("zq"))) for text in texts]


def write_formats(root: Path, blocks: list[Block]) -> None:
    """The same document as .txt, .md, .html, .docx and .pdf."""
    import docx

    txt, md, page = [], [], []
    doc = docx.Document()
    body = []
    for block in blocks:
        if block.kind == "title":
            (title,) = block.parts
            txt.append(title), md.append(f"## {title}"), page.append(title), body.append(f"<h2>{html.escape(title)}</h2>")
            doc.add_heading(title, level=2)
        elif block.kind == "prose":
            paragraph = " ".join(block.parts)
            txt.append(paragraph), md.append(paragraph), body.append(f"<p>{html.escape(paragraph)}</p>")
            page.extend(block.parts)  # a PDF wraps long lines: one sentence a line
            doc.add_paragraph(paragraph)
        elif block.kind == "rows":
            lines = [" | ".join(row) for row in block.parts]
            txt.append("\n".join(lines)), page.extend(lines)
            md.append("\n".join(["| a | b |", "|---|---|"] + [f"| {a} | {b} |" for a, b in block.parts]))
            body.append("<table>" + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
                                            for a, b in block.parts) + "</table>")
            table = doc.add_table(rows=0, cols=2)
            for a, b in block.parts:
                cells = table.add_row().cells
                cells[0].text, cells[1].text = a, b
        else:  # one-line facts and list items: a line each
            txt.append("\n".join(block.parts)), page.extend(block.parts)
            md.append("\n\n".join(block.parts) if block.kind == "lines" else "\n".join(f"- {p}" for p in block.parts))
            body.append("".join(f"<p>{html.escape(p)}</p>" for p in block.parts) if block.kind == "lines"
                        else "<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in block.parts) + "</ul>")
            for part in block.parts:
                doc.add_paragraph(part, style=None if block.kind == "lines" else "List Bullet")
    (root / "doc.txt").write_text("\n\n".join(txt) + "\n")
    (root / "doc.md").write_text("\n\n".join(md) + "\n")
    (root / "doc.html").write_text(f"<html><body>{''.join(body)}</body></html>")
    doc.save(str(root / "doc.docx"))
    write_pdf(root / "doc.pdf", ["\n".join(page[i:i + 30]) for i in range(0, len(page), 30)], font_size=7)


@settings(max_examples=6, deadline=None, database=None, derandomize=True,  # each example ingests five files
          phases=[Phase.explicit, Phase.generate],  # no shrinking: it would re-ingest for minutes
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks=st.lists(_BLOCKS, min_size=2, max_size=12))
def test_every_line_and_sentence_of_every_format_is_findable(embedder, blocks):
    blocks = numbered(blocks)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        root.mkdir()
        write_formats(root, blocks)
        archive = ingest(root, Path(tmp) / "store", embedder)
        sources = ["doc.txt", "doc.md", "doc.html", "doc.docx", "doc.pdf"]
        assert_findable(archive, [(source, fact, token) for source in sources for fact, token in facts_of(blocks)])
