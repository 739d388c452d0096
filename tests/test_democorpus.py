"""The demo corpus: every document written, the long PDF long, each fact where demo.jsonl says it is."""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from pipeline import democorpus
from pipeline.democorpus import FACTS, FILES, MANUAL, MANUAL_PAGES, main, write_corpus


@functools.lru_cache(maxsize=None)
def _pdf_pages(path: Path) -> tuple[str, ...]:
    from pypdf import PdfReader

    return tuple(page.extract_text() for page in PdfReader(path).pages)


def _text(path: Path, page: int | None) -> str:
    """Text as the ingest parsers see it: a PDF page via pypdf, a DOCX's paragraphs and tables, or the file."""
    if path.suffix == ".pdf":
        text = _pdf_pages(path)[page - 1]  # type: ignore[operator]
    elif path.suffix == ".docx":
        import docx

        document = docx.Document(str(path))
        cells = [cell.text for table in document.tables for row in table.rows for cell in row.cells]
        text = "\n".join([p.text for p in document.paragraphs] + cells)
    else:
        text = path.read_text(encoding="utf-8")
    return " ".join(text.split())


def test_writes_every_document_kind(demo_corpus: tuple[Path, Path]) -> None:
    root, _ = demo_corpus
    assert sorted(p.name for p in root.iterdir()) == sorted(FILES)
    assert {p.suffix for p in root.iterdir()} == {".pdf", ".docx", ".html", ".md"}
    assert zipfile.ZipFile(root / democorpus.MINUTES).testzip() is None


def test_manual_is_far_longer_than_a_context_window(demo_corpus: tuple[Path, Path]) -> None:
    pages = _pdf_pages(demo_corpus[0] / MANUAL)
    assert len(pages) == MANUAL_PAGES >= 60
    assert sum(len(page.split()) for page in pages) > 20_000  # ~1.3 tokens a word: several 8k-token windows
    assert all(f"Page {n}" in pages[n - 1] for n in (1, 30, MANUAL_PAGES))


@pytest.mark.parametrize("fact", [f for f in FACTS if not f.unanswerable], ids=lambda f: f.id)
def test_each_fact_is_on_its_stated_page_and_nowhere_else(demo_corpus: tuple[Path, Path],
                                                          fact: democorpus.Fact) -> None:
    path = demo_corpus[0] / fact.source  # type: ignore[operator]
    sentence = " ".join(fact.sentence.split())
    assert sentence in _text(path, fact.page)
    assert any(a.lower() in sentence.lower() for a in fact.answers)
    if fact.page is not None:
        assert [n for n in range(1, len(_pdf_pages(path)) + 1) if sentence in _text(path, n)] == [fact.page]


def test_demo_jsonl_is_valid_for_batch_and_eval(demo_corpus: tuple[Path, Path]) -> None:
    from pipeline.batch import read_questions

    _, queries = demo_corpus
    records = [json.loads(line) for line in queries.read_text().splitlines()]
    assert [r["id"] for r in records] == [f.id for f in FACTS]
    assert all(r["category"] for r in records)
    unanswerable = [r for r in records if r.get("unanswerable")]
    assert unanswerable and all("answer" not in r for r in unanswerable)
    answered = [r for r in records if not r.get("unanswerable")]
    assert all(r["answer"] == r["answers"][0] for r in answered)
    assert all(r["pages"] == [{"source": r["source"], "page": r.get("pages")[0]["page"]}]
               for r in answered if r["source"].endswith(".pdf"))
    questions, bad = read_questions(queries)
    assert bad == [] and len(questions) == len(FACTS)
    assert questions[0].gold["answers"] == ["42 bar"] and questions[0].gold["pages"] == [{"source": MANUAL, "page": 9}]


def test_deterministic_bytes_and_skip_when_present(tmp_path: Path, demo_corpus: tuple[Path, Path]) -> None:
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in demo_corpus[0].iterdir()}
    again = write_corpus(tmp_path / "c", tmp_path / "q.jsonl")
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "c").iterdir()} == digest
    assert len(again) == len(FILES) + 1
    (tmp_path / "c" / democorpus.ONBOARDING).write_text("edited by hand")
    assert write_corpus(tmp_path / "c", tmp_path / "q.jsonl") == []  # present files are kept
    assert main([str(tmp_path / "c"), "--queries", str(tmp_path / "q.jsonl"), "--force"]) == 0
    assert (tmp_path / "c" / democorpus.ONBOARDING).read_text() != "edited by hand"


def test_unwritable_destination_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert main([str(tmp_path / "file" / "corpus")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the demo corpus") and err.count("\n") == 1


def test_committed_question_file_matches_the_generator() -> None:
    committed = Path(__file__).resolve().parents[1] / "queries" / "demo.jsonl"
    assert committed.read_text(encoding="utf-8").splitlines() == [json.dumps(f.record()) for f in FACTS]


ABSENT = {"q12": ["price", "dollar", "$"], "q13": ["kilogram", " kg", "weigh "], "q14": ["flow rate", "cubic", "m3"],
          "q15": ["2026"], "q16": ["e-204"], "q17": ["kilowatt", " kw", "motor power"], "q18": ["month"],
          "q19": ["telephone", "phone"], "q20": ["hydra-5 bearing"]}


def test_unanswerable_questions_ask_for_facts_no_document_holds(demo_corpus: tuple[Path, Path]) -> None:
    root, _ = demo_corpus
    texts = []
    for path in sorted(root.iterdir()):
        pages = range(1, len(_pdf_pages(path)) + 1) if path.suffix == ".pdf" else [None]
        texts += [_text(path, page).lower() for page in pages]
    everything = "\n".join(texts)
    assert sorted(ABSENT) == sorted(f.id for f in FACTS if f.unanswerable) and len(ABSENT) >= 9
    for fact_id, words in ABSENT.items():
        assert [w for w in words if w in everything] == [], fact_id
    assert "hydra-5" in everything and "norrlube" in everything  # q20 is a near miss, on purpose
