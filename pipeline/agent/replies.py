"""What a model reply asks for: function calls, a plain-text answer, or nothing usable.

`parse_reply` names the outcome (`Calls`, `PlainText`, `Empty`, `Malformed`) so the loop handles each
explicitly. Native tool calls win in tools mode; otherwise a reply whose content is a JSON object (bare or
in a ```json fence) is one call `{"function": NAME, "arguments": {...}}`, and any other text is an answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pipeline.agent.context import cut_to_tokens
from pipeline.agent.tokens import TokenCounter
from pipeline.llm import ChatReply, ToolCall


@dataclass(frozen=True)
class Calls:
    """Function calls to run; `native` when they came as tool calls (answered by `tool` messages)."""

    calls: list[ToolCall]
    native: bool


@dataclass(frozen=True)
class PlainText:
    """A reply with no call: taken as the answer."""

    text: str


@dataclass(frozen=True)
class Empty:
    """A reply with neither content nor calls."""


@dataclass(frozen=True)
class Malformed:
    """Content that tried to be a JSON call and is not one; `reason` is shown to the model."""

    raw: str
    reason: str


ParsedReply = Calls | PlainText | Empty | Malformed


def parse_reply(reply: ChatReply, *, json_mode: bool, step: int) -> ParsedReply:
    """The outcome of `reply`; `step` numbers the call ids the reply did not supply."""
    content = (reply.content or "").strip()
    if reply.tool_calls and not json_mode:
        return Calls([ToolCall(c.id or f"call_{step}_{i}", c.name, c.arguments)
                      for i, c in enumerate(reply.tool_calls)], native=True)
    if not content:
        return Empty()
    if not _unfence(content).lstrip().startswith("{"):
        return PlainText(content)
    try:
        obj = json.loads(_unfence(content))
        if not isinstance(obj, dict) or not isinstance(obj.get("function", obj.get("name")), str):
            raise ValueError('expected an object like {"function": "...", "arguments": {...}}')
    except ValueError as exc:  # json.JSONDecodeError included
        return Malformed(content, f"your reply is not a valid function call: {exc}")
    arguments = obj.get("arguments", {})
    return Calls([ToolCall(f"json_{step}", obj.get("function", obj.get("name")),
                           arguments if isinstance(arguments, str) else json.dumps(arguments))], native=False)


def kept_arguments(arguments: str, limit: int, counter: TokenCounter) -> str:
    """Arguments as sent back to the model in its own message: valid JSON, long strings cut to fit `limit`."""
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return "{}"
    if not isinstance(value, dict) or counter.text(arguments) <= limit:
        return arguments if isinstance(value, dict) else "{}"
    strings = [k for k, v in value.items() if isinstance(v, str)]
    share = max(16, limit // max(1, len(strings)) - 8)
    kept = {k: cut_to_tokens(v, share, counter, "argument") if k in strings else v for k, v in value.items()}
    text = json.dumps(kept, ensure_ascii=False)
    return text if counter.text(text) <= limit else "{}"


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _unfence(text: str) -> str:
    match = _FENCE.match(text.strip())
    return match.group(1) if match else text
