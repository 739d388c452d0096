"""Token counting for the context budget.

The LLM's own tokenizer is not available offline (the local embedder's WordPiece vocabulary is a
different tokenizer), so counts are a deliberately conservative estimate: letter runs cost one token
per 4 letters, every digit one token (hex ids and numbers tokenize badly), symbol runs one per two
characters, newlines one each, plus a per-message overhead for the chat template.
`TokenCounter.observe` corrects the estimate upward whenever the endpoint's reported `prompt_tokens`
shows it was too low.
"""

from __future__ import annotations

import json
import math
import re
import threading
from functools import lru_cache
from typing import Any

_PIECES = re.compile(r"[A-Za-z]+|[0-9]|[ \t]+|\n|[!-/:-@\[-`{-~]+|[^\sA-Za-z0-9]|\s")
MESSAGE_OVERHEAD = 6  # role markers and separators of a chat template
REQUEST_OVERHEAD = 8  # the assistant prefix and template boilerplate
SAFETY = 1.1


@lru_cache(maxsize=8192)  # every step re-counts the same schemas and most of the same messages
def estimate_text(text: str) -> int:
    """A conservative token count for `text` under any common BPE/SentencePiece tokenizer."""
    count = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii() and first.isalpha():
            count += math.ceil(len(piece) / 4)
        elif first in " \t":
            count += (len(piece) - 1) // 2  # one space rides on the next word; indentation costs
        elif first.isascii():
            count += math.ceil(len(piece) / 2)  # symbol runs such as `":{"` merge into few tokens
        else:
            count += max(1, len(piece.encode()) - 1)  # non-ASCII: up to one token per UTF-8 byte
    return math.ceil(count * SAFETY)


def _message_text(message: dict[str, Any]) -> str:
    parts = [str(message.get("role", "")), str(message.get("name") or ""), str(message.get("content") or "")]
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        parts += [str(call.get("id", "")), str(function.get("name", "")), str(function.get("arguments", ""))]
    if message.get("tool_call_id"):
        parts.append(str(message["tool_call_id"]))
    return " ".join(parts)


class TokenCounter:
    """Counts the tokens of a request; `ratio` (>= 1) scales the estimate after the endpoint reports more."""

    def __init__(self) -> None:
        self.ratio = 1.0
        self._lock = threading.Lock()

    def text(self, text: str) -> int:
        return math.ceil(estimate_text(text) * self.ratio)

    def message(self, message: dict[str, Any]) -> int:
        return MESSAGE_OVERHEAD + self.text(_message_text(message))

    def messages(self, messages: list[dict[str, Any]]) -> int:
        return sum(self.message(m) for m in messages)

    def schema(self, obj: Any) -> int:
        """Tokens of a JSON object sent with the request (tool schemas, a response format)."""
        return 0 if not obj else self.text(json.dumps(obj, separators=(",", ":")))

    def request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                response_format: dict[str, Any] | None = None) -> int:
        """Prompt tokens of a whole request: messages, tool schemas and a response format that is prompt text.

        A `json_object` format with a schema (llama.cpp's form) is compiled into a sampling grammar and never
        shown to the model, so it costs no prompt tokens; a `json_schema` format (OpenAI's) is counted.
        """
        grammar_only = bool(response_format) and response_format.get("type") == "json_object"
        return (REQUEST_OVERHEAD + self.messages(messages) + self.schema(tools)
                + (0 if grammar_only else self.schema(response_format)))

    def observe(self, estimated: int, reported: int) -> None:
        """Learn from the endpoint's `prompt_tokens` for a request estimated at `estimated` (never lowers)."""
        if estimated > 0 and reported > estimated:
            with self._lock:
                self.ratio = max(self.ratio, self.ratio * reported / estimated * 1.02)
