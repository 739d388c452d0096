"""Answers a small model sends that are not answers yet, held back with one line of feedback (real archive).

Each scripted model replays a failure the local 1.5B model showed on the demo at 8192 tokens (session 10):
an invented answer after a memory note and no search (q03), the question sent back as the answer (q04),
a decline while the answer stood first in its results (q11), and citations wrapped in hit headers (q04, q09, q19).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.agent.citations import repaired
from pipeline.agent.guards import closest_sentence, repeats_question
from pipeline.agent.loop import answer
from pipeline.agent.tokens import TokenCounter
from pipeline.config import Settings
from pipeline.llm import ChatReply
from pipeline.testing import ScriptedChatClient, json_reply, make_hit, text_reply

SEARCH = "archival_memory_search"
SEALS = "After how many hours must the seals of the pump be replaced?"
HIT = re.compile(r"chunk_id: (\w+) \|[^\n]*\n([^\n]*)")


def settings(**overrides: Any) -> Settings:
    return Settings(**{"context_window": 8192, "tool_mode": "json", "response_format": "json_object", **overrides})


def shown(request: dict[str, Any]) -> str:
    return str(request["messages"][-1].get("content") or "")


def hit_holding(text: str, words: str) -> str:
    """The chunk id of the hit whose shown text holds `words`."""
    return next(cid for cid, body in HIT.findall(text) if words in body)


def answer_from_results(request: dict[str, Any]) -> ChatReply:
    """A model that answers from the page it was just shown, citing the hit that holds the answer."""
    cid = hit_holding(shown(request), "500 hours")
    return json_reply("send_message", {"message": "Replace the seals every 500 hours.", "citations": [cid]})


def test_an_answer_before_any_search_gets_the_search_the_system_runs_for_it(tiny_archive):
    """q06/q07 (session 11): told to search first, the model sent its invented answer 12 times and never searched.
    Now the system runs the search itself, once, and the model answers from the page it is shown."""
    invented = json_reply("send_message", {"message": "The seals must be replaced after 50 operating hours.",
                                           "citations": ["1"]})
    note = json_reply("core_memory_append", {"name": "notes", "content": "Seals: 50 operating hours, chunk 1234567890"})
    client = ScriptedChatClient([note, invented, answer_from_results])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    assert result.grounded and [c.source for c in result.citations] == ["manual.pdf"]
    faulted = next(s for s in result.steps if s.function == "send_message")
    assert faulted.result.startswith(f"Failed: not delivered: no search yet; the system ran "
                                     f"archival_memory_search({SEALS!r}): OK: Results 1-")
    page = shown(client.requests[2])
    assert page.startswith("[function result: send_message]\nstatus: Failed\nreason: not delivered: you had not "
                           "searched the documents")
    assert f"the system ran archival_memory_search(query={SEALS!r}) for you" in page
    assert "every 500 hours" in page and "chunk_id: " in page  # the page itself, as a search shows it


def test_the_system_searches_once_and_its_page_counts_as_seen(tiny_archive):
    invented = json_reply("send_message", {"message": "The seals must be replaced after 50 operating hours."})
    client = ScriptedChatClient([invented, json_reply(SEARCH, {"query": SEALS}), invented, invented])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    searched = [s.result for s in result.steps if s.function == SEARCH]
    assert searched[0].startswith(f"Failed: you have already seen every page of {SEALS!r} (page=0 to page=0")
    system_ran = [r for r in client.requests if "the system ran archival_memory_search" in str(r["messages"])]
    assert len(system_ran) == len(client.requests) - 1  # once, in the first result; every later request keeps it
    assert result.status == "ok" and result.grounded is False and "50" in " ".join(result.unsupported)


def test_an_abstention_before_a_search_gets_the_search_too(tiny_archive):
    declined = json_reply("send_message", {"message": "The documents do not answer this."})
    price = "What is the retail price of the Hydra-7 pump in US dollars?"
    client = ScriptedChatClient([declined, declined])
    result = answer(price, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "The documents do not answer this."
    assert result.steps[0].result.startswith("Failed: not delivered: no search yet; the system ran")
    assert "chunk_id: " in shown(client.requests[1])


def test_a_plain_text_answer_before_any_search_gets_the_search_in_its_system_note(tiny_archive):
    client = ScriptedChatClient([text_reply("Every 50 hours."), answer_from_results])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours." and result.grounded
    note = shown(client.requests[1])
    assert note.startswith("[system] status: Failed\nreason: not delivered: you had not searched")
    assert "every 500 hours" in note


def test_a_message_that_repeats_the_question_is_sent_back(tiny_archive):
    client = ScriptedChatClient([
        json_reply(SEARCH, {"query": "seals replaced hours"}),
        json_reply("core_memory_append", {"name": "notes", "content": "seals: every 500 hours (manual.pdf)"}),
        json_reply("send_message", {"message": SEALS}),
        json_reply("send_message", {"message": "Do you mean the Hydra-7 pump seals?"}),
        json_reply("send_message", {"message": "Replace the seals every 500 hours."})])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    sent = [s.result for s in result.steps if s.function == "send_message"]
    assert sent[:2] == ["Failed: not delivered: your message repeats the question. Answer it, from what you found "
                        "(or say that the documents do not answer it)."] * 2
    assert "your message repeats the question" in shown(client.requests[3])


def test_repeats_question_takes_restatements_and_questions_not_answers():
    question = "Which lubricant is recommended for the Hydra-7 bearings?"
    assert repeats_question(question, question)
    assert repeats_question("The lubricant recommended for the Hydra-7 bearings.", question)
    assert repeats_question("Which one? The grease or the oil?", question)
    assert not repeats_question("Norrlube HT-220 is recommended for the Hydra-7 bearings.", question)
    assert not repeats_question("The Hydra-7 retails for $35.00.", "What is the retail price of the Hydra-7?")
    assert not repeats_question("Grease.", question)
    assert not repeats_question("The documents do not say which lubricant is recommended.", question)
    assert not repeats_question("Is it grease? Yes: Norrlube HT-220 grease.", question)
    yes_no = "Is the Hydra-7 rated for 42 bar?"
    assert not repeats_question("The Hydra-7 is rated for 42 bar.", yes_no)
    assert repeats_question("Is the Hydra-7 rated for 42 bar?", yes_no)


def test_a_decline_while_a_shown_chunk_answers_gets_one_more_look(tiny_archive):
    def reread(request: dict[str, Any]) -> ChatReply:
        note = shown(request)
        assert "You say the documents do not answer" in note and "every 500 hours" in note
        cid = re.search(r"chunk_id (\w+) \(manual\.pdf\) says", note).group(1)
        return json_reply("send_message", {"message": "Replace the seals every 500 hours.", "citations": [cid]})

    client = ScriptedChatClient([json_reply(SEARCH, {"query": "Hydra-7 pump seals replaced hours"}),
                                 json_reply("send_message", {"message": "The documents do not answer the question."}),
                                 reread])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    assert [c.source for c in result.citations] == ["manual.pdf"]
    check = next(s for s in result.steps if s.function == "(abstention check)")
    assert "every 500 hours" in check.arguments["sentence"]
    sent = [s.result for s in result.steps if s.function == "send_message"]
    assert sent[0] == "held back: declined while a chunk shown matches the question"
    insisting = ScriptedChatClient([json_reply(SEARCH, {"query": "Hydra-7 pump seals replaced hours"})]
                                   + [json_reply("send_message", {"message": "The documents do not answer it."})] * 2)
    again = answer(SEALS, retriever=tiny_archive, client=insisting, settings=settings())
    assert again.status == "ok" and again.answer == "The documents do not answer it."  # held back once only


def test_a_decline_with_no_close_chunk_is_delivered_at_once(tiny_archive):
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "Hydra-7 pump retail price dollars"}),
                                 json_reply("send_message", {"message": "The documents do not answer it."})])
    result = answer("What is the retail price of the Hydra-7 pump in US dollars?", retriever=tiny_archive,
                    client=client, settings=settings())
    assert result.status == "ok" and result.answer == "The documents do not answer it."
    assert not any(s.function == "(abstention check)" for s in result.steps)


def test_closest_sentence_needs_every_code_of_the_question_and_most_of_its_rarer_words():
    hits = [make_hit("m1", "Error code E-117 means a blocked suction line. Check the strainer.", page=52,
                     source="hydra-7_service_manual.pdf"),
            make_hit("m2", "The controller display shows the pump state.", page=50),
            make_hit("m3", "The Hydra-7 is rated for 42 bar.", page=9)]
    found = closest_sentence("What does error code E-117 on the Hydra-7 controller mean?", hits)
    assert found is not None and found[0].chunk_id == "m1" and found[1] == "Error code E-117 means a blocked suction line."
    assert closest_sentence("What does error code E-204 on the Hydra-7 controller mean?", hits) is None
    assert closest_sentence("What does error code E-117 on the Hydra-5 controller mean?", hits) is None
    assert closest_sentence("What is the Hydra-5 rated for?", hits) is None  # m3 is the Hydra-7's
    assert closest_sentence("How much does the Hydra-7 weigh in kilograms?", hits) is None


def test_cited_chunk_ids_are_kept_however_the_model_wraps_them(tiny_archive):
    def cite(forms: list[str], message: str = "Replace the seals every 500 hours."):
        def reply(request: dict[str, Any]) -> ChatReply:
            cid = hit_holding(shown(request), "500 hours")
            return json_reply("send_message", {"message": message.format(cid=cid),
                                               "citations": [f.format(cid=cid) for f in forms]})
        return reply

    for forms, message in [([">chunk_id: {cid} | source: manual.pdf | page: 3"], ""),
                           (["chunk_id: {cid}"], ""), (["chunk_id_{cid}"], ""),
                           ([], "Replace the seals every 500 hours (chunk {cid}).")]:
        client = ScriptedChatClient([json_reply(SEARCH, {"query": "seals replaced hours"}),
                                     cite(forms, message or "Replace the seals every 500 hours.")])
        result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
        assert [(c.source, c.inferred) for c in result.citations] == [("manual.pdf", False)], forms


def test_a_mangled_chunk_id_counts_for_the_one_retrieved_chunk_it_can_stand_for(tiny_archive):
    """The demo's 1.5B model cited `ddf53f1d9153075a7e3` for `ddfd53f1d9153075a7e3` and `70e30aeef72e0c6f22db` for
    `30e30aeef72e0c6f22db`: one character dropped, one changed."""
    def cite(mangle):
        def reply(request: dict[str, Any]) -> ChatReply:
            cid = hit_holding(shown(request), "500 hours")
            return json_reply("send_message", {"message": "Replace the seals every 500 hours.",
                                               "citations": [mangle(cid)]})
        return reply

    def swapped(cid: str) -> str:  # two neighbouring characters that differ, swapped
        i = next(i for i in range(2, len(cid) - 1) if cid[i] != cid[i + 1])
        return cid[:i] + cid[i + 1] + cid[i] + cid[i + 2:]

    for mangle, kept in [(lambda c: c[:3] + c[4:], True), (lambda c: ("1" if c[0] != "1" else "2") + c[1:], True),
                         (lambda c: c[:12], True), (lambda c: f"chunk_id: {c[:-1]} | source: manual.pdf", True),
                         (swapped, True),
                         (lambda c: c[:11], False), (lambda c: c[:8] + "zz" + c[10:], False)]:
        client = ScriptedChatClient([json_reply(SEARCH, {"query": "seals replaced hours"}), cite(mangle)])
        result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
        checks = {k for s in result.steps if s.function == "(citation check)" for k in s.arguments}
        assert ([(c.source, c.inferred) for c in result.citations] == [("manual.pdf", False)]) == kept
        assert checks == ({"mended"} if kept else {"dropped"})


def test_a_mangled_id_that_could_stand_for_two_chunks_is_not_taken():
    known = {cid: make_hit(cid, "text") for cid in ("ab12cd34ef56aa7890bb", "ab12cd34ef56aa7890cc", "ffff0000eeee1111dddd")}
    assert repaired("ab12cd34ef56aa78", known) is None  # a prefix of both
    assert repaired("ab12cd34ef56aa7890bc", known) is None  # one edit from both
    assert repaired("ab12cd34ef56aa7890b", known) == "ab12cd34ef56aa7890bb"
    assert repaired("ffff0000eeee", known) == "ffff0000eeee1111dddd"
    assert repaired("ffff0000eeee1111dddd", known) is None  # an exact id is not mangled: ids_in takes it
    assert repaired("ffff0000eeee1111dddd"[::-1], known) is None  # many characters moved: another id


def test_an_unsupported_answer_is_shown_the_closest_sentence_it_was_shown(tiny_archive):
    """q09 (session 11): an invented date held back, then sent again unchanged; the note now quotes the sentence
    of the retrieved chunks that matches the question best, with its chunk id."""
    def corrected(request: dict[str, Any]) -> ChatReply:
        note = shown(request)
        assert "50 hours" in note and "appears in none of the chunks you retrieved" in note
        cid = re.search(r"The closest sentence you were shown, chunk_id (\w+) \(manual\.pdf\)", note).group(1)
        assert "every 500 hours" in note.split("The closest sentence you were shown")[1]
        return json_reply("send_message", {"message": "Replace the seals every 500 hours.", "citations": [cid]})

    client = ScriptedChatClient([json_reply(SEARCH, {"query": "Hydra-7 pump seals replaced hours"}),
                                 json_reply("send_message", {"message": "Replace the seals every 50 hours."}),
                                 corrected])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours." and result.grounded


CUT = '{"function": "core_memory_append", "arguments": {"name": "notes", "content": "The seals are replaced'


def cut_off() -> ChatReply:
    return ChatReply(content=CUT, completion_tokens=320, finish_reason="length")


def test_a_call_cut_off_at_the_reply_limit_is_asked_again_with_room_to_end(tiny_archive):
    """h11 (session 13): one note, a chunk copied whole, was cut off at the 320-token reply reserve eleven times over.
    Asked again with four times the limit (room the window has), the call ends and runs: no step is lost."""
    whole = json_reply("core_memory_append", {"name": "notes", "content": "The seals are replaced every 500 hours."})
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "seals replaced hours"}), cut_off(), whole,
                                 json_reply("send_message", {"message": "Replace the seals every 500 hours."})])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    assert [r["max_tokens"] for r in client.requests] == [320, 320, 1280, 320]
    assert client.requests[2]["messages"] == client.requests[1]["messages"]  # the same request, a wider limit
    assert [s.function for s in result.steps][:3] == [SEARCH, "core_memory_append", "send_message"]
    assert "The seals are replaced every 500 hours." in str(client.requests[3]["messages"][0])  # in working memory


def test_a_call_still_cut_off_is_told_so_and_two_wider_tries_are_the_most(tiny_archive):
    """q04/q09 (session 11): a note written past the reply reserve came back as 'Unterminated string'. A reply
    still cut off at the wider limit is told so, and two wider tries a question are the most: a model that loops
    spends its own steps, not the run's time."""
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "seals replaced hours"}),
                                 cut_off(), cut_off(),  # widened, still cut: told
                                 cut_off(), cut_off(),  # widened again, still cut: told
                                 cut_off(),  # the wider tries spent: told at once
                                 ChatReply(content=CUT + " every", finish_reason="stop"),
                                 json_reply("send_message", {"message": "Replace the seals every 500 hours."})])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    assert [r["max_tokens"] for r in client.requests] == [320, 320, 1280, 320, 1280, 320, 320, 320]
    told = [s.result for s in result.steps if s.function == "(malformed reply)"]
    assert told[0].startswith("Failed: your reply was cut off at the 1280-token limit before its JSON ended")
    assert told[1].startswith("Failed: your reply was cut off at the 1280-token limit")
    assert told[2].startswith("Failed: your reply was cut off at the 320-token limit")
    assert "cut off" not in told[3] and "not a valid function call" in told[3]  # an unfinished reply that was not cut
    assert "send a shorter call" in shown(client.requests[3])


def test_the_wider_limit_never_takes_a_request_past_the_window(tiny_archive):
    """At 2048 tokens four times the 192-token reserve does not fit beside the prompt: the retry gets the room left."""
    client = ScriptedChatClient([json_reply(SEARCH, {"query": "seals replaced hours"}), cut_off(),
                                 json_reply("send_message", {"message": "Replace the seals every 500 hours."})])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings(context_window=2048))
    assert result.status == "ok"
    first, retry = client.requests[1], client.requests[2]
    prompt = TokenCounter().request(retry["messages"], retry["tools"], retry["response_format"])
    assert first["max_tokens"] == 192 and retry["messages"] == first["messages"]
    assert 192 < retry["max_tokens"] == min(4 * 192, 2048 - prompt)
