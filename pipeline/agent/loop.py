"""The agent loop: one question, answered by paging archival memory through a bounded main context.

Each step sends the context (built within the token budget by `pipeline.agent.context.Context`) and runs
the function(s) the model calls, feeding results back, until `send_message` or a plain-text reply
delivers the answer. Every call but `send_message` gets another step (MemGPT's `request_heartbeat` is
accepted and not needed); after `max_steps` one last step forces an answer.
`answer()` never raises for model or tool trouble: it returns `Answer(status="error")`.
"""

from __future__ import annotations

from typing import Any, Callable

from pipeline.config import Settings
from pipeline.agent import citations
from pipeline.agent.context import Budget, Context, ContextTooSmall, cut_to_tokens
from pipeline.agent.core_memory import CoreMemory
from pipeline.agent.functions import FINAL, Outcome, Retriever, Toolbox, describe_functions, step_format, tool_schemas
from pipeline.agent.grounding import Grounding, check, explain, is_abstention, look_again_note, strict_abstention
from pipeline.agent.guards import closest_sentence
from pipeline.agent.recall import Recall
from pipeline.agent.replies import (Calls, Empty, Malformed, ParsedReply, PlainText, kept_arguments,
                                     parse_reply)
from pipeline.agent.session import Session
from pipeline.agent.tokens import TokenCounter
from pipeline.llm import ChatClient, ChatReply, LLMError, ToolCall
from pipeline.types import Answer, Citation, Step

__all__ = ["Retriever", "answer", "context_budget", "request_shape", "system_prompt"]

_INTRO = """You are pagefault, a careful document analyst. You answer questions about a document archive \
far larger than what you can see at once, by searching it step by step."""

# json mode only: there no schemas are sent, and small local models (the ones that use it) keep to the task
# better with their memory described and the heartbeat asked for (measured: without the heartbeat sentence
# the 1.5B model answered before searching; the runner continues after every call either way)
_MEMORY = """Your memory:
- The archive (archival memory) holds the documents as chunks, each with a chunk_id, a source file and a \
page; you see it only through archival_memory_search, one page of results at a time.
- Working memory (below) is always visible: `task` is the question, `notes` holds your findings. It survives \
when old messages are evicted to recall storage (conversation_search reads them).
Set request_heartbeat=true on every call except send_message, so that you keep working."""

_RULES = """How to work:
1. Search with specific queries. If the answer may be on a later page, ask for the next page; try other words.
2. Keep key facts, with their chunk ids and sources, in `notes` (core_memory_append).
3. Answer with send_message, using only text you retrieved, and put the chunk ids you relied on in `citations`.
4. If the archive does not contain the answer after a reasonable search, say plainly that the documents do \
not answer it. Never guess, and never cite a chunk you have not seen in search results.
A [system alert] is about memory, never the task or an answer: do what it says, then continue the task."""

_TOOLS_MODE = "Call exactly one function per step."
_JSON_MODE = """Each reply must be exactly one JSON object and nothing else:
{"function": "<function name>", "arguments": {<its arguments>}}
Functions:
"""

FORCE_ANSWER = ("[system] Step limit reached. Answer now with send_message, using only what you have "
                "retrieved; if you found nothing, say that the documents do not answer the question.")
# measured (session 13): the 1.5B model sent one note, a retrieved chunk copied whole, cut off at the 320-token
# reply reserve eleven times over; asked again with room to end it, such a call completes (the tools cut notes)
WIDER_REPLY = 4  # a cut-off reply is asked again with this many times the reply reserve, where the window has room
WIDENED_RETRIES = 2  # per question
EMPTY_REPLY = "[system] Your reply was empty. Call a function, or give your answer with send_message."


def system_prompt(tool_mode: str) -> str:
    """The agent's instructions for `tool_mode` ("tools" or "json")."""
    if tool_mode == "json":
        return f"{_INTRO}\n\n{_MEMORY}\n\n{_RULES}\n{_JSON_MODE}{describe_functions()}"
    return f"{_INTRO}\n\n{_RULES}\n{_TOOLS_MODE}"


