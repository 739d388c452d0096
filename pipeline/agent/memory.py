"""Main context under a hard token budget, as in MemGPT: working memory, a FIFO queue, recall storage.

- `CoreMemory`: named text blocks with character limits (`task`, `notes`), shown in the system message
  and edited by the agent; they survive eviction.
- `Recall`: every message ever queued, optionally persisted as JSONL, searchable page by page.
- `Context`: builds each request so that prompt + reply reserve never exceeds the window; past ~70%
  it queues a memory-pressure alert; when a request would not fit it evicts the oldest ~half of the
  queue and folds it into a recursive summary (each summary call itself within the window).
- `Session`: JSON state under `<store parent>/sessions/NAME/` so that `--session NAME` continues.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.agent.tokens import TokenCounter

PRESSURE = 0.70
SUMMARY_ROLE_PREFIX = "[summary of earlier messages]"
ALERT_PREFIX = "[system alert]"
PAGE_SIZE = 5

Message = dict[str, Any]
Summarizer = Callable[[list[Message], int], "str | None"]


class MemoryEditError(ValueError):
    """A core-memory edit that cannot be made; the message is shown to the model."""


class ContextTooSmall(ValueError):
    """The window cannot hold the fixed part of the context plus a useful queue."""


# ------------------------------------------------------------------------------------------ core memory

@dataclass
class Block:
    name: str
    description: str
    limit: int  # characters
    value: str = ""


class CoreMemory:
    """Working context: named blocks with character limits, rendered into the system message."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = {b.name: b for b in blocks}

    @classmethod
    def for_window(cls, window: int) -> "CoreMemory":
        """The default blocks, sized for a context window of `window` tokens."""
        return cls([
            Block("task", "the question being answered now", max(200, min(2000, window // 8))),
            Block("notes", "your findings so far: facts, with the chunk ids and sources that support them",
                  max(300, min(4000, window // 3))),
        ])

    def _block(self, name: str) -> Block:
        if name not in self.blocks:
            raise MemoryEditError(f"no memory block named {name!r}; blocks are: {', '.join(self.blocks)}")
        return self.blocks[name]

    def set(self, name: str, value: str) -> None:
        """Overwrite a block (cut to its limit); used by the runner, not the model."""
        block = self._block(name)
        block.value = value[:block.limit]

    def append(self, name: str, content: str) -> str:
        block = self._block(name)
        new = f"{block.value}\n{content}" if block.value else content
        if len(new) > block.limit:
            raise MemoryEditError(
                f"block {name!r} would hold {len(new)} characters, over its limit of {block.limit} "
                f"({block.limit - len(block.value)} left); shorten it with core_memory_replace first")
        block.value = new
        return new

    def replace(self, name: str, old: str, new: str) -> str:
        block = self._block(name)
        if not old or old not in block.value:
            raise MemoryEditError(f"old_content was not found in block {name!r}; copy it exactly")
        value = block.value.replace(old, new, 1)
        if len(value) > block.limit:
            raise MemoryEditError(f"block {name!r} would hold {len(value)} characters, over its limit of {block.limit}")
        block.value = value
        return value

    def render(self, *, full: bool = False) -> str:
        """The blocks as shown to the model; `full` pads each to its limit (for worst-case budgeting)."""
        parts = []
        for b in self.blocks.values():
            value = "x" * b.limit if full else b.value
            parts.append(f'<{b.name} chars="{len(b.value)}/{b.limit}" about="{b.description}">\n{value}\n</{b.name}>')
        return "\n".join(parts)

    def to_dict(self) -> dict[str, str]:
        return {name: b.value for name, b in self.blocks.items()}

    def load(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            if name in self.blocks:
                self.set(name, value)


# ------------------------------------------------------------------------------------ text search helper

def term_search(texts: list[str], query: str) -> list[int]:
    """Indices of `texts` containing any query term, best first (most distinct terms, then newest)."""
    terms = {t for t in re.findall(r"\w+", query.lower()) if len(t) > 1} or {query.lower().strip()}
    scored = []
    for index, text in enumerate(texts):
        lowered = text.lower()
        score = sum(1 for t in terms if t in lowered)
        if score:
            scored.append((-score, -index))
    return [-i for _, i in sorted(scored)]


def page_window(total: int, page: int, per_page: int = PAGE_SIZE) -> str:
    """`Showing results 6-10 of 37 (page 2 of 8)`; `page` is 0-based."""
    pages = max(1, -(-total // per_page))
    first = page * per_page + 1
    last = min(total, first + per_page - 1)
    return f"Showing results {first}-{last} of {total} (page {page + 1} of {pages})"


# --------------------------------------------------------------------------------------- recall storage

class Recall:
    """Every message that entered the queue, in order; appended to `path` (JSONL) when given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.messages: list[Message] = []
        if path is not None and path.exists():
            with path.open(encoding="utf-8") as handle:
                self.messages = [json.loads(line) for line in handle if line.strip()]

    def add(self, message: Message) -> None:
        record = {**message, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.messages.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def search(self, query: str, page: int = 0, per_page: int = PAGE_SIZE) -> tuple[list[Message], int]:
        """One page of matching messages (best first) and the total number of matches."""
        texts = [render_message(m) for m in self.messages]
        order = term_search(texts, query)
        return [self.messages[i] for i in order[page * per_page:(page + 1) * per_page]], len(order)


def render_message(message: Message) -> str:
    """A message as plain text, for summaries and conversation search."""
    text = message.get("content") or ""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or []]
    if calls:
        text = (text + " " if text else "") + "called " + "; ".join(calls)
    return f"{message.get('role', '?')}: {text}"


# ----------------------------------------------------------------------------------- the main context

def cut_to_tokens(text: str, max_tokens: int, counter: TokenCounter, what: str = "result") -> str:
    """`text` unchanged if it fits in `max_tokens`, else its head with a note saying it was cut."""
    total = counter.text(text)
    if total <= max_tokens:
        return text
    note = f"\n[... {what} cut to fit the context window: it was about {total} tokens; showing the start]"
    budget = max(0, max_tokens - counter.text(note))
    low, high = 0, len(text)
    while low < high:  # longest prefix that fits
        mid = (low + high + 1) // 2
        if counter.text(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low] + note


@dataclass
class Budget:
    """How the window is split: `reply` tokens reserved for the answer, `summary` for the recursive summary."""

    window: int
    reply: int
    summary: int

    @classmethod
    def for_window(cls, window: int) -> "Budget":
        return cls(window, reply=max(256, min(768, window // 10)), summary=max(128, min(512, window // 16)))


@dataclass
class Context:
    """System prompt + core memory + summary + FIFO queue, kept within `budget` on every request."""

    system: str
    core: CoreMemory
    budget: Budget
    counter: TokenCounter
    recall: Recall
    queue: list[Message] = field(default_factory=list)
    summary: str = ""
    evicted: int = 0  # messages moved out of the queue so far
    alerted: bool = False  # a pressure alert is in the queue since the last eviction
    log: Callable[[str], None] = lambda _: None

    def append(self, message: Message) -> None:
        """Add to the queue and to recall storage."""
        self.queue.append(message)
        self.recall.add(message)

    def messages(self) -> list[Message]:
        """The request: system message, summary, then the queue with back-to-back user messages merged
        (chat templates that insist on alternating roles reject two in a row)."""
        merged: list[Message] = [{"role": "system", "content": f"{self.system}\n\n{self.core.render()}"}]
        tail = ([{"role": "user", "content": self._summary_text()}] if self.summary else []) + self.queue
        for message in tail:
            if message.get("role") == "user" and merged[-1].get("role") == "user":
                merged[-1] = {"role": "user", "content": f"{merged[-1]['content']}\n\n{message.get('content') or ''}"}
            else:
                merged.append(message)
        return merged

    def _summary_text(self) -> str:
        return (f"{SUMMARY_ROLE_PREFIX} {self.evicted} earlier messages were moved to recall storage "
                f"(conversation_search finds them). Summary:\n{self.summary}")

    def fixed_tokens(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Worst case of everything but the queue: full core memory, a full summary, the reply reserve."""
        system = {"role": "system", "content": f"{self.system}\n\n{self.core.render(full=True)}"}
        summary = {"role": "user", "content": self._summary_text()}
        return (self.counter.request([system, summary], tools, response_format)
                + self.budget.summary + self.budget.reply)

    def queue_room(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Tokens the queue may always use; `ContextTooSmall` when that is under 256."""
        room = self.budget.window - self.fixed_tokens(tools, response_format)
        if room < 256:
            raise ContextTooSmall(f"a context window of {self.budget.window} tokens is too small: the "
                                  f"instructions, tools and memory need {self.budget.window - room + 256}")
        return room

    def request_tokens(self, tools: list[Message] | None, response_format: Message | None) -> int:
        return self.counter.request(self.messages(), tools, response_format) + self.budget.reply

    def build(self, tools: list[Message] | None, response_format: Message | None,
              summarize: Summarizer) -> list[Message]:
        """The messages of the next request, after any pressure alert and evictions needed to fit."""
        self.queue_room(tools, response_format)
        window = self.budget.window
        used = self.request_tokens(tools, response_format)
        if not self.alerted and PRESSURE * window < used <= window:  # past the mark but not yet evicting
            self.alerted = True
            self.append({"role": "user", "content": (
                f"{ALERT_PREFIX} Memory pressure: the context window is {100 * used // window}% full. The "
                "oldest messages will soon be evicted to recall storage and replaced by a short summary. "
                "Save what you still need (findings, with chunk ids and sources) into working memory "
                "now with core_memory_append to the notes block.")})
            self.log(f"memory pressure: {used}/{window} tokens, alert queued")
        while self.request_tokens(tools, response_format) > window:
            if not self._evict(summarize) and not self._shrink_longest(tools, response_format):
                raise ContextTooSmall(f"the next request does not fit a window of {window} tokens")
        return self.messages()

    def _evict(self, summarize: Summarizer) -> bool:
        """Move the oldest ~half of the queue (by tokens) into the summary; False if nothing can go."""
        sizes = [self.counter.message(m) for m in self.queue]
        half, running, cut = sum(sizes) / 2, 0, 0
        for index in range(1, len(self.queue)):
            running += sizes[index - 1]
            if self.queue[index].get("role") == "tool":
                continue  # never separate tool results from the call that asked for them
            cut = index
            if running >= half:
                break
        if cut == 0:
            return False
        gone, self.queue = self.queue[:cut], self.queue[cut:]
        self.evicted += len(gone)
        self.alerted = False
        self.summary = self._fold(gone, summarize)
        self.log(f"evicted {len(gone)} messages to recall storage; summary is {self.counter.text(self.summary)} tokens")
        return True

    def _fold(self, gone: list[Message], summarize: Summarizer) -> str:
        """Recursive summary: the previous summary plus the evicted messages, in pieces that fit a call."""
        instructions = {"role": "system", "content": (
            "You compress an AI agent's memory. Write a concise summary (at most a few sentences) of "
            "the previous summary and the messages below: the question, what was searched, what was "
            "found with chunk ids and sources, and what is still open. Plain text only.")}
        limit = self.budget.window - self.budget.summary
        summary = self.summary
        pending = [render_message(m) for m in gone]
        while pending:
            body = f"Previous summary:\n{summary or '(none)'}\n\nMessages:\n"
            piece: list[str] = []
            for text in list(pending):
                # each message alone may take at most half of what the call can hold
                text = cut_to_tokens(text, (limit - self.counter.messages([instructions])) // 2,
                                     self.counter, "message")
                candidate = body + "\n".join(piece + [text])
                if piece and self.counter.request([instructions, {"role": "user", "content": candidate}]) > limit:
                    break
                piece.append(text)
                pending.pop(0)
            request = [instructions, {"role": "user", "content": body + "\n".join(piece)}]
            while (over := self.counter.request(request) - limit) > 0:
                content = request[1]["content"]
                request[1]["content"] = cut_to_tokens(content, self.counter.text(content) - over - 4,
                                                      self.counter, "summary input")
            written = summarize(request, self.budget.summary)
            summary = written.strip() if written else _mechanical_summary(summary, piece)
        return cut_to_tokens(summary, self.budget.summary, self.counter, "summary")

    def _shrink_longest(self, tools: list[Message] | None, response_format: Message | None) -> bool:
        """Nothing left to evict: cut the longest queued text so the request fits; False if none can shrink."""
        longest = max(range(len(self.queue)), key=lambda i: self.counter.text(self.queue[i].get("content") or ""))
        message = self.queue[longest]
        content = message.get("content") or ""
        over = self.request_tokens(tools, response_format) - self.budget.window
        size = self.counter.text(content)
        cut = cut_to_tokens(content, max(0, size - over - 32), self.counter)
        if self.counter.text(cut) >= size:
            return False
        self.queue[longest] = {**message, "content": cut}
        self.log(f"cut message {longest} of the queue to fit the window")
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"core": self.core.to_dict(), "queue": self.queue, "summary": self.summary, "evicted": self.evicted}

    def load(self, state: dict[str, Any]) -> None:
        self.core.load(state.get("core", {}))
        self.queue = list(state.get("queue", []))
        self.summary = state.get("summary", "")
        self.evicted = int(state.get("evicted", 0))


def _mechanical_summary(previous: str, texts: list[str]) -> str:
    """Used when the model could not write a summary: the previous one and the first line of each message."""
    lines = [t.splitlines()[0][:160] for t in texts if t.strip()]
    return "\n".join(([previous] if previous else []) + lines)


# -------------------------------------------------------------------------------------------- sessions

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Session:
    """Where a named session lives: `state.json` (working memory, queue, summary, notes) and `recall.jsonl`."""

    directory: Path

    @classmethod
    def for_store(cls, store: Path, name: str) -> "Session":
        if not SESSION_NAME.match(name):
            raise ValueError(f"invalid session name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        return cls(Path(store).parent / "sessions" / name)

    @property
    def recall_path(self) -> Path:
        return self.directory / "recall.jsonl"

    def open(self) -> dict[str, Any]:
        """The saved state ({} for a new session); `OSError`/`ValueError` saying why it cannot be used."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot use session folder {self.directory}: {exc.strerror}") from exc
        path = self.directory / "state.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"session state {path} is damaged ({exc}); delete it or use another --session") from exc

    def save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(self.directory / "state.json")
