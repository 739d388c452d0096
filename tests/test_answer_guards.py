"""Answers a small model sends that are not answers yet, held back with one line of feedback (real archive).

Each scripted model replays a failure the local 1.5B model showed on the demo at 8192 tokens (session 10):
an invented answer after a memory note and no search (q03), the question sent back as the answer (q04),
a decline while the answer stood first in its results (q11), and citations wrapped in hit headers (q04, q09, q19).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.agent.guards import closest_sentence, repeats_question
from pipeline.agent.loop import answer
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


def test_an_invented_answer_is_never_delivered_before_a_search_even_after_other_calls(tiny_archive):
    invented = json_reply("send_message", {"message": "The seals must be replaced after 50 operating hours.",
                                           "citations": ["1"]})
    note = json_reply("core_memory_append", {"name": "notes", "content": "Seals: 50 operating hours, chunk 1234567890"})
    client = ScriptedChatClient([note, invented, note, invented,
                                 json_reply(SEARCH, {"query": "seals replaced hours"}), answer_from_results])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "Replace the seals every 500 hours."
    assert result.grounded and [c.source for c in result.citations] == ["manual.pdf"]
    refused = [s.result for s in result.steps if s.function == "send_message"][:2]
    assert len(refused) == 2 and all("not delivered: you have not searched the documents" in r for r in refused)
    assert "Search first" in shown(client.requests[2]) and "Search first" in shown(client.requests[4])


def test_an_abstention_before_a_search_is_refused_once_then_delivered(tiny_archive):
    declined = json_reply("send_message", {"message": "The documents do not answer this."})
    note = json_reply("core_memory_append", {"name": "notes", "content": "nothing yet"})
    client = ScriptedChatClient([declined, note, declined])
    result = answer(SEALS, retriever=tiny_archive, client=client, settings=settings())
    assert result.status == "ok" and result.answer == "The documents do not answer this."


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