def answer(question: str, *, retriever: Retriever, client: ChatClient, settings: Settings,
           session: str | None = None, trace: Callable[[str], None] | None = None) -> Answer:
    """Answer `question` from the archive behind `retriever`; `session` continues a named conversation."""
    log = trace or (lambda _: None)
    if settings.tool_mode not in ("tools", "json"):
        return Answer(question, "", status="error", error=f"unknown tool mode {settings.tool_mode!r}: use tools or json")
    try:
        run = _Run(question, retriever, client, settings, session, log)
    except (ValueError, OSError) as exc:  # bad session name, unreadable session state, window too small
        return Answer(question, "", status="error", error=str(exc))
    return run.run()


Shape = tuple[list[dict[str, Any]] | None, dict[str, Any] | None]  # (tools, response_format) of a request


def request_shape(settings: Settings, *, forced: bool = False) -> Shape:
    """(tools, response_format) of an agent step: every function, or only send_message when `forced`."""
    only = [FINAL] if forced else None
    if settings.tool_mode == "json":
        return None, step_format(only, kind=settings.response_format)
    return tool_schemas(only), None


def new_context(settings: Settings, recall: Recall, log: Callable[[str], None] = lambda _: None) -> Context:
    """An empty main context for `settings`: instructions, working memory and budget sized to its window."""
    return Context(system=system_prompt(settings.tool_mode), core=CoreMemory.for_window(settings.context_window),
                   budget=Budget.for_window(settings.context_window), counter=TokenCounter(), recall=recall, log=log)


def context_budget(settings: Settings) -> dict[str, int]:
    """Tokens each fixed part of the context takes at `settings.context_window`, and `queue`: what is left."""
    parts = new_context(settings, Recall()).fixed_parts(*request_shape(settings))
    return {**parts, "queue": settings.context_window - sum(parts.values())}


