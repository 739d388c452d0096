"""Working memory, recall storage, token estimates and the budgeted context (eviction, summaries)."""

from __future__ import annotations

import uuid

import pytest

from pipeline.agent.context import ALERT_PREFIX, Budget, Context, ContextTooSmall, cut_to_tokens, echoes_alert
from pipeline.agent.core_memory import CoreMemory, MemoryEditError
from pipeline.agent.paging import page_window, term_search
from pipeline.agent.recall import Recall
from pipeline.agent.session import Session
from pipeline.agent.tokens import TokenCounter, estimate_text


def make_context(window: int = 4096, system: str = "You are a test agent.") -> Context:
    return Context(system=system, core=CoreMemory.for_window(window), budget=Budget.for_window(window),
                   counter=TokenCounter(), recall=Recall())


# -- tokens

def test_estimate_is_conservative_for_prose_ids_and_json():
    prose = "The quick brown fox jumps over the lazy dog. " * 20  # ~10 tokens per sentence in real tokenizers
    assert estimate_text(prose) >= 200
    ids = " ".join(str(uuid.UUID(int=n)) for n in range(10))  # hex ids: real tokenizers need ~20-30 each
    assert estimate_text(ids) >= 10 * 30
    assert estimate_text("") == 0 and estimate_text("a") == 2  # 1 token, rounded up with the safety margin
    assert estimate_text("naïve 日本語") >= 5


def test_counter_learns_upward_from_reported_usage_only():
    counter = TokenCounter()
    base = counter.text("hello world " * 50)
    counter.observe(estimated=100, reported=80)
    assert counter.ratio == 1.0
    counter.observe(estimated=100, reported=150)
    assert counter.ratio > 1.5 and counter.text("hello world " * 50) > 1.5 * base


def test_cut_to_tokens_says_so_and_fits():
    counter = TokenCounter()
    text = "word " * 2000
    cut = cut_to_tokens(text, 100, counter)
    assert counter.text(cut) <= 100 and "cut to fit the context window" in cut and cut.startswith("word word")
    assert cut_to_tokens("short", 100, counter) == "short"


# -- core memory

def test_core_memory_append_replace_and_limits():
    core = CoreMemory.for_window(4096)
    core.append("notes", "fact one [c1]")
    core.append("notes", "fact two [c2]")
    assert core.blocks["notes"].value == "fact one [c1]\nfact two [c2]"
    core.replace("notes", "fact one", "fact 1")
    assert core.to_dict()["notes"].startswith("fact 1 [c1]")
    limit = core.blocks["notes"].limit
    value, cut = core.append("notes", "word " * limit)  # too long: cut at a word to what fits, and said so
    assert len(value) <= limit and value.endswith(" word") and "\nword word" in value and 0 < cut < len("word " * limit)
    with pytest.raises(MemoryEditError, match="is full"):
        core.append("notes", "another finding that does not fit")
    with pytest.raises(MemoryEditError, match="not found"):
        core.replace("notes", "absent", "y")
    empty = CoreMemory.for_window(4096)
    assert empty.replace("notes", "", "first note [c9]") == "first note [c9]"  # an empty old_content appends
    with pytest.raises(MemoryEditError, match="no memory block named 'persona'"):
        core.append("persona", "x")
    core.set("task", "q" * 10_000)
    assert len(core.blocks["task"].value) == core.blocks["task"].limit
    rendered = core.render()
    assert "<notes" in rendered and "fact 1 [c1]" in rendered


# -- recall storage and search helpers

def test_recall_persists_and_searches_page_by_page(tmp_path):
    path = tmp_path / "recall.jsonl"
    recall = Recall(path)
    for n in range(12):
        recall.add({"role": "user", "content": f"message {n} about {'llamas' if n % 2 else 'pumps'}"})
    reloaded = Recall(path)
    assert len(reloaded.messages) == 12 and reloaded.messages[3]["content"] == "message 3 about llamas"
    order = reloaded.rank("llamas")
    assert len(order) == 6 and [reloaded.messages[i]["content"] for i in order[:2]] == [
        "message 11 about llamas", "message 9 about llamas"]  # most terms first, then newest


def test_term_search_ranks_by_distinct_terms():
    texts = ["pump pressure", "pump", "unrelated", "pressure of the pump in bar"]
    assert term_search(texts, "pump pressure") == [3, 0, 1]


def test_page_window_wording():
    assert page_window(37, 1, 5) == "Results 6-10 of 37 (page=1 of pages 0-7, 5 a page)"
    assert page_window(3, 0, 5) == "Results 1-3 of 3 (page=0 of page 0 only, 5 a page)"


