"""The chat model behind the agent: a small protocol, and its implementation over the `openai` client.

Retries are done here, not by the `openai` client (its own `max_retries` is 0), so that the policy is
visible and tested: timeouts, connection errors, 429 and 5xx are retried with exponential backoff,
honouring `Retry-After`; anything else raises `LLMError` with a one-line message.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pipeline.config import Settings
from pipeline.redact import scrub

if TYPE_CHECKING:
    import openai

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
NO_KEY = "sk-no-key-required"  # local OpenAI-compatible servers ignore the key, the client insists on one


class LLMError(Exception):
    """The endpoint could not give a reply: the message says why, in one line."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text exactly as the model wrote it (may be malformed)


@dataclass(frozen=True)
class ChatReply:
    """One assistant reply and the tokens it cost (0 where the endpoint did not say)."""

    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class ChatClient(Protocol):
    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 response_format: dict[str, Any] | None = None, max_tokens: int | None = None) -> ChatReply:
        """Send one chat request and return the first choice; raise `LLMError` when no reply can be had."""
        ...


def resolve_endpoint(settings: Settings) -> tuple[str | None, str]:
    """(base_url, api_key) of the configured endpoint, or `LLMError` when none is configured.

    This is the one place that decides where requests go; a local-model option plugs in here.
    """
    if not settings.base_url and not settings.api_key:
        raise LLMError("no LLM endpoint configured: set OPENAI_BASE_URL (and OPENAI_API_KEY if it needs one)")
    return settings.base_url, settings.api_key or NO_KEY


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds asked for by `retry-after-ms` / `Retry-After` (delta or HTTP date), or None."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        return None if parsed is None else max(0.0, email.utils.mktime_tz(parsed) - time.time())


def backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """Delay before retry number `attempt` (0-based): `Retry-After` when given, else 0.5 s doubling to 30 s."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    return min(BACKOFF_BASE_S * 2 ** attempt, BACKOFF_CAP_S)


class OpenAIChatClient:
    """`ChatClient` over `openai.OpenAI` against any OpenAI-compatible endpoint."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[str], None] | None = None) -> None:
        import openai

        base_url, api_key = resolve_endpoint(settings)
        self._secrets = [settings.api_key]
        self.model = settings.model
        self.max_retries = settings.max_retries
        self._sleep = sleep
        self._on_retry = on_retry
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=settings.request_timeout,
                                     max_retries=0)

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 response_format: dict[str, Any] | None = None, max_tokens: int | None = None) -> ChatReply:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if response_format:
            kwargs["response_format"] = response_format
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        attempt = 0
        while True:
            try:
                return _to_reply(self._client.chat.completions.create(**kwargs))
            except self._openai.APIConnectionError as exc:  # includes timeouts
                problem, retry_after = self._clean(f"{type(exc).__name__}: {exc.message}"), None
            except self._openai.APIStatusError as exc:
                problem = f"HTTP {exc.status_code}: {_error_text(exc, self._secrets)}"
                if exc.status_code != 429 and exc.status_code < 500:
                    raise LLMError(f"the endpoint refused the request ({problem})") from None
                retry_after = retry_after_seconds(exc.response.headers)
            except self._openai.OpenAIError as exc:
                raise LLMError(self._clean(f"the endpoint's reply could not be read ({type(exc).__name__}: {exc})")) \
                    from None
            if attempt >= self.max_retries:
                raise LLMError(f"gave up after {attempt + 1} attempts: {problem}")
            delay = backoff_seconds(attempt, retry_after)
            if self._on_retry:
                self._on_retry(f"retry {attempt + 1}/{self.max_retries} in {delay:.1f}s after {problem}")
            self._sleep(delay)
            attempt += 1

    def _clean(self, text: str) -> str:
        """What the endpoint said, without the key or anything shaped like a secret (error bodies echo requests)."""
        return scrub(text, self._secrets)


def make_client(settings: Settings, *, on_retry: Callable[[str], None] | None = None) -> ChatClient:
    """The chat client for `settings`; `LLMError` when no endpoint is configured."""
    return OpenAIChatClient(settings, on_retry=on_retry)


def _error_text(exc: "openai.APIStatusError", secrets: list[str | None]) -> str:
    """The endpoint's error message, scrubbed of `secrets` and key shapes before it is cut to 300 characters (a cut
    first could leave part of a key that no longer matches)."""
    body = exc.body
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner["message"] if isinstance(inner, dict) and inner.get("message") else exc.message
    return scrub(str(message), secrets)[:300]


def _to_reply(completion: Any) -> ChatReply:
    if not getattr(completion, "choices", None):
        raise LLMError("the endpoint's reply has no choices")
    choice = completion.choices[0]
    message = choice.message
    calls = []
    for index, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        if function is None:
            continue
        calls.append(ToolCall(id=call.id or f"call_{index}", name=function.name or "",
                              arguments=function.arguments or ""))
    usage = getattr(completion, "usage", None)
    return ChatReply(content=message.content, tool_calls=calls,
                     prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                     completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                     finish_reason=choice.finish_reason)
