"""The demo's answer printer: answers with numbered sources and verdicts, and the prompt-cache line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.demo import cache_summary, format_record, main


def _record(**changes: object) -> dict:
    record = {"id": "q01", "question": "What is the maximum pressure?", "answer": "It is 42 bar.", "status": "ok",
              "error": None, "citations": [{"source": "manual.pdf", "page": 9, "chunk_id": "c1"},
                                           {"source": "notes.md", "page": None, "chunk_id": "c2"}],
              "steps": [{}, {}], "latency_s": 41.6, "gold": {"answers": ["42 bar"], "category": "number"}}
    return {**record, **changes}


def test_format_record_shows_sources_and_verdict() -> None:
    text = format_record(_record())
    assert text.splitlines() == ["[q01] What is the maximum pressure?", "    It is 42 bar.",
                                 "    [1] manual.pdf, page 9", "    [2] notes.md",
                                 "    -> correct (gold: 42 bar); 2 steps, 42s"]


@pytest.mark.parametrize(("changes", "verdict"), [
    ({"answer": "It is 35 bar."}, "-> WRONG (gold: 42 bar)"),
    ({"status": "error", "error": "LLM error: timeout", "answer": ""}, "-> ERROR: LLM error: timeout"),
    ({"answer": "The documents do not mention it.", "gold": {"unanswerable": True}},
     "-> correct (gold: (unanswerable: should decline))"),
    ({"gold": {}}, "-> not graded")])
def test_verdicts(changes: dict, verdict: str) -> None:
    assert verdict in format_record(_record(**changes))


def test_cache_summary_counts_cached_and_evaluated_tokens() -> None:
    from tests.test_local_llm import SERVER_LOG

    assert cache_summary(SERVER_LOG) == ("llama.cpp: 2 requests, 59.5s each on average; prompt tokens: 2,751 sent, "
                                         "1,905 evaluated, 31% from the prompt cache (952 evaluated per request)")
    assert cache_summary("") == "llama.cpp: no requests in this run"


def test_main_prints_every_record_and_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.jsonl"
    out.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(id="q02")) + "\n")
    assert main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[q01]" in printed and "[q02]" in printed
    assert main([str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read")
