"""Small windows and small models: every hit reachable, a light fixed context, no wasted steps.

The agent is driven by scripted "models" that read what the agent showed them (page headers, hits) and
act on it, as a careful small model would: page through results, save progress on an alert, answer.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pytest

from pipeline.agent.context import ALERT_PREFIX, echoes_alert
from pipeline.agent.loop import answer, context_budget
from pipeline.config import Settings
from pipeline.llm import ChatReply
from pipeline.testing import FakeRetriever, ScriptedChatClient, is_summary_request, json_reply, make_hit, summaries, \
    text_reply, tool_reply
from pipeline.agent.tokens import TokenCounter
from pipeline.types import Hit, SearchResult

SEARCH = "archival_memory_search"
WINDOWS = [2048, 3000, 4096, 8192]
NEXT = re.compile(r"Next: page=(\d+)\.")
CHUNK = re.compile(r"chunk_id: (\S+) \|")
QUESTION = "What torque does the Hydra-7 impeller nut need?"


def long_hits(n: int = 40, *, answer_at: int | None = None) -> list[Hit]:
    """`n` chunks of about 1,300 characters, all matching "pump manual section", ranked in list order."""
    hits = []
    for rank in range(1, n + 1):
        filler = " ".join(f"The pump manual section {rank} describes valve {v} and its seal, gasket and "
                          f"housing checks in routine service." for v in range(12))
        fact = " The impeller nut needs a torque of 42 Nm." if rank == answer_at else ""
        hits.append(make_hit(f"r{rank:02d}", f"pump manual section {rank}.{fact} {filler}", page=rank))
    return hits


def last_content(request: dict[str, Any]) -> str:
    return str(request["messages"][-1].get("content") or "")


def assert_within_window(client: ScriptedChatClient, window: int) -> None:
    counter = TokenCounter()
    for request in client.requests:
        size = counter.request(request["messages"], request["tools"], request["response_format"])
        assert size + (request["max_tokens"] or 0) <= window


def since_last_call(request: dict[str, Any]) -> str:
    """What the agent showed the model since its last reply: results, alerts (tool and user messages)."""
    messages = request["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
    return "\n".join(str(m.get("content") or "") for m in messages[last + 1:])


PAGE = re.compile(r"Results \d+-\d+ of \d+ \(page=(\d+) of")


def pager(function: str, query: str, reply: Callable[..., ChatReply], seen: list[str],
          *, answer_when: str | None = None) -> Callable[[dict[str, Any]], ChatReply]:
    """A careful small model: searches `query` and asks for each next page the header names until the last
    (or until a result holds `answer_when`), saves its progress when alerted, and records what each page
    showed in `seen`."""
    state = {"next": 0}

    def step(request: dict[str, Any]) -> ChatReply:
        text = since_last_call(request)
        if PAGE.search(text):
            seen.extend(CHUNK.findall(text) if function == SEARCH else re.findall(r"MSG-\d\d", text))
            state["next"] = int(m.group(1)) if (m := NEXT.search(text)) else None
        if answer_when and answer_when in text:
            found = re.findall(r"chunk_id: (\S+) \|[^\n]*\n[^\n]*" + re.escape(answer_when), text)
            return reply("send_message", {"message": "42 Nm", "citations": found})
        if ALERT_PREFIX in text:
            return reply("core_memory_append", {"name": "notes", "content": f"paging; next page {state['next']}"})
        if state["next"] is None:
            return reply("send_message", {"message": "done"})
        return reply(function, {"query": query, "page": state["next"]})

    return step


def run_pager(window: int, tool_mode: str, function: str, query: str, hits: list[Hit], *,
              session: str | None = None, store=None, answer_when: str | None = None, max_steps: int = 100):
    reply = json_reply if tool_mode == "json" else tool_reply
    seen: list[str] = []
    script = pager(function, query, reply, seen, answer_when=answer_when)
    client = ScriptedChatClient([script] * (max_steps + 1), intercept=summaries("SUMMARY: paging the manual"))
    settings = Settings(context_window=window, tool_mode=tool_mode, max_steps=max_steps,
                        response_format="json_object", **({"store": store} if store else {}))
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client, settings=settings, session=session)
    return result, client, seen


# -- every hit reachable

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("tool_mode", ["json", "tools"])
def test_paging_through_every_page_shows_each_of_40_long_hits_once(window, tool_mode):
    hits = long_hits()
    result, client, seen = run_pager(window, tool_mode, SEARCH, "pump manual section", hits)
    assert result.status == "ok", result.error
    assert seen == [h.chunk_id for h in hits]  # every ranked hit exactly once, in rank order
    agent = [r for r in client.requests if not is_summary_request(r)]
    results = [last_content(r) for r in agent[1:]]
    assert not any("cut to fit the context window" in text for text in results)  # pages fit the room
    sizes = {int(m.group(1)) for text in results for m in [re.search(r", (\d+) a page\)", text)] if m}
    assert len(sizes) == 1  # one page size for the whole question
    assert_within_window(client, window)


@pytest.mark.parametrize("window", WINDOWS)
def test_conversation_search_pages_through_40_long_messages_once_each(window, tmp_path):
    from pipeline.agent.recall import Recall
    from pipeline.agent.session import Session

    session = Session.for_store(tmp_path / "archive", "long")
    recall = Recall(session.recall_path)
    for n in range(40):
        recall.add({"role": "user", "content": f"MSG-{n:02d} remembered detail. " + "words of an old message " * 70})
    result, client, seen = run_pager(window, "json", "conversation_search", "remembered detail", [],
                                     session="long", store=tmp_path / "archive")
    assert result.status == "ok", result.error
    assert sorted(set(seen)) == [f"MSG-{n:02d}" for n in range(40)] and len(seen) == 40
    assert seen == [f"MSG-{n:02d}" for n in reversed(range(40))]  # best first: equal matches, newest first
    assert not any("cut to fit the context window" in last_content(r) for r in client.requests)
    assert_within_window(client, window)


class ShiftingRetriever(FakeRetriever):
    """Ranks like RRF over truncated lists: the order past the first page depends on how many were asked for."""

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        result = super().search(query, mode=mode, top_k=10_000, page=0)
        ranked = list(result.hits)
        if top_k < len(ranked):
            ranked[1:] = ranked[1:][::-1] if top_k % 2 else ranked[1:]
        return SearchResult(query, ranked[page * top_k:(page + 1) * top_k], result.total, page, top_k)


def test_page_n_means_the_same_hits_every_time_in_a_question():
    hits = long_hits(30)
    asked = [2, 0, 1, 2, 4]  # out of order, and page 2 twice (the repeat is answered with page 3, unseen)
    replies = [json_reply(SEARCH, {"query": "pump manual section", "page": p}) for p in asked]
    client = ScriptedChatClient(replies + [json_reply("send_message", {"message": "done"})],
                                intercept=summaries())
    result = answer(QUESTION, retriever=ShiftingRetriever(hits), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    assert result.status == "ok"
    agent = [r for r in client.requests if not is_summary_request(r)]
    pages = {}
    for request in agent[1:]:
        text = last_content(request)
        page = int(re.search(r"\(page=(\d+) of", text).group(1))
        pages.setdefault(page, []).append(CHUNK.findall(text))
    per_page = int(re.search(r", (\d+) a page\)", last_content(agent[1])).group(1))
    assert sorted(pages) == [0, 1, 2, 3, 4]
    for page, shown in pages.items():
        assert all(ids == [h.chunk_id for h in hits[page * per_page:(page + 1) * per_page]] for ids in shown)
    assert "You already saw page=2 of this search" in last_content(agent[4])


# -- a lighter fixed context

@pytest.mark.parametrize("tool_mode,response_format,shares", [
    ("tools", "json_schema", (0.40, 0.25)),
    ("json", "json_object", (0.40, 0.25)),  # the local model's mode: its function list stays within the target
])
def test_fixed_context_share_at_4096_and_8192(tool_mode, response_format, shares):
    for window, share in zip((4096, 8192), shares):
        budget = context_budget(Settings(context_window=window, tool_mode=tool_mode, response_format=response_format))
        fixed = window - budget["queue"]
        assert fixed == sum(v for k, v in budget.items() if k != "queue")
        assert fixed <= share * window, (window, budget)


@pytest.mark.parametrize("tool_mode", ["json", "tools"])
def test_the_agent_runs_at_2048(tool_mode):
    reply = json_reply if tool_mode == "json" else tool_reply
    hits = long_hits(8, answer_at=2)
    client = ScriptedChatClient([reply(SEARCH, {"query": "impeller nut torque"}),
                                 reply("send_message", {"message": "42 Nm", "citations": ["r02"]})],
                                intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client,
                    settings=Settings(context_window=2048, tool_mode=tool_mode, response_format="json_object"))
    assert result.status == "ok" and [c.chunk_id for c in result.citations] == ["r02"]
    assert_within_window(client, 2048)


# -- deep answers under pressure

@pytest.mark.parametrize("answer_at", [12, 31])
def test_an_answer_ranked_deep_is_found_at_3000_across_evictions(answer_at):
    hits = long_hits(40, answer_at=answer_at)
    result, client, seen = run_pager(3000, "json", SEARCH, "pump manual section", hits,
                                     answer_when="torque of 42 Nm")
    assert result.status == "ok", result.error
    assert result.answer == "42 Nm" and [c.chunk_id for c in result.citations] == [f"r{answer_at:02d}"]
    assert seen == [h.chunk_id for h in hits[:len(seen)]] and f"r{answer_at:02d}" in seen
    summaries_made = [i for i, r in enumerate(client.requests) if is_summary_request(r)]
    assert summaries_made, "no eviction happened"
    after = [r for r in client.requests[summaries_made[0]:] if not is_summary_request(r)]
    assert after and all(f"<task chars=\"{len(QUESTION)}/" in r["messages"][0]["content"]
                         and QUESTION in r["messages"][0]["content"] for r in after)  # the task survived
    assert any(QUESTION not in json.dumps(r["messages"][1:]) for r in after)  # ... the question left the queue
    assert_within_window(client, 3000)


# -- small models kept on track

def test_a_repeated_identical_search_returns_the_next_page_then_a_hint():
    hits = long_hits(6)
    same = {"query": "Pump  manual section"}
    client = ScriptedChatClient([json_reply(SEARCH, same)] * 4 + [json_reply("send_message", {"message": "none"})],
                                intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    agent = [last_content(r) for r in client.requests if not is_summary_request(r)]
    per_page = int(re.search(r", (\d+) a page\)", agent[1]).group(1))
    pages = -(-6 // per_page)
    assert pages >= 2
    second = agent[2]
    assert second.count("status: OK") == 1 and "You already saw page=0 of this search; here is page=1" in second
    assert CHUNK.findall(second) == [h.chunk_id for h in hits[per_page:2 * per_page]]
    hint = agent[pages + 1]  # once every page was shown: a hint, not a bare refusal
    assert "status: Failed" in hint and f"already seen every page of {same['query']!r}" in hint
    assert "words of the question not searched yet: torque, Hydra-7, impeller" in hint
    assert result.status == "ok"


def test_memory_edits_that_small_models_repeated_now_land_or_point_elsewhere():
    """Measured with the 1.5B model at 8192: a first note longer than `notes` holds failed step after step, and
    so did core_memory_replace with an empty old_content on an empty block; each identical retry failed again."""
    long_note = "E-117 means a blocked suction line " * 20  # about 700 characters: more than notes holds at 8192
    absent = {"name": "notes", "old_content": "no such text", "new_content": "x"}
    client = ScriptedChatClient([
        json_reply("core_memory_replace", {"name": "notes", "old_content": "", "new_content": "warranty: Solberg"}),
        json_reply("core_memory_append", {"name": "notes", "content": long_note}),
        json_reply("core_memory_replace", absent), json_reply("core_memory_replace", absent),
        json_reply(SEARCH, {"query": "impeller nut torque"}),
        json_reply("send_message", {"message": "42 Nm", "citations": ["r01"]})], intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever(long_hits(3, answer_at=1)), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    agent = [last_content(r) for r in client.requests if not is_summary_request(r)]
    assert "status: OK" in agent[1]  # an empty old_content appends
    assert "status: OK" in agent[2] and "characters of your note were left out" in agent[2]
    assert "old_content was not found" in agent[3] and "this exact call failed before" not in agent[3]
    assert "this exact call failed before" in agent[4] and "Search with other words" in agent[4]
    assert result.status == "ok" and result.answer == "42 Nm"


def test_a_search_repeated_after_failing_keeps_its_own_pointer_elsewhere_once():
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "zebra"})] * 3
                                + [json_reply("send_message", {"message": "none"})], intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever([]), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    third = [s.result for s in result.steps][2]
    assert third.startswith("Failed: you already searched for 'zebra'") and third.count("Search with other words") == 1


def test_a_chunk_id_anywhere_in_a_citation_string_is_kept_and_still_validated():
    hits = long_hits(6, answer_at=2)
    header = "chunk_id: r02 | source: doc.txt | page: 2 | heading: Torque"
    cited = [header, "see [r03] and r04", "chunk_id: r99 | source: doc.txt", "xr05y", "r06"]
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "pump manual section impeller torque"}),
                                 json_reply("send_message", {"message": "42 Nm", "citations": cited})],
                                intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever(hits[:5]), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    assert [c.chunk_id for c in result.citations] == ["r02", "r03", "r04"]  # r06 was never retrieved
    check = next(s for s in result.steps if s.function == "(citation check)")
    assert check.arguments == {"dropped": ["chunk_id: r99 | source: doc.txt", "xr05y", "r06"]}


def test_the_pressure_alert_restates_the_task_and_is_never_delivered_as_the_answer():
    hits = long_hits(20, answer_at=3)
    echo = "The system alert indicates that the context window is 70% full."

    def model(request: dict[str, Any]) -> ChatReply:
        text = last_content(request)
        if ALERT_PREFIX in text and not model.echoed:
            model.echoed = True
            return json_reply("send_message", {"message": echo})
        if "memory alert" in text and not model.noted:
            model.noted = True
            return json_reply("core_memory_append", {"name": "notes", "content": text[text.index(ALERT_PREFIX):]
                                                     if ALERT_PREFIX in text else echo})
        if "memory alert" in text and not model.plain:
            model.plain = True
            return text_reply(echo)
        if model.plain:
            return json_reply("send_message", {"message": "42 Nm", "citations": ["r03"]})
        return json_reply(SEARCH, {"query": "pump manual section", "page": model.page()})

    model.echoed = model.noted = model.plain = False
    pages = iter(range(100))
    model.page = lambda: next(pages)
    client = ScriptedChatClient([model] * 40, intercept=summaries())
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client,
                    settings=Settings(context_window=3000, tool_mode="json", response_format="json_object",
                                      max_steps=30))
    assert result.status == "ok" and result.answer == "42 Nm"
    agent = [r for r in client.requests if not is_summary_request(r)]
    alerts = [m["content"] for r in agent for m in r["messages"]
              if m["role"] == "user" and ALERT_PREFIX in str(m.get("content"))]
    assert alerts and all(f"Continue the task: {QUESTION}" in a for a in alerts)
    fed = {(s.function, s.result.split(";")[0]) for s in result.steps}
    assert ("send_message", "Failed: that repeats the memory alert") in fed
    assert ("core_memory_append", "Failed: that is the memory alert, not a finding") in fed
    assert ("(plain reply)", "Failed: that repeats the memory alert") in fed
    assert not echoes_alert(result.answer)
    final_system = agent[-1]["messages"][0]["content"]
    assert "context window is" not in final_system  # nothing of the alert reached working memory


@pytest.mark.parametrize("first", [json_reply("send_message", {"message": "10,000 psi"}), text_reply("10,000 psi")])
def test_an_answer_before_any_search_is_not_delivered_and_the_system_searches(first):
    hits = long_hits(6, answer_at=2)
    client = ScriptedChatClient([first, json_reply("send_message", {"message": "42 Nm", "citations": ["r02"]})])
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    assert result.status == "ok" and result.answer == "42 Nm" and result.grounded
    assert result.steps[0].result.startswith("Failed: not delivered: no search yet; the system ran "
                                             f"archival_memory_search({QUESTION!r})")
    assert "chunk_id: r02" in last_content(client.requests[1])
    insisted = ScriptedChatClient([first] * 4)  # the claim, sent again after the search: grounding catches it
    kept = answer(QUESTION, retriever=FakeRetriever(hits), client=insisted,
                  settings=Settings(tool_mode="json", response_format="json_object", max_steps=3))
    assert kept.status == "ok" and kept.grounded is False and kept.unsupported == ["10,000 psi"]

def test_a_first_request_for_a_later_page_shows_page_0_first():
    """The 1.5B model asked for page=1 of a new query (q06, q07 at 8192, session 12) and answered from hits 6-10,
    never seeing the answer ranked first; page 0 comes first now, and the page asked for when asked again."""
    hits = long_hits(12, answer_at=1)
    query = {"query": "pump manual section impeller nut torque", "page": 1}
    client = ScriptedChatClient([json_reply(SEARCH, query), json_reply(SEARCH, query),
                                 json_reply("send_message", {"message": "42 Nm", "citations": ["r01"]})])
    result = answer(QUESTION, retriever=FakeRetriever(hits), client=client,
                    settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    first, second = last_content(client.requests[1]), last_content(client.requests[2])
    assert first.startswith("[function result: archival_memory_search]\nstatus: OK\nYou asked for page=1, but no page "
                            "of this search was shown yet: here is page=0")
    assert "(page=0 of" in first and "chunk_id: r01" in first
    assert "(page=1 of" in second and "You asked" not in second and "chunk_id: r01" not in second
    assert result.status == "ok" and result.grounded and [c.chunk_id for c in result.citations] == ["r01"]


def test_a_search_repeated_past_its_first_pages_is_also_told_to_answer_or_reword():
    """q07 (session 14): one search repeated eleven times was served pages 2-9 in turn; its answer was on page 0."""
    hits = long_hits(40)
    same = {"query": "Pump  manual section"}
    client = ScriptedChatClient([json_reply(SEARCH, same)] * 4 + [json_reply("send_message", {"message": "none"})],
                                intercept=summaries())
    answer(QUESTION, retriever=FakeRetriever(hits), client=client,
           settings=Settings(context_window=8192, tool_mode="json", response_format="json_object"))
    agent = [last_content(r) for r in client.requests if not is_summary_request(r)]
    assert "here is page=1" in agent[2] and "Search with other words" not in agent[2]
    third = agent[3]
    assert "here is page=2, the next one you have not seen. You have now seen 3 pages of this search" in third
    assert "later pages rank lower. Search with other words (words of the question not searched yet: torque" in third
    assert "You have now seen 4 pages" in agent[4]
