"""`analyze ask`: options, output formats and one-line errors, over the fake endpoint and a fake archive."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import pipeline.commands.ask as ask
from pipeline.cli import main
from pipeline.testing import FakeEndpoint, FakeRetriever, json_reply, make_hit, text_reply, tool_reply

HITS = [make_hit("m1", "The Hydra-7 pump is rated for 42 bar.", source="manual.pdf", page=2),
        make_hit("n1", "Seals of the Hydra-7 pump are replaced every 500 hours.", source="notes.md", page=None)]
ENV_KEYS = ["OPENAI_BASE_URL", "OPENAI_API_KEY", "ANALYZE_MODEL", "ANALYZE_CONTEXT_WINDOW", "ANALYZE_TOOL_MODE",
            "ANALYZE_STORE"]


@pytest.fixture
def retriever(monkeypatch):
    fake = FakeRetriever(HITS)
    monkeypatch.setattr(ask, "open_archive", lambda store: fake)
    return fake


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


def invoke(args, base_url=None):
    env = {"OPENAI_BASE_URL": base_url} if base_url else {}
    return CliRunner().invoke(main, ["ask", *args], env=env)


ANSWER = [tool_reply("archival_memory_search", {"query": "Hydra-7 pump", "request_heartbeat": True}),
          tool_reply("send_message", {"message": "It is rated for 42 bar; seals last 500 hours.",
                                      "citations": ["m1", "n1"]})]


def test_plain_output_is_the_answer_then_numbered_sources(clean_env, retriever):
    with FakeEndpoint.scripted(ANSWER) as endpoint:
        result = invoke(["Rating of the Hydra-7 pump?", "--top-k", "3"], endpoint.base_url)
        shown = endpoint.requests[1]["messages"][-1]["content"]
    assert result.exit_code == 0, result.output
    assert result.stdout == ("It is rated for 42 bar; seals last 500 hours.\n\nSources:\n"
                             "  [1] manual.pdf, page 2\n  [2] notes.md\n")
    assert [call[0] for call in retriever.calls] == ["Hydra-7 pump"]
    assert ", 3 a page)" in shown  # --top-k: at most 3 hits a page


def test_document_text_reaches_the_terminal_escaped_and_json_unchanged(clean_env, monkeypatch):
    evil = make_hit("e1", "The pump \x1b]0;owned\x07 is rated \x1b[2J for 42 bar.", source="bad\x1b[31m.pdf", page=1)
    monkeypatch.setattr(ask, "open_archive", lambda store: FakeRetriever([evil]))
    script = [tool_reply("archival_memory_search", {"query": "pump", "request_heartbeat": True}),
              tool_reply("send_message", {"message": "Rated \x1b[2J for 42 bar\u202e.", "citations": ["e1"]})]
    with FakeEndpoint.scripted(script) as endpoint:
        shown = invoke(["Rating?", "--trace"], endpoint.base_url)
    with FakeEndpoint.scripted(script) as endpoint:
        as_json = invoke(["Rating?", "--json"], endpoint.base_url)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output and "\u202e" not in shown.output
    assert shown.stdout == "Rated \\x1b[2J for 42 bar\\u202e.\n\nSources:\n  [1] bad\\x1b[31m.pdf, page 1\n"
    assert "send_message(message='Rated \\x1b[2J for 42 bar\\u202e.'" in shown.stderr  # the trace too
    data = json.loads(as_json.stdout)
    assert data["answer"] == "Rated \x1b[2J for 42 bar\u202e." and data["citations"][0]["source"] == "bad\x1b[31m.pdf"


def test_json_output_and_trace_on_stderr(clean_env, retriever):
    with FakeEndpoint.scripted(ANSWER) as endpoint:
        result = invoke(["Rating?", "--json", "--trace", "--model", "my-model"], endpoint.base_url)
        sent_model = endpoint.requests[0]["model"]
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"question", "answer", "citations", "steps", "usage", "status", "error", "grounded",
                         "unsupported", "mismatched", "withheld"}
    assert data["status"] == "ok" and data["citations"][0] == {"source": "manual.pdf", "page": 2, "chunk_id": "m1",
                                                           "ocr": False, "ocr_confidence": None, "low_confidence": False}
    assert [s["function"] for s in data["steps"]] == ["archival_memory_search", "send_message"]
    assert "step 1: archival_memory_search(query='Hydra-7 pump')" in result.stderr
    assert sent_model == "my-model"


def test_json_tool_mode_and_context_window_options(clean_env, retriever):
    script = [json_reply("archival_memory_search", {"query": "pump"}), text_reply("42 bar (m1)")]
    with FakeEndpoint.scripted(script) as endpoint:
        result = invoke(["Rating?", "--tool-mode", "json", "--context-window", "6000"], endpoint.base_url)
        first = endpoint.requests[0]
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("42 bar (m1)\n\nSources:\n  [1] manual.pdf, page 2")
    assert "tools" not in first and first["response_format"]["type"] == "json_schema"
    assert first["max_tokens"] == 250  # the reply reserve of a 6000-token window


def test_no_endpoint_is_a_one_line_error(clean_env, retriever):
    result = invoke(["Rating?", "--llm", "remote"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: no LLM endpoint configured: set OPENAI_BASE_URL (and OPENAI_API_KEY if it needs one)"]


def test_missing_store_is_a_one_line_error(clean_env, tmp_path):
    result = invoke(["Rating?", "--store", str(tmp_path / "nowhere")], "http://127.0.0.1:9/v1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("Error: no archive at") and len(result.stderr.strip().splitlines()) == 1


def test_failed_question_exits_non_zero_with_the_reason(clean_env, retriever):
    with FakeEndpoint.scripted([{"error": "not a completion"}]) as endpoint:
        result = invoke(["Rating?", "--max-steps", "1"], endpoint.base_url)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no answer: LLM error:")


def test_bad_options_are_usage_errors(clean_env, retriever):
    assert invoke(["   "], "http://127.0.0.1:9/v1").exit_code == 2
    assert invoke(["q", "--tool-mode", "grammar"]).exit_code == 2
    assert invoke(["q", "--context-window", "100"]).exit_code == 2


def test_local_llm_without_llama_cpp_is_a_one_line_error(clean_env, retriever, monkeypatch):
    monkeypatch.setattr("pipeline.local_llm.llama_server_available", lambda: False)
    result = invoke(["Rating?", "--llm", "local"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pip install '.[local]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
