"""The local-model demo benchmark's question selection: the demo's questions and the held-out ones, by id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.batch import BatchInputError
from pipeline.bench.demo_windows import select_questions, wanted_ids

QUERIES = Path(__file__).resolve().parent.parent / "queries"


def test_ranges_keep_their_prefix_and_width():
    assert wanted_ids("q01-q03, h10,x7") == ["q01", "q02", "q03", "h10", "x7"]
    assert wanted_ids("q09-11") == ["q09", "q10", "q11"]
    assert wanted_ids("") == []


def test_the_held_out_run_takes_the_answerable_demo_questions_and_the_held_out_ten(tmp_path):
    out = tmp_path / "questions.jsonl"
    files = [QUERIES / "demo.jsonl", QUERIES / "heldout-unanswerable.jsonl"]
    assert select_questions(files, wanted_ids("q01-q11,h01-h10"), out) == 21
    chosen = [json.loads(line) for line in out.read_text().splitlines()]
    assert [q["id"] for q in chosen] == wanted_ids("q01-q11") + wanted_ids("h01-h10")
    assert chosen[0]["answers"] == ["42 bar"] and all(q.get("unanswerable") for q in chosen[11:])
    assert select_questions(files[:1], [], out) == 20  # no ids: every question of the files


def test_an_unknown_id_or_an_id_in_two_files_is_one_clear_error(tmp_path):
    demo = QUERIES / "demo.jsonl"
    with pytest.raises(BatchInputError, match="no question with id q99"):
        select_questions([demo], ["q01", "q99"], tmp_path / "q.jsonl")
    with pytest.raises(BatchInputError, match="id 'q01' is in two question files"):
        select_questions([demo, demo], [], tmp_path / "q.jsonl")
