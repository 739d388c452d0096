"""The agent loop: one question, answered by paging archival memory through a bounded main context.

Each step sends the context (built within the token budget by `pipeline.agent.context.Context`) and runs
the function(s) the model calls, feeding results back, until `send_message` or a plain-text reply
delivers the answer. The loop continues after search and memory calls even when the model forgot
`request_heartbeat` (saying so in the trace); after `max_steps` one last step forces an answer.
`answer()` never raises for model or tool trouble: it returns `Answer(status="error")`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from pipeline.config import Settings
from pipeline.agent.functions import (FINAL, SPECS, Outcome, Retriever, Toolbox, describe_functions, step_format,
                                tool_schemas)
from pipeline.llm import ChatClient, ChatReply, LLMError, ToolCall
from pipeline.agent.context import Budget, Context, ContextTooSmall, cut_to_tokens
from pipeline.agent.core_memory import CoreMemory
from pipeline.agent.recall import Recall
from pipeline.agent.session import Session
from pipeline.agent.tokens import TokenCounter
from pipeline.types import Answer, Citation, Step

__all__ = ["Retriever", "answer", "system_prompt"]

_PROMPT = """You are pagefault, a careful document analyst. You answer questions about a document archive \
far larger than what you can see at once, by searching it step by step.

Your memory:
- The archive (archival memory) holds the documents, split into chunks. You see it only through \
archival_memory_search, one page of results at a time; each result says how many matches exist in total and \
which page you are on, and each chunk has a chunk_id, a source file and a page.
- Working memory (below) is always visible: `task` is the question, `notes` is where you keep findings. It \
survives when old messages are evicted.
- Older messages are moved to recall storage when the context fills up (conversation_search reads them) and \
replaced by a summary. When you see a memory-pressure alert, save your findings to `notes` first.

