"""Main context under a hard token budget, as in MemGPT: system prompt, working memory, summary, a FIFO queue.

`Context` builds each request so that prompt + reply reserve never exceeds the window; once the queue
has used 70% of its room it queues a memory-pressure alert; when a request would not fit it evicts the
oldest ~half of the queue to recall storage and folds it into a recursive summary (each summary call itself within the window).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.agent.core_memory import CoreMemory
from pipeline.agent.recall import Message, Recall, render_message
from pipeline.agent.tokens import TokenCounter

PRESSURE = 0.70
UNREAD_RESERVE = 256  # room kept beside an unread function result: the call that asked for it, an alert
SUMMARY_ROLE_PREFIX = "[summary of earlier messages]"
ALERT_PREFIX = "[system alert]"

Summarizer = Callable[[list[Message], int], "str | None"]

# what only an echo of the pressure alert says: the prefix, "the context window is 70% full", "system alert"
_ALERT_ECHO = re.compile(
    r"\[system alert\]|context window is (about )?\d+ ?% full|\b(system|memory[- ]pressure) alert\b", re.IGNORECASE)


def echoes_alert(text: str) -> bool:
    """True when `text` repeats a memory-pressure alert (which is never a finding or an answer)."""
    return bool(_ALERT_ECHO.search(text))


class ContextTooSmall(ValueError):
    """The window cannot hold the fixed part of the context plus a useful queue."""


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
        return cls(window, reply=max(192, min(320, window // 24)), summary=max(96, min(384, window // 40)))


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
        summary = [{"role": "user", "content": _summary_text(self.summary, self.evicted)}] if self.summary else []
        for message in summary + self.queue:
            if message.get("role") == "user" and merged[-1].get("role") == "user":
                merged[-1] = {"role": "user", "content": f"{merged[-1]['content']}\n\n{message.get('content') or ''}"}
            else:
                merged.append(message)
        return merged

    def fixed_parts(self, tools: list[Message] | None, response_format: Message | None) -> dict[str, int]:
        """Tokens of each part of the context but the queue, at its worst case: the instructions, the
        function schemas (or response format), full working memory, a full summary, the reply reserve.

        They do not depend on what the summary or the blocks hold now, so the room they leave stays put
        within a question (until the endpoint reports that our token estimate was low).
        """
        instructions = [{"role": "system", "content": self.system}]
        system = [{"role": "system", "content": f"{self.system}\n\n{self.core.render(full=True)}"}]
        summary = [*system, {"role": "user", "content": _summary_text("", 99999)}]
        sizes = [self.counter.request(m) for m in (instructions, system, summary)]
        return {"instructions": sizes[0],
                "functions": self.counter.request(summary, tools, response_format) - sizes[2],
                "working memory": sizes[1] - sizes[0],
                "summary": sizes[2] - sizes[1] + self.budget.summary,
                "reply": self.budget.reply}

    def fixed_tokens(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Worst case of everything but the queue (the sum of `fixed_parts`)."""
        return sum(self.fixed_parts(tools, response_format).values())

    def queue_room(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Tokens the queue may always use; `ContextTooSmall` when that is under 256."""
        room = self.budget.window - self.fixed_tokens(tools, response_format)
        if room < 256:
            raise ContextTooSmall(f"a context window of {self.budget.window} tokens is too small: the "
                                  f"instructions, tools and memory need {self.budget.window - room + 256}")
        return room

    def result_room(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Tokens one function result may take: two thirds of the queue's room, keeping `UNREAD_RESERVE`
        beside it for what arrives with it unread (its call, a pressure alert), and never under half."""
        room = self.queue_room(tools, response_format)
        return max(room // 2, min(room * 2 // 3, room - UNREAD_RESERVE))

    def pressure_mark(self, tools: list[Message] | None, response_format: Message | None) -> int:
        """Request size past which the queue has used `PRESSURE` of its room: time for the alert."""
        return self.budget.window - int((1 - PRESSURE) * self.queue_room(tools, response_format))

    def request_tokens(self, tools: list[Message] | None, response_format: Message | None) -> int:
        return self.counter.request(self.messages(), tools, response_format) + self.budget.reply

    def build(self, tools: list[Message] | None, response_format: Message | None,
              summarize: Summarizer) -> list[Message]:
        """The messages of the next request, after any pressure alert and evictions needed to fit."""
        window = self.budget.window
        used = self.request_tokens(tools, response_format)
        if not self.alerted and self.pressure_mark(tools, response_format) < used <= window:  # not yet evicting
            self.alerted = True
            self.append({"role": "user", "content": self._alert(100 * used // window)})
            self.log(f"memory pressure: {used}/{window} tokens, alert queued")
        while self.request_tokens(tools, response_format) > window:
            if not self._evict(summarize) and not self._shrink_longest(tools, response_format):
                raise ContextTooSmall(f"the next request does not fit a window of {window} tokens")
        return self.messages()

    def _alert(self, percent: int) -> str:
        """The pressure alert: what to save, that it is not the task, and the task to continue."""
        task = self.core.blocks["task"].value if "task" in self.core.blocks else ""
        return (f"{ALERT_PREFIX} The context window is {percent}% full: the oldest messages will soon move to "
                "recall storage. If a finding you need is not in notes yet, save it with core_memory_append "
                "(the fact, its chunk id, its source). This alert is not part of the task and never an answer. "
                f"Continue the task{': ' + task if task else '.'}")

    def _evict(self, summarize: Summarizer) -> bool:
        """Move the oldest ~half of the queue (by tokens) into the summary; False if nothing can go.

        What came after the model's last reply (the results it has not read yet, an alert) never goes.
        """
        sizes = [self.counter.message(m) for m in self.queue]
        replies = [i for i, m in enumerate(self.queue) if m.get("role") == "assistant"]
        unread = replies[-1] if replies else len(self.queue) - 1
        half, running, cut = sum(sizes) / 2, 0, 0
        for index in range(1, unread + 1):
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
        self.alerted = any(str(m.get("content") or "").startswith(ALERT_PREFIX) for m in self.queue)
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


def _summary_text(summary: str, evicted: int) -> str:
    return (f"{SUMMARY_ROLE_PREFIX} {evicted} earlier messages were moved to recall storage "
            f"(conversation_search finds them). Summary:\n{summary}")


def _mechanical_summary(previous: str, texts: list[str]) -> str:
    """Used when the model could not write a summary: the previous one and the first line of each message."""
    lines = [t.splitlines()[0][:160] for t in texts if t.strip()]
    return "\n".join(([previous] if previous else []) + lines)
