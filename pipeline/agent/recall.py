"""Recall storage: every message that entered the queue, optionally persisted as JSONL, searchable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.agent.paging import term_search
from pipeline.files import complete_lines, utc_now

Message = dict[str, Any]


class Recall:
    """Every message that entered the queue, in order; appended to `path` (JSONL) when given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.messages: list[Message] = []
        if path is not None and path.exists():
            self.messages = load_recall(path)

    def add(self, message: Message) -> None:
        record = {**message, "time": utc_now()}
        self.messages.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def rank(self, query: str) -> list[int]:
        """Indices of the messages matching `query`, best first."""
        return term_search([render_message(m) for m in self.messages], query)


def load_recall(path: Path) -> list[Message]:
    """The messages in a recall file. A torn last line (a kill mid-append) is cut off the file
    (`complete_lines`); any other damage is a `ValueError` naming the file and line."""
    data, _ = complete_lines(path)
    messages = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:  # bad JSON or not UTF-8
            message = None
        if not isinstance(message, dict):
            raise ValueError(f"{path}:{number}: not a recall message; delete the file or use another --session")
        messages.append(message)
    return messages


def render_message(message: Message) -> str:
    """A message as plain text, for summaries and conversation search."""
    text = message.get("content") or ""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or []]
    if calls:
        text = (text + " " if text else "") + "called " + "; ".join(calls)
    return f"{message.get('role', '?')}: {text}"
