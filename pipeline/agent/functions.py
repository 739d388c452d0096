"""The memory functions the agent calls: model-facing schemas and their implementations.

`Toolbox.call(name, arguments)` never raises: unknown functions, malformed JSON, wrong argument types,
a repeated identical search and failing searches all come back as `status: Failed` results that the
model reads and recovers from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.agent.context import Context
from pipeline.agent.core_memory import MemoryEditError
from pipeline.agent.paging import PAGE_SIZE, page_window, term_search
from pipeline.types import Hit, SearchResult

HIT_CHARS = 1500  # longest chunk text shown per hit
RECALL_CHARS = 400  # longest message text shown per conversation_search hit


class Retriever(Protocol):
    """What the agent needs from archival memory (the Archive's `search`)."""

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult: ...


_HEARTBEAT = {"type": "boolean", "description": (
    "true to get another step right after this one (to read the result and keep working); "
    "false only if you are waiting for the user.")}

# name -> (description for the model, properties, required)
SPECS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "archival_memory_search": (
        "Search the document archive (hybrid keyword + semantic search). Returns one page of matching "
        "chunks, each with its chunk id, source file and page, and says how many matches exist in total "
        "and which page you are on. If the answer may be on a later page, call again with the same query "
        "and the next page number. Do not repeat an identical search.",
        {"query": {"type": "string", "description": "what to look for: specific words, names or ids"},
         "page": {"type": "integer", "description": "0-based results page; 0 is the best matches"},
         "request_heartbeat": _HEARTBEAT},
        ["query", "request_heartbeat"]),
    "archival_memory_insert": (
        "Save a note of your own (a finding, a plan) to your private notes archive, kept apart from the "
        "documents. Notes are not citable sources; archival_memory_search shows matching notes too.",
        {"content": {"type": "string", "description": "the note to save"}, "request_heartbeat": _HEARTBEAT},
        ["content", "request_heartbeat"]),
    "core_memory_append": (
        "Append text to a block of your working memory (always visible to you, kept when old messages are "
        "evicted). Use the `notes` block for findings: the fact, its chunk id and source.",
        {"name": {"type": "string", "description": "the block: `notes` (or `task`)"},
         "content": {"type": "string", "description": "text to append"}, "request_heartbeat": _HEARTBEAT},
        ["name", "content", "request_heartbeat"]),
    "core_memory_replace": (
        "Replace exact text in a block of your working memory (to correct or shorten it). An empty "
        "new_content deletes old_content.",
        {"name": {"type": "string", "description": "the block: `notes` (or `task`)"},
         "old_content": {"type": "string", "description": "text currently in the block, copied exactly"},
         "new_content": {"type": "string", "description": "the replacement text"},
         "request_heartbeat": _HEARTBEAT},
        ["name", "old_content", "new_content", "request_heartbeat"]),
    "conversation_search": (
        "Search the full history of this conversation, including messages evicted from your context "
        "(recall storage). Returns one page of matching messages and the total number of matches.",
        {"query": {"type": "string", "description": "words to look for"},
         "page": {"type": "integer", "description": "0-based results page"}, "request_heartbeat": _HEARTBEAT},
        ["query", "request_heartbeat"]),
    "send_message": (
        "Deliver your final answer to the user; this ends the question. Answer only from text you "
        "retrieved, and list the chunk ids you relied on in `citations`. If the documents do not contain "
        "the answer, say so plainly instead of guessing.",
        {"message": {"type": "string", "description": "the answer, in plain language"},
         "citations": {"type": "array", "items": {"type": "string"},
                       "description": "chunk ids (from search results) that support the answer"}},
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

    `kind` "json_schema" is OpenAI's form; "json_object" puts the schema beside the type, the form
    llama-cpp-python's server turns into a grammar.
    """
    names = [n for n in SPECS if only is None or n in only]
    schema = {
        "type": "object",
        "properties": {
            "function": {"type": "string", "enum": names},
            "arguments": {"anyOf": [{"type": "object", "properties": SPECS[n][1], "required": SPECS[n][2]}
                                    for n in names]}},
        "required": ["function", "arguments"]}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    if kind != "json_schema":
        raise ValueError(f"unknown response format {kind!r}: use json_schema or json_object")
    return {"type": "json_schema", "json_schema": {"name": "agent_step", "schema": schema}}


def describe_functions(only: list[str] | None = None) -> str:
    """The functions as text, for the system prompt in json tool mode (no `tools` are sent there)."""
    lines = []
    for name, (description, props, required) in SPECS.items():
        if only is not None and name not in only:
            continue
        params = ", ".join(f"{p}: {spec['type']}{'' if p in required else ' (optional)'}" for p, spec in props.items())
        lines.append(f"- {name}({params}): {description}")
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
    return f"chunk_id: {hit.chunk_id} | source: {hit.source}{where}{heading}"


class Toolbox:
    """The functions bound to one run: the archive, the context (working memory, recall), private notes."""

    def __init__(self, retriever: Retriever, context: Context, *, notes: list[str] | None = None,
                 top_k: int = 5) -> None:
        self.retriever = retriever
        self.context = context
        self.notes = notes if notes is not None else []
        self.top_k = top_k
        self.retrieved: dict[str, Hit] = {}  # every chunk shown to the model in this run
        self.searches: set[tuple[str, int]] = set()

    def call(self, name: str, raw_arguments: str | dict[str, Any]) -> Outcome:
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
        key = (" ".join(query.lower().split()), page)
        if key in self.searches:
            return Outcome.failed(
                f"you already ran this exact search (query {query!r}, page {page}); its results are above "
                "or in recall storage. Ask for the next page, try different words, or answer.")
        self.searches.add(key)
        result = self.retriever.search(query, mode="hybrid", top_k=self.top_k, page=page)
        if result.total and page >= result.pages:
            return Outcome.failed(f"page {page} does not exist: {result.total} results make {result.pages} "
                                  f"pages (0 to {result.pages - 1})")
        if not result.hits:
            lines = [f"status: OK\nNo documents match {query!r}. Try other words."]
            summary = "OK: no results"
        else:
            window = page_window(result.total, page, self.top_k)
            more = (f"Next: page={page + 1} shows the following results." if page + 1 < result.pages
                    else "This is the last page.")
            lines = [f"status: OK\n{window} for {query!r}. {more}"]
            first = page * self.top_k + 1
            for offset, hit in enumerate(result.hits):
                self.retrieved[hit.chunk_id] = hit
                text = hit.text if len(hit.text) <= HIT_CHARS else hit.text[:HIT_CHARS] + " [...]"
                lines.append(f"[{first + offset}] {_hit_label(hit)}\n{text}")
            summary = f"OK: {window}"
        if page == 0:
            own = [self.notes[i] for i in term_search(self.notes, query)[:3]]
            if own:
                lines.append("Your own saved notes matching this query (not citable):\n"
                             + "\n".join(f"- {n}" for n in own))
        return Outcome(True, "\n\n".join(lines), summary)

    def archival_memory_insert(self, content: str) -> Outcome:
        self.notes.append(content)
        return Outcome(True, f"status: OK\nSaved to your notes ({len(self.notes)} in total).",
                       f"OK: note {len(self.notes)} saved")

    def core_memory_append(self, name: str, content: str) -> Outcome:
        value = self.context.core.append(name, content)
        block = self.context.core.blocks[name]
        return Outcome(True, f"status: OK\nBlock {name!r} now holds {len(value)}/{block.limit} characters.",
                       f"OK: {name} {len(value)}/{block.limit} chars")

    def core_memory_replace(self, name: str, old_content: str, new_content: str) -> Outcome:
        value = self.context.core.replace(name, old_content, new_content)
        block = self.context.core.blocks[name]
        return Outcome(True, f"status: OK\nBlock {name!r} now holds {len(value)}/{block.limit} characters.",
                       f"OK: {name} {len(value)}/{block.limit} chars")

    def conversation_search(self, query: str, page: int = 0) -> Outcome:
        found, total = self.context.recall.search(query, page)
        if total and not found:
            pages = -(-total // PAGE_SIZE)
            return Outcome.failed(f"page {page} does not exist: {total} matches make {pages} pages")
        if not total:
            return Outcome(True, f"status: OK\nNo earlier messages match {query!r}.", "OK: no matches")
        window = page_window(total, page)
        lines = [f"status: OK\n{window} for {query!r}."]
        for message in found:
            text = (message.get("content") or "")[:RECALL_CHARS]
            calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})"
                              for c in message.get("tool_calls") or [])
            lines.append(f"- [{message.get('time', '')}] {message.get('role')}: {text}{' ' + calls if calls else ''}")
        return Outcome(True, "\n".join(lines), f"OK: {window}")

    def send_message(self, message: str, citations: list[str] | None = None) -> Outcome:
        return Outcome(True, "status: OK\nMessage delivered.", f"answered ({len(citations or [])} citations)",
                       final=True)
