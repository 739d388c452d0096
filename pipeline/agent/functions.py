"""The memory functions the agent calls: model-facing schemas and their implementations.

`Toolbox.call(name, arguments)` never raises: unknown functions, malformed JSON, wrong argument types
and failing searches all come back as `status: Failed` results that the model reads and recovers from.
Search results are paged to fit the room a function result has in the context (`pipeline.agent.paging`);
asking again for a page already shown returns the next unseen page, saying so, or, once every page was
shown, a hint naming other words to try.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pipeline.agent.context import Context, echoes_alert
from pipeline.agent.core_memory import MemoryEditError
from pipeline.agent.grounding import extract_claims, is_abstention
from pipeline.agent.guards import repeats_question
from pipeline.agent.paging import PAGE_SIZE, Ranking, fit_page, normalize_query, page_count, page_window, per_page_for
from pipeline.types import Hit, SearchResult

HIT_CHARS = 1500  # longest chunk text shown per hit
RECALL_CHARS = 600  # longest message text shown per conversation_search hit
RANKED = 50  # hits fetched when a query is first asked (more when the model pages past them)
HEAD_TOKENS = 96  # room kept for a result page's header lines when sizing pages
# measured (q07, session 14): the 1.5B model repeated one search eleven times and was served pages 2-9 in turn,
# its answer on page 0; from the third page of a repeated search the page also says to answer or reword
HINT_AFTER_PAGES = 3


class Retriever(Protocol):
    """What the agent needs from archival memory (the Archive's `search`)."""

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult: ...


# request_heartbeat is MemGPT's way to ask for another step; the runner continues after every call but
# send_message, so the schemas leave it out (saving tokens in every request) and calls may still send it.
_HEARTBEAT = {"type": "boolean"}
_PAGE = {"type": "integer"}

# name -> (description for the model, properties, required)
SPECS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "archival_memory_search": (
        "Search the documents. Shows one page of chunks (chunk_id, source, page) and the page count; "
        "page 0 is the best. For more: the next page, or other words.",
        {"query": {"type": "string"}, "page": _PAGE}, ["query"]),
    "core_memory_append": (
        "Append to working memory block `notes` (findings: fact, chunk id, source) or `task`.",
        {"name": {"type": "string"}, "content": {"type": "string"}}, ["name", "content"]),
    "core_memory_replace": (
        "Replace exact text in a memory block (empty new_content deletes it).",
        {"name": {"type": "string"}, "old_content": {"type": "string"}, "new_content": {"type": "string"}},
        ["name", "old_content", "new_content"]),
    "conversation_search": (
        "Search this conversation, evicted messages included. Shows one page of matches.",
        {"query": {"type": "string"}, "page": _PAGE}, ["query"]),
    "send_message": (
        "Give the final answer, citing the chunk ids it rests on.",
        {"message": {"type": "string"}, "citations": {"type": "array", "items": {"type": "string"}}},
        ["message"]),
}
FINAL = "send_message"
_PY_TYPES = {"string": str, "integer": int, "boolean": bool, "array": list}


def tool_schemas(only: list[str] | None = None) -> list[dict[str, Any]]:
    """OpenAI `tools` for the functions (all, or those named in `only`)."""
    return [{"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required}}}
        for name, (description, props, required) in SPECS.items() if only is None or name in only]


def step_format(only: list[str] | None = None, *, kind: str = "json_schema") -> dict[str, Any]:
    """`response_format` for json tool mode: one object naming a function and its arguments.

    `kind` "json_object" puts the schema beside the type, the form llama-cpp-python's server turns into a
    grammar: there each function's arguments are spelled out, at no prompt cost. "json_schema" is OpenAI's
    form, counted as prompt tokens: there the arguments are any object (the system prompt lists them).
    """
    names = [n for n in SPECS if only is None or n in only]
    if kind not in ("json_object", "json_schema"):
        raise ValueError(f"unknown response format {kind!r}: use json_schema or json_object")
    arguments: dict[str, Any] = {"type": "object"}
    if kind == "json_object":
        arguments = {"anyOf": [{"type": "object", "properties": SPECS[n][1], "required": SPECS[n][2]} for n in names]}
    schema = {"type": "object", "properties": {"function": {"type": "string", "enum": names}, "arguments": arguments},
              "required": ["function", "arguments"]}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "agent_step", "schema": schema}}