How to work:
1. Search with specific queries. If the answer may be on a later page, ask for the next page; try other words.
2. Keep key facts, with their chunk ids and sources, in `notes` (core_memory_append).
3. Answer with send_message, using only text you retrieved, and put the chunk ids you relied on in `citations`.
4. If the archive does not contain the answer after a reasonable search, say plainly that the documents do \
not answer it. Never guess, and never cite a chunk you have not seen in search results.
Set request_heartbeat=true on every call except send_message, so that you keep working."""

_TOOLS_MODE = "Call exactly one function per step."
_JSON_MODE = """Each reply must be exactly one JSON object and nothing else:
{"function": "<function name>", "arguments": {<its arguments>}}
Functions:
"""

FORCE_ANSWER = ("[system] Step limit reached. Answer now with send_message, using only what you have "
                "retrieved; if you found nothing, say that the documents do not answer the question.")
EMPTY_REPLY = "[system] Your reply was empty. Call a function, or give your answer with send_message."


def system_prompt(tool_mode: str) -> str:
    """The agent's instructions for `tool_mode` ("tools" or "json")."""
    if tool_mode == "json":
        return f"{_PROMPT}\n\n{_JSON_MODE}{describe_functions()}"
    return f"{_PROMPT}\n{_TOOLS_MODE}"


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
        self.context = Context(system=system_prompt(settings.tool_mode), core=CoreMemory.for_window(settings.context_window),
                               budget=Budget.for_window(settings.context_window), counter=TokenCounter(),
                               recall=Recall(self.session.recall_path if self.session else None), log=log)
        self.context.load(state)
        self.toolbox = Toolbox(retriever, self.context, notes=list(state.get("notes", [])),
                               top_k=settings.top_k)
        self.context.queue_room(*self._request_shape(forced=False))  # fail early on a hopeless window
        self.result = Answer(question=question, answer="")
        self.steps_taken = 0

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

    def _request_shape(self, *, forced: bool) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
        only = [FINAL] if forced else None
        if self.json_mode:
            return None, step_format(only, kind=self.settings.response_format)
        return tool_schemas(only), None

    def _step(self, *, forced: bool) -> bool:
        """One request and the calls it makes; True once the question is answered."""
        self.steps_taken += 1
        tools, response_format = self._request_shape(forced=forced)
        messages = self.context.build(tools, response_format, self._summarize)
        estimate = self.context.counter.request(messages, tools, response_format)
        reply = self.client.complete(messages, tools=tools, response_format=response_format,
                                     max_tokens=self.context.budget.reply)
        self._count(reply)
        self.context.counter.observe(estimate, reply.prompt_tokens)
        calls = self._calls(reply)
        if calls is None:
            return False  # malformed reply, already fed back
        if not calls:
            return self._plain_answer(reply)
        done = False
        for index, call in enumerate(calls):
            if done:
                self._feed(call, Outcome.failed("not run: send_message already ended the question"), reply, index)
                continue
            outcome = self.toolbox.call(call.name, call.arguments)
            self._feed(call, outcome, reply, index)
            if outcome.final:
                done = self._deliver(outcome)
            elif outcome.ok and call.name in SPECS and not outcome.arguments.get("request_heartbeat"):
                self.log(f"  heartbeat not requested after {call.name}: continuing anyway")
        return done

    def _calls(self, reply: ChatReply) -> list[ToolCall] | None:
        """The function calls in `reply` ([] for a plain-text answer; None if malformed and fed back)."""
        content = (reply.content or "").strip()
        if reply.tool_calls and not self.json_mode:
            calls = [ToolCall(c.id or f"call_{self.steps_taken}_{i}", c.name, c.arguments)
                     for i, c in enumerate(reply.tool_calls)]
            limit = self.context.queue_room(*self._request_shape(forced=False)) // (4 * len(calls))
            self.context.append({"role": "assistant", "content": reply.content, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": self._kept_arguments(c.arguments, limit)}}
                for c in calls]})
            return calls
        if not content:
            self.context.append({"role": "assistant", "content": ""})
            self.context.append({"role": "user", "content": EMPTY_REPLY})
            self._record(Step("(empty reply)", {}, "Failed: empty reply", reply.prompt_tokens, reply.completion_tokens))
            return None
        if not _looks_like_json(content):
            return []
        self.context.append({"role": "assistant", "content": reply.content})
        try:
            obj = json.loads(_unfence(content))
            if not isinstance(obj, dict) or not isinstance(obj.get("function", obj.get("name")), str):
                raise ValueError('expected an object like {"function": "...", "arguments": {...}}')
            name = obj.get("function", obj.get("name"))
            arguments = obj.get("arguments", {})
            return [ToolCall(f"json_{self.steps_taken}", name, arguments if isinstance(arguments, str)
                             else json.dumps(arguments))]
        except ValueError as exc:  # json.JSONDecodeError included
            reason = f"your reply is not a valid function call: {exc}"
            self.context.append({"role": "user", "content": f"[function result]\n{Outcome.failed(reason).text}"})
            self._record(Step("(malformed reply)", {"raw": content[:200]}, f"Failed: {reason}",
                              reply.prompt_tokens, reply.completion_tokens))
            self.log(f"step {self.steps_taken}: malformed reply -> {reason}")
            return None

    def _kept_arguments(self, arguments: str, limit: int) -> str:
        """Arguments as sent back to the model in its own message: valid JSON, long strings cut to fit `limit`."""
        try:
            value = json.loads(arguments)
        except (json.JSONDecodeError, TypeError):
            return "{}"
        counter = self.context.counter
        if not isinstance(value, dict) or counter.text(arguments) <= limit:
            return arguments if isinstance(value, dict) else "{}"
        strings = [k for k, v in value.items() if isinstance(v, str)]
        share = max(16, limit // max(1, len(strings)) - 8)
        kept = {k: cut_to_tokens(v, share, counter, "argument") if k in strings else v for k, v in value.items()}
        text = json.dumps(kept, ensure_ascii=False)
        return text if counter.text(text) <= limit else "{}"

    def _feed(self, call: ToolCall, outcome: Outcome, reply: ChatReply, index: int) -> None:
        """Record the call and give its result to the model, cut to fit the context."""
        tools, response_format = self._request_shape(forced=False)
        limit = self.context.queue_room(tools, response_format) // 2
        text = cut_to_tokens(outcome.text, limit, self.context.counter)
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
        self.result.answer = args["message"]
        self.result.citations = self._citations(args["message"], args.get("citations") or [])
        return True

    def _plain_answer(self, reply: ChatReply) -> bool:
        content = (reply.content or "").strip()
        self.context.append({"role": "assistant", "content": content})
        self._record(Step("(plain reply)", {}, "answered without send_message",
                          reply.prompt_tokens, reply.completion_tokens))
        self.log(f"step {self.steps_taken}: plain-text reply taken as the answer")
        self.result.answer = content
        self.result.citations = self._citations(content, [])
        return True

    def _citations(self, message: str, cited: list[str]) -> list[Citation]:
        """Cited chunk ids (and retrieved ids mentioned in the text) that were really retrieved; others flagged."""
        mentioned = [cid for cid in self.toolbox.retrieved if cid in message]
        kept, dropped = [], []
        for cid in dict.fromkeys([*cited, *mentioned]):
            hit = self.toolbox.retrieved.get(cid)
            if hit is None:
                dropped.append(cid)
            else:
                kept.append(Citation(source=hit.source, page=hit.page, chunk_id=cid))
        if dropped:
            note = f"dropped {len(dropped)} citation(s) to chunks never retrieved in this run: {', '.join(dropped)}"
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
            self.session.save({**self.context.to_dict(), "notes": self.toolbox.notes})
        except OSError as exc:
            self._fail(f"could not save session to {self.session.directory}: {exc}")


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _unfence(text: str) -> str:
    match = _FENCE.match(text.strip())
    return match.group(1) if match else text


def _looks_like_json(text: str) -> bool:
    return _unfence(text).lstrip().startswith("{")