def test_session_names_are_checked_and_state_round_trips(tmp_path):
    with pytest.raises(ValueError, match="invalid session name"):
        Session.for_store(tmp_path / "archive", "../escape")
    session = Session.for_store(tmp_path / "archive", "work-1")
    assert session.directory == tmp_path / "sessions" / "work-1"
    assert session.open() == {}
    session.save({"core": {"notes": "n"}, "queue": []})
    assert session.open()["core"] == {"notes": "n"}
    (session.directory / "state.json").write_text("{broken")
    with pytest.raises(ValueError, match="is damaged"):
        session.open()


# -- the budgeted context

def _tool_exchange(n: int, size: int = 600) -> list[dict]:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{n}", "type": "function", "function": {"name": "archival_memory_search", "arguments": "{}"}}]}
    return [call, {"role": "tool", "tool_call_id": f"call_{n}", "content": f"result {n} " + "text " * size}]


def test_eviction_summarizes_within_budget_and_keeps_pairs_and_working_memory():
    context = make_context(4096)
    context.core.append("notes", "KEEP: the pump is rated 42 bar [c7]")
    context.append({"role": "user", "content": "question?"})
    for n in range(6):
        for message in _tool_exchange(n):
            context.append(message)
    summary_requests: list[tuple[list[dict], int]] = []

    def summarize(messages, max_tokens):
        summary_requests.append((messages, max_tokens))
        return "searched six times; found 42 bar"

    messages = context.build(None, None, summarize)
    assert context.request_tokens(None, None) <= 4096
    assert summary_requests, "the queue did not fit, so something must have been summarized"
    for request, max_tokens in summary_requests:
        assert context.counter.request(request) + max_tokens <= 4096
    assert context.evicted > 0 and len(context.recall.messages) == 13  # recall keeps everything
    assert "KEEP: the pump is rated 42 bar [c7]" in messages[0]["content"]
    assert "searched six times" in messages[1]["content"] and "conversation_search" in messages[1]["content"]
    assert context.queue[0]["role"] != "tool"
    ids = {c["id"] for m in context.queue for c in m.get("tool_calls") or []}
    assert all(m["tool_call_id"] in ids for m in context.queue if m["role"] == "tool")


def test_summary_falls_back_to_a_mechanical_one_when_the_model_fails():
    context = make_context(4096)
    for n in range(6):
        for message in _tool_exchange(n):
            context.append(message)
    context.build(None, None, lambda messages, max_tokens: None)
    assert "result 0" in context.summary and context.counter.text(context.summary) <= context.budget.summary


def test_pressure_alert_once_the_queue_used_70_percent_of_its_room_once_per_eviction_cycle():
    context = make_context(4096)
    context.core.set("task", "What is the pump's rated pressure?")
    context.append({"role": "user", "content": "question"})
    context.build(None, None, lambda m, t: "s")
    assert not context.alerted
    while context.request_tokens(None, None) <= context.pressure_mark(None, None):
        context.append({"role": "user", "content": "text " * 100})
    assert context.request_tokens(None, None) <= 4096
    context.build(None, None, lambda m, t: "s")
    context.build(None, None, lambda m, t: "s")
    alerts = [m for m in context.queue if str(m.get("content")).startswith(ALERT_PREFIX)]
    assert len(alerts) == 1 and context.alerted and "core_memory_append" in alerts[0]["content"]
    assert alerts[0]["content"].endswith("Continue the task: What is the pump's rated pressure?")
    assert echoes_alert(alerts[0]["content"])
    for _ in range(8):  # an alert still in the queue is not repeated; once it is evicted, the next crossing warns
        for _ in range(10):
            context.append({"role": "user", "content": "text " * 100})
        context.build(None, None, lambda m, t: "s")
        queued = [m for m in context.queue if str(m.get("content")).startswith(ALERT_PREFIX)]
        assert len(queued) <= 1 and context.alerted == bool(queued)
    assert context.evicted and sum(str(m.get("content")).startswith(ALERT_PREFIX) for m in context.recall.messages) > 1


def test_a_single_oversized_message_is_cut_rather_than_exceeding_the_window():
    context = make_context(4096)
    context.append({"role": "user", "content": "huge " * 20_000})
    context.build(None, None, lambda m, t: "s")
    assert context.request_tokens(None, None) <= 4096
    assert "cut to fit" in context.queue[-1]["content"]


def test_window_too_small_is_a_clear_error():
    context = make_context(1024, system="instructions " * 800)
    with pytest.raises(ContextTooSmall, match="too small"):
        context.build(None, None, lambda m, t: "s")
