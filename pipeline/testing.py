"""Test doubles shared by tests and benchmarks: a scripted chat client and a fake OpenAI-compatible server.

`ScriptedChatClient` replays a queue of replies and records every request it was sent.
`FakeRetriever` stands in for the Archive's `search` with exact totals and paging.
`FakeEndpoint` is a real HTTP server on 127.0.0.1 serving `/v1/chat/completions`, driven by a Python
callable, so that the real `openai` client (retries, parsing, timeouts) can be exercised end to end.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator

from pipeline.llm import ChatReply, LLMError, ToolCall
from pipeline.types import Hit, SearchResult

_ids = itertools.count(1)

# How long a test waits for a child process that loads models before calling it hung: a guard, not a speed check.
# Generous because other work on a shared 2-core machine has slowed such a child tenfold (300 s was once too few).
CHILD_TIMEOUT = 1200


def tool_reply(name: str, arguments: dict[str, Any] | str, *, content: str | None = None,
               call_id: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0) -> ChatReply:
    """A reply making one native tool call; `arguments` as a dict, or a raw (possibly malformed) string."""
    return tool_calls_reply([(name, arguments)], content=content, call_ids=[call_id] if call_id else None,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def tool_calls_reply(calls: list[tuple[str, dict[str, Any] | str]], *, content: str | None = None,
                     call_ids: list[str] | None = None, prompt_tokens: int = 0,
                     completion_tokens: int = 0) -> ChatReply:
    """A reply making several native tool calls at once."""
    ids = call_ids or [f"call_{next(_ids)}" for _ in calls]
    return ChatReply(content=content, tool_calls=[
        ToolCall(id=i, name=name, arguments=args if isinstance(args, str) else json.dumps(args))
        for i, (name, args) in zip(ids, calls)],
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason="tool_calls")


def json_reply(name: str, arguments: dict[str, Any], *, prompt_tokens: int = 0,
               completion_tokens: int = 0) -> ChatReply:
    """A `json` tool-mode reply: one object naming the function and its arguments."""
    return text_reply(json.dumps({"function": name, "arguments": arguments}),
                      prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def text_reply(text: str, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> ChatReply:
    """A plain assistant message with no function call."""
    return ChatReply(content=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     finish_reason="stop")


Script = ChatReply | Exception | Callable[[dict[str, Any]], ChatReply]


class ScriptedChatClient:
    """A `ChatClient` that answers from a queue and records each request in `requests`.

    Each queued item is a `ChatReply`, an exception to raise, or a callable taking the request dict
    (messages, tools, response_format, max_tokens) and returning a reply. Running out raises `LLMError`.
    `intercept(request)` may answer a request first (return a reply) without using up the queue; see
    `summaries`, which answers the context's summary calls.
    """

    def __init__(self, replies: Iterable[Script], *,
                 intercept: Callable[[dict[str, Any]], ChatReply | None] | None = None) -> None:
        self.replies = list(replies)
        self.intercept = intercept
        self.requests: list[dict[str, Any]] = []

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 response_format: dict[str, Any] | None = None, max_tokens: int | None = None) -> ChatReply:
        request = {"messages": copy.deepcopy(messages), "tools": copy.deepcopy(tools),
                   "response_format": copy.deepcopy(response_format), "max_tokens": max_tokens}
        self.requests.append(request)
        if self.intercept is not None and (reply := self.intercept(request)) is not None:
            return reply
        if not self.replies:
            raise LLMError(f"scripted client ran out of replies after {len(self.requests) - 1} requests")
        item = self.replies.pop(0)
        if isinstance(item, Exception):
            raise item
        return item(request) if callable(item) else item


def is_summary_request(request: dict[str, Any]) -> bool:
    """True for the agent's summary calls: the only requests sent with neither tools nor a response format."""
    return not request.get("tools") and not request.get("response_format")


def summaries(text: str = "Summary: searched the archive; findings are in working memory.") -> Callable[[dict[str, Any]], ChatReply | None]:
    """An `intercept` that answers every summary call with `text` and leaves agent steps to the queue."""
    return lambda request: text_reply(text) if is_summary_request(request) else None


# --------------------------------------------------------------------------------------- HTTP endpoint