# json mode's function list is read by small local models; they were measured keeping to the task (searching
# before answering) with these fuller descriptions and the heartbeat listed, and not with the schemas' short ones
_JSON_DESCRIPTIONS = {
    "archival_memory_search": (
        "Search the document archive (keyword + semantic). Returns page 0, the best matches, unless you ask "
        "for a later page, and says how many pages exist. If the answer may be on a later page, call again "
        "with the same query and the next page number."),
    "core_memory_append": (
        "Append text to a block of your working memory (always visible, kept when old messages are evicted). "
        "Use the `notes` block for findings: the fact, its chunk id and source."),
    "core_memory_replace": SPECS["core_memory_replace"][0],
    "conversation_search": (
        "Search this conversation's full history, including messages evicted from your context (recall "
        "storage). Returns one page of matching messages."),
    "send_message": (
        "Deliver your final answer (only from text you retrieved); this ends the question. List the chunk ids "
        "you relied on in `citations`."),
}


def describe_functions() -> str:
    """The functions as text, for the system prompt in json tool mode (no `tools` are sent there):
    `- name(arg: string, page: integer (optional), request_heartbeat: boolean): description`."""
    lines = []
    for name, (_, props, required) in SPECS.items():
        params = [f"{p}: {spec['type']}{'' if p in required else ' (optional)'}" for p, spec in props.items()]
        params += [] if name == FINAL else ["request_heartbeat: boolean"]
        lines.append(f"- {name}({', '.join(params)}): {_JSON_DESCRIPTIONS[name]}")
    return "\n".join(lines)


def parse_arguments(raw: str | dict[str, Any]) -> dict[str, Any]:
    """Arguments as a dict; `ValueError` (shown to the model) when they are not a JSON object."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments are not valid JSON ({exc.msg} at position {exc.pos}); "
                         "send a JSON object such as {\"query\": \"...\"}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def validate(name: str, args: dict[str, Any]) -> None:
    """`ValueError` naming the problem when `args` do not match the function's parameters."""
    _, props, required = SPECS[name]
    missing = [p for p in required if p not in args and p != "request_heartbeat"]
    if missing:
        raise ValueError(f"missing argument(s): {', '.join(missing)}")
    unknown = [p for p in args if p not in props and p != "request_heartbeat"]
    if unknown:
        raise ValueError(f"unknown argument(s): {', '.join(unknown)}; {name} takes {', '.join(props)}")
    for param, value in args.items():
        expected = props.get(param, _HEARTBEAT)["type"]
        ok = isinstance(value, _PY_TYPES[expected]) and not (expected == "integer" and isinstance(value, bool))
        if ok and expected == "array":
            ok = all(isinstance(item, str) for item in value)
        if not ok:
            raise ValueError(f"argument {param!r} must be {'an' if expected[0] in 'ai' else 'a'} {expected}, "
                             f"got {json.dumps(value)[:80]}")
        if param == "page" and value < 0:
            raise ValueError("page must be 0 or more")


@dataclass
class Outcome:
    """What a function call produced: the text the model reads, a one-line summary for the trace."""

    ok: bool
    text: str
    summary: str
    arguments: dict[str, Any] = field(default_factory=dict)
    final: bool = False

    @classmethod
    def failed(cls, reason: str, arguments: dict[str, Any] | None = None) -> "Outcome":
        return cls(False, f"status: Failed\nreason: {reason}", f"Failed: {reason}", arguments or {})


def _hit_label(hit: Hit) -> str:
    if hit.page is None:
        where = ""
    elif hit.page_end and hit.page_end != hit.page:
        where = f" | pages: {hit.page}-{hit.page_end}"
    else:
        where = f" | page: {hit.page}"
    heading = f" | heading: {hit.heading}" if hit.heading else ""
    ocr = ""
    if hit.ocr:
        ocr = (f" | read by OCR, low confidence {hit.ocr_confidence:.2f}: words may be misread" if hit.low_confidence
               else " | read by OCR")
    return f"chunk_id: {hit.chunk_id} | source: {hit.source}{where}{heading}{ocr}"


def hit_entry(rank: int, hit: Hit) -> tuple[str, str]:
    """A hit as a search page shows it: (`[rank] chunk_id: ... | source: ... | page: ...`, its text)."""
    text = hit.text if len(hit.text) <= HIT_CHARS else hit.text[:HIT_CHARS] + " [...]"
    return f"[{rank}] {_hit_label(hit)}", text


_STOPWORDS = frozenset("what which when where does with that this from have there their about into they were been "
                       "many much after before should would could than then them your will shall".split())


