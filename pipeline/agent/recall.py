"""Recall storage: every message that entered the queue, optionally persisted as JSONL, searchable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.agent.paging import term_search

Message = dict[str, Any]


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

    def rank(self, query: str) -> list[int]:
        """Indices of the messages matching `query`, best first."""
        return term_search([render_message(m) for m in self.messages], query)


def render_message(message: Message) -> str:
    """A message as plain text, for summaries and conversation search."""
    text = message.get("content") or ""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or []]
    if calls:
        text = (text + " " if text else "") + "called " + "; ".join(calls)
    return f"{message.get('role', '?')}: {text}"
