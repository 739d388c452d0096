"""The agent loop, driven by a scripted chat client over a fake retriever (and once over HTTP)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from pipeline.agent.context import ALERT_PREFIX
from pipeline.agent.loop import FORCE_ANSWER, answer
from pipeline.config import Settings
from pipeline.llm import LLMError, OpenAIChatClient
from pipeline.testing import (FakeEndpoint, FakeRetriever, ScriptedChatClient, is_summary_request, json_reply,
                              make_hit, summaries, text_reply, tool_calls_reply, tool_reply)
from pipeline.agent.tokens import TokenCounter

SEARCH = "archival_memory_search"
HITS = [make_hit(f"c{n:02d}", f"pump log entry {n}: pressure reading {40 + n} bar", source=f"log{n % 3}.pdf", page=n + 1)
        for n in range(12)]


def run(replies, *, question="What does entry 7 say?", hits=HITS, window=8192, trace=None, **overrides):
    client = replies if isinstance(replies, ScriptedChatClient) else ScriptedChatClient(replies)
    settings = Settings(context_window=window, **overrides)
    lines: list[str] = []
    result = answer(question, retriever=FakeRetriever(hits), client=client, settings=settings,
                    trace=trace or lines.append)
    return result, client, lines


def last_message(request) -> dict:
    return request["messages"][-1]


def assert_within_window(client: ScriptedChatClient, window: int) -> None:
    counter = TokenCounter()
    for request in client.requests:
        size = counter.request(request["messages"], request["tools"], request["response_format"])
        assert size + (request["max_tokens"] or 0) <= window, f"request of {size} tokens + reply over {window}"


def assert_well_formed(client: ScriptedChatClient) -> None:
    """System message first and only there; every tool result answers a call made just before it."""
    for request in client.requests:
        messages = request["messages"]
        assert messages[0]["role"] == "system" and all(m["role"] != "system" for m in messages[1:])
        assert all(not (a["role"] == b["role"] == "user") for a, b in zip(messages, messages[1:]))
        open_ids: set[str] = set()
        for message in messages[1:]:
            if message["role"] == "assistant":
                open_ids = {c["id"] for c in message.get("tool_calls") or []}
                for call in message.get("tool_calls") or []:
                    json.loads(call["function"]["arguments"])  # always valid JSON when sent back
            elif message["role"] == "tool":
                assert message["tool_call_id"] in open_ids


# -- paging, heartbeats, answers

def test_multi_step_paging_reports_true_totals_and_cites_what_was_read():
    result, client, _ = run([
        tool_reply(SEARCH, {"query": "pump pressure entry", "request_heartbeat": True}),
        tool_reply(SEARCH, {"query": "pump pressure entry", "page": 1, "request_heartbeat": True}),
        tool_reply("send_message", {"message": "Entry 7 read 47 bar.", "citations": ["c07"]}),
    ])
    assert result.status == "ok" and result.answer == "Entry 7 read 47 bar."
    first, second = last_message(client.requests[1])["content"], last_message(client.requests[2])["content"]
    assert "Results 1-5 of 12 (page=0 of pages 0-2, 5 a page)" in first and "Next: page=1." in first
    assert "Results 6-10 of 12 (page=1 of pages 0-2, 5 a page)" in second
    assert "chunk_id: c07 | source: log1.pdf | page: 8" in second
    assert [c.to_dict() for c in result.citations] == [{"source": "log1.pdf", "page": 8, "chunk_id": "c07", "ocr": False,
                                                        "ocr_confidence": None, "low_confidence": False}]
    assert [s.function for s in result.steps] == [SEARCH, SEARCH, "send_message"]
    assert result.steps[1].result == "OK: Results 6-10 of 12 (page=1 of pages 0-2, 5 a page)"


def test_heartbeat_chaining_runs_without_user_input():
    result, client, lines = run([
        tool_reply("core_memory_append", {"name": "notes", "content": "plan: search", "request_heartbeat": True}),
        tool_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
        tool_reply("send_message", {"message": "47 bar", "citations": ["c07"]}),
    ])
    assert result.status == "ok" and len(client.requests) == 3
    assert "plan: search" in client.requests[2]["messages"][0]["content"]  # working memory shows the note


def test_calls_without_a_heartbeat_continue_and_schemas_do_not_ask_for_one():
    result, client, _ = run([
        tool_reply(SEARCH, {"query": "entry 7"}),
        tool_reply("send_message", {"message": "47 bar", "citations": ["c07"]}),
    ])
    assert result.status == "ok" and len(client.requests) == 2
    assert "request_heartbeat" not in json.dumps(client.requests[0]["tools"])


def test_plain_text_reply_is_the_answer_and_mentioned_chunks_are_cited():
    result, _, _ = run([tool_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
                        text_reply("Entry 7 shows 47 bar (chunk c07).")])
    assert result.status == "ok" and result.answer == "Entry 7 shows 47 bar (chunk c07)."
    assert [c.chunk_id for c in result.citations] == ["c07"]


def test_citations_to_unretrieved_chunks_are_dropped_and_flagged():
    result, _, lines = run([
        tool_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
        tool_reply("send_message", {"message": "47 bar", "citations": ["c07", "c99", "c11"]}),
    ])
    retrieved = {"c07"} | {h.chunk_id for h in FakeRetriever(HITS).search("entry 7").hits}
    assert "c11" not in retrieved  # c11 exists in the archive but was never shown to the model
    assert [c.chunk_id for c in result.citations] == ["c07"]
    assert result.steps[-1].function == "(citation check)" and result.steps[-1].arguments == {"dropped": ["c99", "c11"]}
    assert any("naming no chunk retrieved" in line for line in lines)


def test_abstention_is_instructed_in_the_system_prompt():
    _, client, _ = run([text_reply("The documents do not say.")] * 2)
    system = client.requests[0]["messages"][0]["content"]
    assert "the documents do not answer it" in system and "Never guess" in system


# -- errors fed back to the model

def test_unknown_function_is_fed_back_and_the_run_recovers():
    result, client, _ = run([tool_reply("delete_everything", {"request_heartbeat": True}),
                             tool_reply("send_message", {"message": "nothing found"})])
    assert result.status == "ok"
    fed = last_message(client.requests[1])
    assert fed["role"] == "tool" and fed["content"].startswith("status: Failed")
    assert "unknown function 'delete_everything'" in fed["content"]


@pytest.mark.parametrize("arguments, reason", [
    ('{"query": "entry 7", ', "not valid JSON"),
    ('["entry 7"]', "must be a JSON object"),
    ({"query": "entry 7", "page": "two"}, "argument 'page' must be an integer"),
    ({"query": "entry 7", "page": True}, "argument 'page' must be an integer"),
    ({"page": 1}, "missing argument(s): query"),
    ({"query": "x", "top_k": 50}, "unknown argument(s): top_k"),
])
def test_malformed_arguments_are_fed_back(arguments, reason):
    result, client, _ = run([tool_reply(SEARCH, arguments), tool_reply("send_message", {"message": "done"})])
    assert result.status == "ok"
    fed = last_message(client.requests[1])["content"]
    assert fed.startswith("status: Failed") and reason in fed
    assert_well_formed(client)




def test_page_past_the_end_is_refused_with_the_page_count():
    _, client, _ = run([tool_reply(SEARCH, {"query": "entry", "page": 7}), text_reply("none")])
    assert "page 7 does not exist: 12 results make 3 pages" in last_message(client.requests[1])["content"]


def test_failing_retriever_is_fed_back_not_raised():
    class Broken:
        def search(self, query, *, mode="hybrid", top_k=5, page=0):
            raise OSError("disk on fire")

    client = ScriptedChatClient([tool_reply(SEARCH, {"query": "x"}), text_reply("could not search")])
    result = answer("q", retriever=Broken(), client=client, settings=Settings())
    assert result.status == "ok" and "disk on fire" in last_message(client.requests[1])["content"]


def test_llm_errors_end_the_question_without_raising():
    result, _, _ = run([tool_reply(SEARCH, {"query": "entry"}), LLMError("gave up after 6 attempts: HTTP 503")])
    assert result.status == "error" and "HTTP 503" in result.error and result.steps[0].function == SEARCH


def test_window_too_small_is_an_error_answer():
    result, _, _ = run([], window=1024)
    assert result.status == "error" and "too small" in result.error


def test_several_calls_in_one_reply_all_get_results():
    result, client, _ = run([
        tool_calls_reply([(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
                          ("core_memory_append", {"name": "notes", "content": "c07: 47 bar", "request_heartbeat": True})]),
        tool_calls_reply([("send_message", {"message": "47 bar", "citations": ["c07"]}), (SEARCH, {"query": "late"})]),
    ])
    assert result.status == "ok" and [c.chunk_id for c in result.citations] == ["c07"]
    assert [m["role"] for m in client.requests[1]["messages"][-3:]] == ["assistant", "tool", "tool"]
    assert result.steps[-1].result.startswith("Failed: not run")


# -- step limit

def test_step_limit_forces_one_final_answer_step():
    searches = [tool_reply(SEARCH, {"query": f"entry {n}", "request_heartbeat": True}) for n in range(3)]
    result, client, lines = run([*searches, tool_reply("send_message", {"message": "best effort: 47 bar"})], max_steps=3)
    assert result.status == "ok" and result.answer == "best effort: 47 bar"
    forced = client.requests[3]
    assert last_message(forced)["content"] == FORCE_ANSWER
    assert_well_formed(client)
    assert [t["function"]["name"] for t in forced["tools"]] == ["send_message"]
    assert any("step limit (3) reached" in line for line in lines)


def test_step_limit_then_no_answer_is_an_error():
    searches = [tool_reply(SEARCH, {"query": f"entry {n}"}) for n in range(3)]
    result, client, _ = run([*searches, tool_reply(SEARCH, {"query": "one more"})], max_steps=2)
    assert result.status == "error" and result.error.startswith("step limit")
    assert len(client.requests) == 3


# -- json tool mode

def test_json_mode_parses_one_object_per_step_and_feeds_back_malformed_json():
    result, client, _ = run([
        text_reply('{"function": "archival_memory_search", "arguments": {"query": "entry 7"'),
        json_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
        text_reply('```json\n{"function": "send_message", "arguments": {"message": "47 bar", "citations": ["c07"]}}\n```'),
    ], tool_mode="json")
    assert result.status == "ok" and [c.chunk_id for c in result.citations] == ["c07"]
    first = client.requests[0]
    assert first["tools"] is None and first["response_format"]["type"] == "json_schema"
    schema = first["response_format"]["json_schema"]["schema"]
    assert "send_message" in schema["properties"]["function"]["enum"]
    assert "archival_memory_search(query: string, page: integer (optional)" in first["messages"][0]["content"]
    fed = last_message(client.requests[1])
    assert fed["role"] == "user" and "status: Failed" in fed["content"] and "not a valid function call" in fed["content"]
    assert "Results 1-5 of" in last_message(client.requests[2])["content"]
    assert_well_formed(client)


def test_json_mode_can_send_llama_cpp_json_object_format():
    result, client, _ = run([json_reply("send_message", {"message": "no idea"})] * 2, tool_mode="json",
                            response_format="json_object")
    assert result.status == "ok"
    fmt = client.requests[0]["response_format"]
    assert fmt["type"] == "json_object" and fmt["schema"]["required"] == ["function", "arguments"]
    bad, _, _ = run([], tool_mode="json", response_format="grammar")
    assert bad.status == "error" and "unknown response format 'grammar'" in bad.error


def test_tools_mode_accepts_a_call_written_as_json_content():
    """Servers that fill tool_calls unreliably sometimes put the call in the message text instead."""
    result, client, _ = run([text_reply('{"function": "archival_memory_search", "arguments": {"query": "entry 7"}}'),
                             tool_reply("send_message", {"message": "47 bar", "citations": ["c07"]})])
    assert result.status == "ok" and result.steps[0].function == SEARCH
    assert "Results 1-5 of" in last_message(client.requests[1])["content"]
    assert [c.chunk_id for c in result.citations] == ["c07"]


# -- memory pressure

def test_memory_pressure_evicts_with_summary_and_never_exceeds_a_tiny_window():
    window = 4096
    big_hits = [make_hit(f"k{n:02d}", f"record {n} reads {40 + n} bar " + "filler words about pumps and valves " * 40, page=n)
                for n in range(30)]
    steps = [tool_reply("core_memory_append", {"name": "notes", "content": "FINDING: k03 says 43 bar",
                                               "request_heartbeat": True})]
    steps += [tool_reply(SEARCH, {"query": f"record pumps {n}", "page": n % 6, "request_heartbeat": True})
              for n in range(8)]
    steps.append(tool_reply("send_message", {"message": "43 bar", "citations": ["k03"]}))
    client = ScriptedChatClient(steps, intercept=summaries("SUMMARY-MARK: searched record pages"))
    result, client, lines = run(client, hits=big_hits, window=window)
    assert result.status == "ok", result.error
    assert_within_window(client, window)
    assert_well_formed(client)
    agent_requests = [r for r in client.requests if not is_summary_request(r)]
    assert any(is_summary_request(r) for r in client.requests), "no eviction happened"
    assert any(ALERT_PREFIX in str(m.get("content")) for r in agent_requests for m in r["messages"])
    final = agent_requests[-1]["messages"]
    assert "FINDING: k03 says 43 bar" in final[0]["content"]  # working memory survived eviction
    assert "SUMMARY-MARK" in final[1]["content"] and "recall storage" in final[1]["content"]
    assert not any("cut to fit the context window" in str(m.get("content"))  # pages are sized to fit
               for r in agent_requests for m in r["messages"])
    assert any(line.startswith("evicted") for line in lines)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window=st.integers(min_value=4096, max_value=9000),
       sizes=st.lists(st.integers(min_value=0, max_value=3000), min_size=3, max_size=8),
       moves=st.lists(st.sampled_from(["search", "next", "note", "repeat", "recall", "unknown", "bad"]),
                      min_size=1, max_size=14),
       final=st.integers(min_value=1, max_value=3000),
       tool_mode=st.sampled_from(["tools", "json"]))
def test_no_request_ever_exceeds_the_window(window, sizes, moves, final, tool_mode):
    hits = [make_hit(f"h{n}", f"topic {n} " + "word " * size, page=n) for n, size in enumerate(sizes)]
    call = json_reply if tool_mode == "json" else tool_reply
    replies = []
    for n, move in enumerate(moves):
        replies.append({
            "search": lambda: call(SEARCH, {"query": f"topic word {n}", "request_heartbeat": True}),
            "next": lambda: call(SEARCH, {"query": "topic word", "page": n % 3}),
            "note": lambda: call("core_memory_append", {"name": "notes", "content": "n" * (n * 97 % 900)}),
            "repeat": lambda: call(SEARCH, {"query": "topic word"}),
            "recall": lambda: call("conversation_search", {"query": "topic"}),
            "unknown": lambda: call("no_such_function", {}),
            "bad": lambda: tool_reply(SEARCH, '{"query": ') if tool_mode == "tools" else text_reply("{oops"),
        }[move]())
    # twice: an answer given before any successful call is refused once, then taken
    client = ScriptedChatClient(replies + [text_reply("final " * final)] * 2, intercept=summaries("s " * 2000))
    result, client, _ = run(client, hits=hits, window=window, tool_mode=tool_mode, max_steps=16)
    assert result.status == "ok", result.error
    assert_within_window(client, window)
    assert_well_formed(client)


# -- sessions

def test_session_keeps_working_memory_and_conversation(tmp_path):
    settings = Settings(store=tmp_path / "archive")
    first = ScriptedChatClient([
        tool_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),
        tool_reply("core_memory_append", {"name": "notes", "content": "entry 7 = 47 bar [c07]", "request_heartbeat": True}),
        tool_reply("send_message", {"message": "47 bar", "citations": ["c07"]})])
    assert answer("Pressure in entry 7?", retriever=FakeRetriever(HITS), client=first, settings=settings,
                  session="s1").status == "ok"
    second = ScriptedChatClient([tool_reply("conversation_search", {"query": "entry 7", "request_heartbeat": True}),
                                 text_reply("It was 47 bar, as before."),  # evidence is what this run retrieved:
                                 tool_reply(SEARCH, {"query": "entry 7", "request_heartbeat": True}),  # look again
                                 text_reply("It was 47 bar, as before.")])
    result = answer("And what did you say before?", retriever=FakeRetriever(HITS), client=second, settings=settings,
                    session="s1")
    assert result.status == "ok" and result.grounded
    messages = second.requests[0]["messages"]
    assert "entry 7 = 47 bar [c07]" in messages[0]["content"] and "And what did you say before?" in messages[0]["content"]
    assert any(m.get("content") == "Pressure in entry 7?" for m in messages)
    assert "Results 1-" in last_message(second.requests[1])["content"]
    assert (tmp_path / "sessions" / "s1" / "recall.jsonl").exists()
    fresh = ScriptedChatClient([text_reply("fresh")])
    answer("new question", retriever=FakeRetriever(HITS), client=fresh, settings=settings)
    assert "entry 7 = 47 bar" not in fresh.requests[0]["messages"][0]["content"]


def test_a_torn_recall_line_is_repaired_and_damaged_state_is_one_clear_line(tmp_path):
    settings = Settings(store=tmp_path / "archive")
    folder = tmp_path / "sessions" / "s1"
    first = ScriptedChatClient([text_reply("yes")] * 2)  # a first-act answer is refused once (search first)
    assert answer("What does entry 7 say?", retriever=FakeRetriever(HITS), client=first, settings=settings, session="s1").status == "ok"
    recall = folder / "recall.jsonl"
    whole = recall.read_bytes()
    recall.write_bytes(whole + b'{"role": "user", "content": "torn by a k')  # killed mid-append
    again = ScriptedChatClient([text_reply("still yes")] * 2)
    result = answer("Again?", retriever=FakeRetriever(HITS), client=again, settings=settings, session="s1")
    assert result.status == "ok", result.error
    assert recall.read_bytes().startswith(whole) and b"torn by a k" not in recall.read_bytes()
    assert all(json.loads(line) for line in recall.read_text().splitlines())

    recall.write_bytes(whole + b"not json\n" + whole)
    bad_line = whole.count(b"\n") + 1
    broken = answer("Q?", retriever=FakeRetriever(HITS), client=ScriptedChatClient([]), settings=settings, session="s1")
    assert broken.status == "error" and f"{recall}:{bad_line}: not a recall message" in broken.error
    recall.write_bytes(whole)
    for damage in (b'{"core": {"notes": "half', b"\xff\xfe[1, 2]", b"[1, 2]"):
        (folder / "state.json").write_bytes(damage)
        bad = answer("Q?", retriever=FakeRetriever(HITS), client=ScriptedChatClient([]), settings=settings,
                     session="s1")
        assert bad.status == "error" and "session state" in bad.error and "is damaged" in bad.error, bad.error
        assert "\n" not in bad.error and "delete it or use another --session" in bad.error


def test_bad_session_name_is_an_error_answer(tmp_path):
    result = answer("q", retriever=FakeRetriever(HITS), client=ScriptedChatClient([]),
                    settings=Settings(store=tmp_path / "a"), session="../x")
    assert result.status == "error" and "invalid session name" in result.error


# -- over HTTP with the real openai client

@pytest.mark.parametrize("tool_mode", ["tools", "json"])
def test_real_openai_client_over_http_in_both_tool_modes(tool_mode):
    call = json_reply if tool_mode == "json" else tool_reply
    script = [call(SEARCH, {"query": "entry 7", "request_heartbeat": True}, prompt_tokens=900, completion_tokens=20),
              call("send_message", {"message": "47 bar", "citations": ["c07"]}, prompt_tokens=1400, completion_tokens=15)]
    with FakeEndpoint.scripted(script) as endpoint:
        settings = Settings(base_url=endpoint.base_url, model="fake-model", tool_mode=tool_mode)
        result = answer("Pressure in entry 7?", retriever=FakeRetriever(HITS), client=OpenAIChatClient(settings),
                        settings=settings)
    assert result.status == "ok" and result.answer == "47 bar"
    assert [c.to_dict() for c in result.citations] == [{"source": "log1.pdf", "page": 8, "chunk_id": "c07", "ocr": False,
                                                        "ocr_confidence": None, "low_confidence": False}]
    assert result.usage == {"prompt_tokens": 2300, "completion_tokens": 35}
    first, second = endpoint.requests
    if tool_mode == "tools":
        assert "response_format" not in first and {t["function"]["name"] for t in first["tools"]} >= {SEARCH}
        assert second["messages"][-1]["role"] == "tool"
    else:
        assert "tools" not in first and first["response_format"]["type"] == "json_schema"
        assert second["messages"][-1]["role"] == "user"
    assert "Results 1-5 of" in second["messages"][-1]["content"]


@pytest.mark.slow
def test_against_a_real_tiny_archive(tiny_archive):
    client = ScriptedChatClient([tool_reply(SEARCH, {"query": "maximum pressure Hydra-7 pump", "request_heartbeat": True}),
                                 lambda request: text_reply(_cite_first_pdf_chunk(request))])
    result = answer("What is the maximum pressure of the Hydra-7 pump?", retriever=tiny_archive, client=client,
                    settings=Settings())
    assert result.status == "ok"
    assert any(c.source == "manual.pdf" and c.page == 2 for c in result.citations)


def _cite_first_pdf_chunk(request) -> str:
    text = request["messages"][-1]["content"]
    line = next(l for l in text.splitlines() if "source: manual.pdf | page: 2" in l)
    return f"42 bar ({line.split('|')[0].split(':', 1)[1].strip()})"


def test_reported_prompt_tokens_correct_the_budget():
    """An endpoint whose tokenizer counts twice our estimate: later requests still fit under its count."""
    window = 16000
    counter = TokenCounter()

    def doubled(reply):
        def respond(request):
            size = counter.request(request["messages"], request["tools"], request["response_format"])
            return type(reply)(reply.content, reply.tool_calls, prompt_tokens=2 * size, completion_tokens=5)
        return respond

    big = [make_hit(f"b{n}", f"alpha {n} " + "lorem ipsum dolor " * 120, page=n) for n in range(40)]
    steps = [doubled(tool_reply(SEARCH, {"query": "alpha", "page": n, "request_heartbeat": True})) for n in range(8)]
    client = ScriptedChatClient([*steps, doubled(text_reply("done"))], intercept=summaries("short"))
    result, client, _ = run(client, hits=big, window=window)
    assert result.status == "ok", result.error
    for request in [r for r in client.requests if not is_summary_request(r)][1:]:
        true_size = 2 * counter.request(request["messages"], request["tools"], request["response_format"])
        assert true_size + request["max_tokens"] <= window
    assert any(is_summary_request(r) for r in client.requests)


def test_unknown_tool_mode_and_unsavable_session_are_error_answers(tmp_path):
    result, _, _ = run([], tool_mode="grammar")
    assert result.status == "error" and "unknown tool mode 'grammar'" in result.error
    blocker = tmp_path / "sessions"
    blocker.write_text("a file where the sessions folder should be")
    result = answer("q", retriever=FakeRetriever(HITS), client=ScriptedChatClient([text_reply("fine")] * 2),
                    settings=Settings(store=tmp_path / "archive"), session="s")
    assert result.status == "error" and result.error.startswith("cannot use session folder")


def test_session_save_failure_is_reported_with_the_answer_kept(tmp_path, monkeypatch):
    from pipeline.agent.session import Session

    def refuse(self, state):
        raise OSError("disk full")

    monkeypatch.setattr(Session, "save", refuse)
    result = answer("q", retriever=FakeRetriever(HITS), client=ScriptedChatClient([text_reply("fine")] * 2),
                    settings=Settings(store=tmp_path / "archive"), session="s")
    assert result.status == "error" and "could not save session" in result.error and result.answer == "fine"