def _untried_words(task: str, queries: list[str], limit: int = 4) -> list[str]:
    """Words of the question that no search so far used: the first suggestions for other words to try."""
    used = {w for q in queries for w in re.findall(r"\w+", q.lower())}
    words = [w for w in re.findall(r"[A-Za-z][\w-]{3,}", task) if w.lower() not in used | _STOPWORDS]
    return list(dict.fromkeys(words))[:limit]


@dataclass
class _Page:
    """Which page of a ranking to show: `number`, and a note when it is not the page that was asked for."""

    number: int
    note: str = ""


class Toolbox:
    """The functions bound to one run: the archive and the context (working memory, recall storage).

    `room()` is how many tokens one function result may take in the context now. Page sizes are fixed
    from it at the first search of each kind, so page N of a query means the same results all question.
    `question` is what this run answers (an answer that only repeats it is refused).
    """

    def __init__(self, retriever: Retriever, context: Context, *, room: Callable[[], int], top_k: int = 5,
                 question: str = "") -> None:
        self.retriever = retriever
        self.question = question
        self.context = context
        self.room = room
        self.top_k = top_k
        self.retrieved: dict[str, Hit] = {}  # every chunk shown to the model in this run
        self.archival: dict[str, Ranking[Hit]] = {}  # normalized query -> its ranking, as first fetched
        self.recall: dict[str, Ranking[int]] = {}  # normalized query -> indices into recall storage
        self.hits_per_page: int | None = None
        self.messages_per_page: int | None = None
        self.searched = False  # an archival search showed a page (or that nothing matched) in this run
        self.calls = 0  # calls made before the current one
        self.failed: set[tuple[str, str]] = set()  # (function, arguments) of the calls that failed

    def call(self, name: str, raw_arguments: str | dict[str, Any]) -> Outcome:
        """Run one call. The same call failing again gets a pointer elsewhere (small models repeated a failing
        memory edit step after step), unless its failure already gives one, as a repeated search's does."""
        try:
            outcome = self._dispatch(name, raw_arguments)
        finally:
            self.calls += 1
        if not outcome.ok:
            key = (name, json.dumps(outcome.arguments or raw_arguments, sort_keys=True, default=str))
            if key in self.failed and (elsewhere := self._other_words()) not in outcome.text:
                return Outcome.failed(f"this exact call failed before ({outcome.summary[len('Failed: '):]}); do not "
                                      f"repeat it. {elsewhere}", outcome.arguments)
            self.failed.add(key)
        return outcome

    def _dispatch(self, name: str, raw_arguments: str | dict[str, Any]) -> Outcome:
        if name not in SPECS:
            return Outcome.failed(f"unknown function {name!r}; available: {', '.join(SPECS)}")
        try:
            args = parse_arguments(raw_arguments)
            validate(name, args)
        except ValueError as exc:
            return Outcome.failed(str(exc))
        try:
            outcome = getattr(self, name)(**{k: v for k, v in args.items() if k != "request_heartbeat"})
        except MemoryEditError as exc:
            outcome = Outcome.failed(str(exc))
        except Exception as exc:  # a failing archive or store must not end the run: the model hears why
            outcome = Outcome.failed(f"{name} failed: {type(exc).__name__}: {exc}")
        outcome.arguments = args
        return outcome

    # -- the functions; their model-facing descriptions are in SPECS

    def archival_memory_search(self, query: str, page: int = 0) -> Outcome:
        return self._archival(query, page)

    def _archival(self, query: str, page: int, status: str = "status: OK\n") -> Outcome:
        """A page of `query`'s ranking, its header led by `status` (the line a search the system ran says why)."""
        key = normalize_query(query)
        if key not in self.archival:
            result = self.retriever.search(query, mode="hybrid", top_k=RANKED, page=0)
            self.archival[key] = Ranking(list(result.hits), result.total, exact=result.total_exact)
        ranking = self.archival[key]
        if not ranking.total:
            self.searched = True
            return self._nothing(query, "documents", repeated=0 in ranking.shown, ranking=ranking, status=status)
        if self.hits_per_page is None:
            costs = [self.context.counter.text("\n".join(hit_entry(0, h))) for h in ranking.items[:self.top_k]]
            self.hits_per_page = per_page_for(self.room() - HEAD_TOKENS, costs, preferred=self.top_k)
        per_page = self.hits_per_page
        self._fetch(query, ranking, (page + 1) * per_page)
        chosen = self._choose(query, "results", ranking, page, per_page)
        if isinstance(chosen, Outcome):
            return chosen
        self._fetch(query, ranking, (chosen.number + 1) * per_page)
        hits = ranking.page(chosen.number, per_page)
        first = chosen.number * per_page + 1
        entries = [hit_entry(first + offset, hit) for offset, hit in enumerate(hits)]
        for hit in hits:
            self.retrieved[hit.chunk_id] = hit
        window = page_window(ranking.total, chosen.number, per_page, exact=ranking.exact)
        head = f"{status}{chosen.note}{window} for {query!r}. {self._next(ranking, chosen.number, per_page)}"
        text = fit_page(head, entries, "", self.room(), self.context.counter)
        self.searched = True
        return Outcome(True, text, f"OK: {chosen.note}{window}")

    def core_memory_append(self, name: str, content: str) -> Outcome:
        if echoes_alert(content):
            raise MemoryEditError(f"that is the memory alert, not a finding; nothing was saved. {self.task_line()}")
        value, cut = self.context.core.append(name, content)
        block = self.context.core.blocks[name]
        note = f" It was full: the last {cut} characters of your note were left out." if cut else ""
        return Outcome(True, f"status: OK\nBlock {name!r} now holds {len(value)}/{block.limit} characters.{note}",
                       f"OK: {name} {len(value)}/{block.limit} chars" + (f", {cut} cut" if cut else ""))

    def core_memory_replace(self, name: str, old_content: str, new_content: str) -> Outcome:
        value = self.context.core.replace(name, old_content, new_content)
        block = self.context.core.blocks[name]
        return Outcome(True, f"status: OK\nBlock {name!r} now holds {len(value)}/{block.limit} characters.",
                       f"OK: {name} {len(value)}/{block.limit} chars")

    def conversation_search(self, query: str, page: int = 0) -> Outcome:
        key = normalize_query(query)
        if key not in self.recall:
            order = self.context.recall.rank(query)
            self.recall[key] = Ranking(order, len(order))
        ranking = self.recall[key]
        if not ranking.total:
            return self._nothing(query, "earlier messages", repeated=0 in ranking.shown, ranking=ranking)
        messages = self.context.recall.messages
        if self.messages_per_page is None:
            costs = [self.context.counter.text("\n".join(self._message_entry(messages[i])))
                     for i in ranking.items[:PAGE_SIZE]]
            self.messages_per_page = per_page_for(self.room() - HEAD_TOKENS, costs, preferred=PAGE_SIZE)
        per_page = self.messages_per_page
        chosen = self._choose(query, "matches", ranking, page, per_page)
        if isinstance(chosen, Outcome):
            return chosen
        entries = [self._message_entry(messages[i]) for i in ranking.page(chosen.number, per_page)]
        window = page_window(ranking.total, chosen.number, per_page, exact=ranking.exact)
        head = f"status: OK\n{chosen.note}{window} for {query!r}. {self._next(ranking, chosen.number, per_page)}"
        return Outcome(True, fit_page(head, entries, "", self.room(), self.context.counter),
                       f"OK: {chosen.note}{window}")

    def send_message(self, message: str, citations: list[str] | None = None) -> Outcome:
        return self.refusal(message) or Outcome(True, "status: OK\nMessage delivered.",
                                                f"answered ({len(citations or [])} citations)", final=True)

    def refusal(self, answer: str) -> Outcome | None:
        """Why `answer` is not delivered (a failed outcome: the text the model reads), or None: it repeats a memory
        alert; it comes before any archival search and asserts a checkable claim, a number or a name, or it is the
        question's very first act (small models answer from what they imagine and, measured, do not search when
        told to: the system runs that search itself, `fault_in`); or it only repeats the question, or asks one."""
        if echoes_alert(answer):
            return Outcome.failed(f"that repeats the memory alert; it is not an answer and was not delivered. "
                                  f"{self.task_line()}")
        if not self.searched and (self._claims(answer) or not self.calls):
            return self.fault_in()
        if self.question and repeats_question(answer, self.question):
            return Outcome.failed("not delivered: your message repeats the question. Answer it, from what you "
                                  "found (or say that the documents do not answer it).")
        return None

    def fault_in(self) -> Outcome:
        """Like a page-fault handler, the search an answer before any search skipped, run by the system with the
        question's words: its page 0 is the result the model reads (every hit shown counts as retrieved)."""
        query = " ".join(self.question.split()) or self._task()
        reason = ("not delivered: you had not searched the documents for this question yet, so the system ran "
                  f"archival_memory_search(query={query!r}) for you; its results follow. Answer only from them "
                  "(cite their chunk ids), search with other words, or say that the documents do not answer it.")
        summary = f"Failed: not delivered: no search yet; the system ran archival_memory_search({query!r})"
        try:
            page = self._archival(query, 0, status=f"status: Failed\nreason: {reason}\n")
        except Exception as exc:  # a failing archive: the model is told to search itself, as before
            return Outcome.failed(f"not delivered: you have not searched the documents for this question yet, and "
                                  f"the system's search failed ({type(exc).__name__}: {exc}). Search first "
                                  "(archival_memory_search), then answer only from what you find.")
        return Outcome(False, page.text, f"{summary}: {page.summary}")

    def _claims(self, answer: str) -> bool:
        """`answer` asserts something checkable: a number, name, date or code (an abstention asserts nothing)."""
        return not is_abstention(answer) and bool(extract_claims(answer))

    # -- paging

    def _fetch(self, query: str, ranking: Ranking[Hit], wanted: int) -> None:
        """Make sure `ranking` holds its first `wanted` hits: later ranks are appended, never reordered."""
        if len(ranking.items) >= min(wanted, ranking.total):
            return
        result = self.retriever.search(query, mode="hybrid", top_k=max(wanted, 2 * len(ranking.items)), page=0)
        known = {h.chunk_id for h in ranking.items}
        fresh = [h for h in result.hits if h.chunk_id not in known]
        ranking.items.extend(fresh)
        if len(ranking.items) < min(wanted, ranking.total) and not fresh:
            ranking.total = len(ranking.items)  # the retriever has no more to give than this

    def _choose(self, query: str, what: str, ranking: Ranking[Any], page: int, per_page: int) -> "_Page | Outcome":
        """The page to show for a request of `page`: it; page 0 when no page of the query was shown yet; or the next
        unseen page when it was shown already."""
        pages = page_count(ranking.total, per_page)
        if page >= pages:
            return Outcome.failed(f"page {page} does not exist: {ranking.total} {what} make {pages} pages of "
                                  f"{per_page} (page=0 to page={pages - 1})")
        chosen = _Page(page)
        if page and not ranking.shown:  # measured: the 1.5B model asked for page 1 first and missed the top hits
            chosen = _Page(0, f"You asked for page={page}, but no page of this search was shown yet: here is page=0, "
                              f"its best matches (ask for page={page} again to see that one).\n")
        elif page in ranking.shown:
            unseen = ranking.next_unseen(page, per_page)
            if unseen is None:
                return Outcome.failed(f"you have already seen every page of {query!r} (page=0 to page={pages - 1}, "
                                      f"all {ranking.total} {what}). {self._other_words()}")
            seen = len(ranking.shown) + 1
            hint = (f" You have now seen {seen} pages of this search, its best {seen * per_page} matches; later "
                    f"pages rank lower. {self._other_words()}" if seen >= HINT_AFTER_PAGES else "")
            chosen = _Page(unseen, f"You already saw page={page} of this search; here is page={unseen}, the next "
                                   f"one you have not seen.{hint}\n")
        ranking.shown.add(chosen.number)
        return chosen

    @staticmethod
    def _next(ranking: Ranking[Any], page: int, per_page: int) -> str:
        return (f"Next: page={page + 1}." if page + 1 < page_count(ranking.total, per_page)
                else "This is the last page.")

    def _nothing(self, query: str, what: str, *, repeated: bool, ranking: Ranking[Any],
                 status: str = "status: OK\n") -> Outcome:
        ranking.shown.add(0)
        if repeated:
            return Outcome.failed(f"you already searched for {query!r} and no {what} matched. {self._other_words()}")
        return Outcome(True, f"{status}No {what} match {query!r}. {self._other_words()}", "OK: no results")

    def _task(self) -> str:
        return self.context.core.blocks["task"].value if "task" in self.context.core.blocks else ""

    def _other_words(self) -> str:
        words = _untried_words(self._task(), [*self.archival, *self.recall])
        hint = f" (words of the question not searched yet: {', '.join(words)})" if words else ""
        return (f"Search with other words{hint}, or answer with send_message from what you found "
                "(or say that the documents do not answer it).")

    def task_line(self) -> str:
        """`Continue the task: <the question>`, for notes that put the model back on track."""
        return f"Continue the task: {self._task()}" if self._task() else "Continue the task."

    @staticmethod
    def _message_entry(message: dict[str, Any]) -> tuple[str, str]:
        calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})"
                          for c in message.get("tool_calls") or [])
        text = " ".join(part for part in [message.get("content") or "", calls] if part)
        text = text if len(text) <= RECALL_CHARS else text[:RECALL_CHARS] + " [...]"
        return f"- [{message.get('time', '')}] {message.get('role')}:", text