class _Run:
    def __init__(self, question: str, retriever: Retriever, client: ChatClient, settings: Settings,
                 session: str | None, log: Callable[[str], None]) -> None:
        self.question = question
        self.client = client
        self.settings = settings
        self.log = log
        self.json_mode = settings.tool_mode == "json"
        self.session = Session.for_store(settings.store, session) if session else None
        state = self.session.open() if self.session else {}
        self.context = new_context(settings, Recall(self.session.recall_path if self.session else None), log)
        self.context.load(state)
        self.toolbox = Toolbox(retriever, self.context, room=self._result_room, top_k=settings.top_k,
                               question=question)
        self.context.queue_room(*self._request_shape(forced=False))  # fail early on a hopeless window
        self.result = Answer(question=question, answer="")
        self.steps_taken = 0
        self.looked_again = False  # the grounding check's one more look has been given
        self.reread = False  # an abstention was sent back once to a chunk that matches the question closely
        self.widened = 0  # cut-off replies asked again with a wider reply limit (at most WIDENED_RETRIES)

    # -- driving

    def run(self) -> Answer:
        self.context.core.set("task", self.question)
        self.context.append({"role": "user", "content": self.question})
        try:
            while self.steps_taken < self.settings.max_steps:
                if self._step(forced=False):
                    return self.result
            self.log(f"step limit ({self.settings.max_steps}) reached: forcing an answer")
            self.context.append({"role": "user", "content": FORCE_ANSWER})
            if self._step(forced=True):
                return self.result
            return self._fail("step limit: no answer after the forced final step")
        except LLMError as exc:
            return self._fail(f"LLM error: {exc}")
        except ContextTooSmall as exc:
            return self._fail(str(exc))
        except OSError as exc:  # recall storage of a session could not be written
            return self._fail(f"session storage failed: {exc}")
        finally:
            self._save()

    def _request_shape(self, *, forced: bool) -> Shape:
        return request_shape(self.settings, forced=forced)

    def _step(self, *, forced: bool) -> bool:
        """One request and the calls it makes; True once the question is answered."""
        self.steps_taken += 1
        tools, response_format = self._request_shape(forced=forced)
        messages = self.context.build(tools, response_format, self._summarize)
        estimate = self.context.counter.request(messages, tools, response_format)
        reply, parsed, limit = self._complete(messages, tools, response_format, estimate)
        if isinstance(parsed, Empty):
            self.context.append({"role": "assistant", "content": ""})
            self.context.append({"role": "user", "content": EMPTY_REPLY})
            self._record(Step("(empty reply)", {}, "Failed: empty reply", reply.prompt_tokens, reply.completion_tokens))
            return False
        if isinstance(parsed, Malformed):
            reason = parsed.reason
            if reply.finish_reason == "length":  # measured: the 1.5B model's long notes ran past the reply reserve
                reason = (f"your reply was cut off at the {limit}-token limit before its JSON "
                          "ended; send a shorter call (a note is one or two sentences: the fact and its chunk id)")
            self.context.append({"role": "assistant", "content": reply.content})
            self.context.append({"role": "user", "content": f"[function result]\n{Outcome.failed(reason).text}"})
            self._record(Step("(malformed reply)", {"raw": parsed.raw[:200]}, f"Failed: {reason}",
                              reply.prompt_tokens, reply.completion_tokens))
            self.log(f"step {self.steps_taken}: malformed reply -> {reason}")
            return False
        if isinstance(parsed, PlainText):
            return self._plain_answer(reply, forced=forced)
        self._append_calls(parsed, reply)
        done = False
        for index, call in enumerate(parsed.calls):
            if done:
                self._feed(call, Outcome.failed("not run: send_message already ended the question"), reply, index)
                continue
            outcome = self.toolbox.call(call.name, call.arguments)
            if outcome.final and (held := self._hold_back(outcome.arguments["message"],
                                                          outcome.arguments.get("citations") or [], forced)):
                outcome = Outcome(False, f"status: Failed\nreason: {held[0]}", held[1], outcome.arguments)
            self._feed(call, outcome, reply, index)
            if outcome.final:
                done = self._deliver(outcome)
        return done

    def _complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  response_format: dict[str, Any] | None, estimate: int) -> tuple[ChatReply, ParsedReply, int]:
        """The model's reply to one request (prompt `estimate` tokens), what it asks for, and the reply limit it was
        given: a reply cut off at the reserve before its JSON ended is asked again with a wider limit where one fits."""
        limit = self.context.budget.reply
        reply = self.client.complete(messages, tools=tools, response_format=response_format, max_tokens=limit)
        self._count(reply)
        self.context.counter.observe(estimate, reply.prompt_tokens)
        parsed = parse_reply(reply, json_mode=self.json_mode, step=self.steps_taken)
        cut = isinstance(parsed, Malformed) and reply.finish_reason == "length"
        if cut and (wider := self._wider_limit(max(estimate, reply.prompt_tokens))):
            self.log(f"step {self.steps_taken}: reply cut off at the {limit}-token limit: asked again with {wider}")
            limit, self.widened = wider, self.widened + 1
            reply = self.client.complete(messages, tools=tools, response_format=response_format, max_tokens=limit)
            self._count(reply)
            parsed = parse_reply(reply, json_mode=self.json_mode, step=self.steps_taken)
        return reply, parsed, limit

    def _wider_limit(self, prompt: int) -> int | None:
        """The reply limit for asking a cut-off reply again: WIDER_REPLY times the reserve, within the room a
        `prompt` of that many tokens leaves in the window; None when no wider limit fits or the retries are spent."""
        budget = self.context.budget
        wider = min(WIDER_REPLY * budget.reply, budget.window - prompt)
        return wider if wider > budget.reply and self.widened < WIDENED_RETRIES else None

    def _append_calls(self, parsed: Calls, reply: ChatReply) -> None:
        """The model's own call message, as the next requests will show it."""
        if not parsed.native:
            self.context.append({"role": "assistant", "content": reply.content})
            return
        limit = self.context.queue_room(*self._request_shape(forced=False)) // (4 * len(parsed.calls))
        self.context.append({"role": "assistant", "content": reply.content, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": kept_arguments(c.arguments, limit, self.context.counter)}}
            for c in parsed.calls]})

    def _result_room(self) -> int:
        return self.context.result_room(*self._request_shape(forced=False))

    def _feed(self, call: ToolCall, outcome: Outcome, reply: ChatReply, index: int) -> None:
        """Record the call and give its result to the model, cut to fit the context."""
        text = cut_to_tokens(outcome.text, self._result_room(), self.context.counter)
        if self.json_mode or not reply.tool_calls:
            self.context.append({"role": "user", "content": f"[function result: {call.name}]\n{text}"})
        else:
            self.context.append({"role": "tool", "tool_call_id": call.id, "content": text})
        arguments = outcome.arguments or {"raw": call.arguments[:200]}
        self._record(Step(call.name, arguments, outcome.summary,
                          reply.prompt_tokens if index == 0 else 0, reply.completion_tokens if index == 0 else 0))
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items() if k != "request_heartbeat")
        self.log(f"step {self.steps_taken}: {call.name}({shown[:160]}) -> {outcome.summary}")

    # -- finishing

    def _deliver(self, outcome: Outcome) -> bool:
        args = outcome.arguments
        self._finish(args["message"], args.get("citations") or [])
        return True

    def _plain_answer(self, reply: ChatReply, *, forced: bool) -> bool:
        content = (reply.content or "").strip()
        self.context.append({"role": "assistant", "content": content})
        if refused := self.toolbox.refusal(content):
            text = cut_to_tokens(refused.text, self._result_room(), self.context.counter)
            self.context.append({"role": "user", "content": f"[system] {text}"})
            self._record(Step("(plain reply)", {}, refused.summary, reply.prompt_tokens, reply.completion_tokens))
            self.log(f"step {self.steps_taken}: plain-text reply not taken as the answer: {refused.summary}")
            return False
        self._record(Step("(plain reply)", {}, "answered without send_message",
                          reply.prompt_tokens, reply.completion_tokens))
        if held := self._hold_back(content, [], forced):
            self.context.append({"role": "user", "content": held[0]})
            return False
        self.log(f"step {self.steps_taken}: plain-text reply taken as the answer")
        self._finish(content, [])
        return True

    def _ground(self, message: str, cited: list[str]) -> Grounding:
        return check(message, list(self.toolbox.retrieved.values()), question=self.question, cited=cited)

    def _hold_back(self, message: str, cited: list[str], forced: bool) -> tuple[str, str] | None:
        """(note for the model, summary) when an answer is held back for one more look while a step is left:
        an abstention while a shown chunk matches the question closely, or claims in no retrieved chunk."""
        if forced or self.steps_taken >= self.settings.max_steps:
            return None
        if note := self._reread_note(message):
            return note, "held back: declined while a chunk shown matches the question"
        if note := self._look_again(message, cited):
            return note, "held back: unsupported claims"
        return None

    def _reread_note(self, message: str) -> str | None:
        """The note that sends an abstention back, once, to the shown sentence that matches the question best."""
        if self.reread or not is_abstention(message):
            return None
        close = closest_sentence(self.question, list(self.toolbox.retrieved.values()))
        if close is None:
            return None
        self.reread = True
        hit, sentence = close
        self._record(Step("(abstention check)", {"answer": message, "chunk_id": hit.chunk_id, "sentence": sentence},
                          "held back: declined while a chunk shown matches the question; one more look"))
        self.log(f"  abstention check: chunk {hit.chunk_id} matches the question closely: one more look")
        return (f"[system] Your answer was not delivered. You say the documents do not answer, but chunk_id "
                f"{hit.chunk_id} ({hit.source}) says: \"{sentence}\" If that answers the question, answer from it "
                "and cite it; if it does not, send your answer again.")

    def _look_again(self, message: str, cited: list[str]) -> str | None:
        """The note that holds back an answer with unsupported claims, once; else None."""
        if self.looked_again:
            return None
        verdict = self._ground(message, cited)
        if verdict.grounded:
            return None
        self.looked_again = True
        summary = f"held back: {len(verdict.unsupported)} claim(s) not verified; one more look"
        held = {"answer": message, "unsupported": verdict.unsupported}
        self._record(Step("(grounding check)", {**held, "mismatched": verdict.reasons} if verdict.reasons else held,
                          summary))
        self.log(f"  grounding: {explain(verdict.unsupported, verdict.reasons)}: one more look")
        note = look_again_note(verdict.unsupported, verdict.reasons)
        if close := closest_sentence(self.question, list(self.toolbox.retrieved.values())):
            note += f" The closest sentence you were shown, chunk_id {close[0].chunk_id} ({close[0].source}): \"{close[1]}\""
        return note

    def _finish(self, message: str, cited: list[str]) -> None:
        """Record the answer with its grounding; citations inferred when none; --strict declines if ungrounded."""
        kept = self._citations(message, cited)
        verdict = self._ground(message, [c.chunk_id for c in kept])
        if not kept:
            kept = [Citation.of(self.toolbox.retrieved[cid], inferred=True) for cid in verdict.supporting]
        self.result.grounded, self.result.unsupported = verdict.grounded, verdict.unsupported
        self.result.mismatched = verdict.reasons
        if not verdict.grounded:
            self.log(f"  grounding: still unsupported: {explain(verdict.unsupported, verdict.reasons)}")
            if self.settings.strict:
                self.result.withheld, message, kept = message, strict_abstention(verdict.unsupported,
                                                                                 verdict.reasons), []
        self.result.answer, self.result.citations = message, kept

    def _citations(self, message: str, cited: list[str]) -> list[Citation]:
        """Citations to chunks really retrieved, found wherever their ids appear; other strings flagged."""
        kept, dropped, mended = citations.check(message, cited, self.toolbox.retrieved)
        if mended:
            note = f"took {len(mended)} mangled citation(s) for the one retrieved chunk each can stand for"
            self._record(Step("(citation check)", {"mended": mended}, note))
            self.log(f"  {note}: {', '.join(f'{k} -> {v}' for k, v in mended.items())}")
        if dropped:
            note = f"dropped {len(dropped)} citation(s) naming no chunk retrieved in this run: {', '.join(dropped)}"
            self._record(Step("(citation check)", {"dropped": dropped}, note))
            self.log(f"  {note}")
        return kept

    def _fail(self, reason: str) -> Answer:
        self.result.status = "error"
        self.result.error = reason
        self.log(f"error: {reason}")
        return self.result

    # -- bookkeeping

    def _summarize(self, messages: list[dict[str, Any]], max_tokens: int) -> str | None:
        try:
            reply = self.client.complete(messages, max_tokens=max_tokens)
        except LLMError as exc:
            self.log(f"  summary call failed ({exc}); keeping a mechanical summary")
            return None
        self._count(reply)
        return reply.content

    def _count(self, reply: ChatReply) -> None:
        self.result.usage["prompt_tokens"] += reply.prompt_tokens
        self.result.usage["completion_tokens"] += reply.completion_tokens

    def _record(self, step: Step) -> None:
        self.result.steps.append(step)

    def _save(self) -> None:
        if self.session is None:
            return
        try:
            self.session.save(self.context.to_dict())
        except OSError as exc:
            self._fail(f"could not save session to {self.session.directory}: {exc}")