@dataclass(frozen=True)
class Fault:
    """An error response for `FakeEndpoint`: a status, a body (dict -> JSON, str/bytes as is) and headers."""

    status: int
    body: dict[str, Any] | str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def rate_limited(cls, retry_after: float | None = None) -> "Fault":
        return cls(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                   {"Retry-After": str(retry_after)} if retry_after is not None else {})

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> "Fault":
        return cls(status, {"error": {"message": "internal error", "type": "server_error"}},
                   {"Retry-After": str(retry_after)} if retry_after is not None else {})


def completion(reply: ChatReply, *, model: str = "fake-model") -> dict[str, Any]:
    """The `/v1/chat/completions` response body that the `openai` client parses into `reply`."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent clients (batch benchmarks) must not see refused connections

    def handle_error(self, request, client_address) -> None:
        """A client killed mid-request (the fault benchmark SIGKILLs one) is expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


Handler = Callable[[dict[str, Any]], "dict[str, Any] | ChatReply | Fault"]


class FakeEndpoint:
    """An OpenAI-compatible chat server on 127.0.0.1 (random free port), run in a background thread.

    `handler(request_json)` returns a completion dict, a `ChatReply` (wrapped by `completion`) or a
    `Fault`; `latency` seconds are slept before each answer. Requests are served concurrently and
    recorded in `requests`. Use as a context manager; `base_url` ends in `/v1`.
    """

    def __init__(self, handler: Handler, *, latency: float = 0.0) -> None:
        self.handler = handler
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def scripted(cls, replies: Iterable["ChatReply | Fault | dict[str, Any]"], *, latency: float = 0.0) -> "FakeEndpoint":
        """An endpoint answering requests in order from a queue (500 once the queue is empty)."""
        queue = list(replies)
        lock = threading.Lock()

        def handler(_: dict[str, Any]) -> dict[str, Any] | ChatReply | Fault:
            with lock:
                return queue.pop(0) if queue else Fault(500, {"error": {"message": "script exhausted"}})

        return cls(handler, latency=latency)

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeEndpoint is not running: use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FakeEndpoint":
        endpoint = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    request = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON"}})
                    return
                with endpoint._lock:
                    endpoint.requests.append(request)
                if endpoint.latency:
                    time.sleep(endpoint.latency)
                try:
                    result = endpoint.handler(request)
                except Exception as exc:  # a broken handler shows up as a 500 the client can see
                    result = Fault(500, {"error": {"message": f"handler failed: {exc!r}"}})
                if isinstance(result, Fault):
                    self._send(result.status, result.body, result.headers)
                else:
                    self._send(200, completion(result) if isinstance(result, ChatReply) else result)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else (
                    body.encode() if isinstance(body, str) else json.dumps(body if body is not None else {}).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        server = _Server(("127.0.0.1", 0), _Handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-endpoint", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None


# ------------------------------------------------------------------------------------------- retriever

def make_hit(chunk_id: str, text: str, *, source: str = "doc.txt", page: int | None = 1, heading: str = "") -> Hit:
    """A `Hit` for tests; score is filled in by `FakeRetriever`."""
    return Hit(chunk_id=chunk_id, source=source, page=page, page_end=page, heading=heading, text=text, score=0.0)


class FakeRetriever:
    """An in-memory `Retriever`: hits whose text shares a word with the query, best first, paged exactly.

    `total` is the true number of matches and `page` slices them `top_k` at a time; every call is
    recorded in `calls` as (query, mode, top_k, page).
    """

    def __init__(self, hits: Iterable[Hit]) -> None:
        self.hits = list(hits)
        self.calls: list[tuple[str, str, int, int]] = []

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        self.calls.append((query, mode, top_k, page))
        terms = set(re.findall(r"\w+", query.lower()))
        scored = [(len(terms & set(re.findall(r"\w+", h.text.lower()))), -i, h) for i, h in enumerate(self.hits)]
        ranked = [replace(h, score=float(s)) for s, _, h in sorted(scored, key=lambda t: t[:2], reverse=True) if s]
        return SearchResult(query=query, hits=ranked[page * top_k:(page + 1) * top_k], total=len(ranked),
                            page=page, top_k=top_k)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A real S3-compatible server (moto in server mode) on a free port of 127.0.0.1, stopped on exit; its endpoint
    URL. (Tests and the scale-out benchmark use it; moto comes with the `test` extra.)"""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
