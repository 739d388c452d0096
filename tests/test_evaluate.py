"""Scoring functions on hand-made cases, the aggregate report, its files, and `analyze eval FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.evaluate import (best_subspan_em, evaluate, exact_match, format_table, is_abstention, normalize_answer,
                               page_recall, score_record, write_report)


def test_normalize_answer_drops_case_punctuation_articles_and_spacing() -> None:
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffel tower in paris"
    assert normalize_answer("an apple_pie") == "apple pie"
    assert normalize_answer("‘Theory’") == "theory"


@pytest.mark.parametrize("prediction, golds, em, subspan", [
    ("Paris", ["paris"], True, True),
    ("The answer is Paris.", ["Paris"], False, True),
    ("Paris", ["Paris, France"], False, False),  # the gold must be inside the prediction, not the reverse
    ("Lyon", ["Paris", "Lyon"], True, True),
    ("anything", ["the"], False, False),  # a gold that normalizes to nothing never matches
    ("1.5 million", ["1.5 million"], True, True),
    ("", ["x"], False, False),
])
def test_exact_match_and_best_subspan_em(prediction: str, golds: list[str], em: bool, subspan: bool) -> None:
    assert exact_match(prediction, golds) is em
    assert best_subspan_em(prediction, golds) is subspan


@pytest.mark.parametrize("text, expected", [
    ("The documents do not mention the launch date.", True),
    ("I could not find this in the archive.", True),
    ("There is no information about it in the archive.", True),
    ("The report doesn't say.", True),
    ("This is not stated in the documents.", True),
    ("The launch was on 3 May 2021 [1].", False),
    ("Notably, the budget was 5 million.", False),
])
def test_is_abstention(text: str, expected: bool) -> None:
    assert is_abstention(text) is expected


def test_page_recall_with_plain_and_sourced_gold_pages() -> None:
    cites = [{"source": "docs/a.pdf", "page": 3}, {"source": "b.pdf", "page": 7}]
    assert page_recall(cites, [3, 4]) == 0.5
    assert page_recall(cites, [{"source": "a.pdf", "page": 3}, {"source": "a.pdf", "page": 7}]) == 0.5
    assert page_recall(cites, []) is None
    assert page_recall([], [1]) == 0.0


def record(id_: int, answer: str, gold: dict, status: str = "ok", citations: list | None = None,
           steps: int = 2) -> dict:
    return {"id": id_, "question": f"q{id_}", "answer": answer, "status": status, "error": None if status == "ok"
            else "boom", "citations": citations or [], "steps": [{"function": "f"}] * steps, "gold": gold}


RECORDS = [
    record(1, "It is Paris [1].", {"answers": ["Paris"], "category": "geo", "pages": [2]},
           citations=[{"source": "a.pdf", "page": 2, "chunk_id": "c"}]),
    record(2, "Lyon", {"answers": ["Marseille"], "category": "geo"}),
    record(3, "The documents do not say.", {"unanswerable": True, "category": "trick"}),
    record(4, "It is 42.", {"unanswerable": True, "category": "trick"}),
    record(5, "", {"answers": ["x"], "category": "geo"}, status="error"),
    record(6, "whatever", {}),
]


def test_score_record_rules() -> None:
    s = [score_record(r) for r in RECORDS]
    assert [x.correct for x in s] == [True, False, True, False, False, False]
    assert [x.graded for x in s] == [True, True, True, True, True, False]
    assert s[0].subspan and not s[0].exact and s[0].page_recall == 1.0
    assert s[4].error and not s[4].subspan
    assert s[5].category == "(none)"


def test_evaluate_aggregates_overall_and_by_category() -> None:
    report = evaluate(RECORDS)
    overall, geo, trick = report["overall"], report["categories"]["geo"], report["categories"]["trick"]
    assert (overall["n"], overall["graded"], overall["errors"]) == (6, 5, 1)
    assert overall["accuracy"] == 0.4
    assert geo["best_subspan_em"] == pytest.approx(1 / 3, abs=1e-4) and geo["exact_match"] == 0.0
    assert trick["abstention"] == 0.5 and trick["best_subspan_em"] is None
    assert overall["page_recall"] == 1.0 and overall["steps_mean"] == 2.0
    table = format_table(report)
    assert table.splitlines()[0].split()[:3] == ["category", "n", "accuracy"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["(none)", "geo", "trick", "overall"]


def test_write_report_makes_markdown_and_png_next_to_the_output(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    md, png = write_report(evaluate(RECORDS), out)
    assert md == tmp_path / "demo.eval.md" and png == tmp_path / "demo.eval.png"
    text = md.read_text()
    assert "| trick |" in text and "| overall | 6 | 0.400 |" in text and "(demo.eval.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_scores_a_file_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"id": 7, "ans')  # torn tail is ignored
    before = out.read_bytes()
    result = CliRunner().invoke(main, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    assert "overall" in result.stdout and (tmp_path / "run.eval.md").exists() and (tmp_path / "run.eval.png").exists()
    assert out.read_bytes() == before  # eval never rewrites the batch output


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("", "no records"), ("{bad\n", "not a JSON")])
def test_cli_eval_bad_input_exits_2_with_a_message(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "x.jsonl"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(main, ["eval", str(path)])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
