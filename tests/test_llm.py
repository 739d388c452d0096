"""The chat client over the real `openai` client, against a local fake endpoint: parsing and retries."""

from __future__ import annotations

import email.utils
import time

import pytest

from pipeline.config import Settings
from pipeline.llm import LLMError, OpenAIChatClient, backoff_seconds, make_client, resolve_endpoint, retry_after_seconds
from pipeline.testing import Fault, FakeEndpoint, ScriptedChatClient, text_reply, tool_reply

USER = [{"role": "user", "content": "hello"}]


def client_for(endpoint: FakeEndpoint, **overrides: object) -> tuple[OpenAIChatClient, list[float]]:
    delays: list[float] = []
    settings = Settings(base_url=endpoint.base_url, api_key="test-key", model="fake-model", **overrides)
    return OpenAIChatClient(settings, sleep=delays.append), delays


def test_tool_call_reply_is_parsed_with_usage():
    with FakeEndpoint.scripted([tool_reply("archival_memory_search", {"query": "x"}, call_id="call_9",
                                           prompt_tokens=120, completion_tokens=7)]) as endpoint:
        client, _ = client_for(endpoint)
        reply = client.complete(USER, tools=[{"type": "function", "function": {"name": "archival_memory_search",
                                                                               "parameters": {"type": "object"}}}],
                                max_tokens=64)
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [("call_9", "archival_memory_search", '{"query": "x"}')]
    assert (reply.prompt_tokens, reply.completion_tokens) == (120, 7)
    sent = endpoint.requests[0]
    assert sent["model"] == "fake-model" and sent["max_tokens"] == 64 and sent["tools"][0]["type"] == "function"


def test_response_format_is_sent_and_tools_left_out():
    with FakeEndpoint.scripted([text_reply('{"function": "send_message"}')]) as endpoint:
        client, _ = client_for(endpoint)
        fmt = {"type": "json_schema", "json_schema": {"name": "step", "schema": {"type": "object"}}}
        reply = client.complete(USER, response_format=fmt)
    assert reply.content == '{"function": "send_message"}' and reply.tool_calls == []
    assert endpoint.requests[0]["response_format"] == fmt and "tools" not in endpoint.requests[0]


def test_429_and_500_are_retried_honouring_retry_after():
    script = [Fault.rate_limited(retry_after=3), Fault.server_error(500), Fault.server_error(503, retry_after=0.25),
              text_reply("finally")]
    with FakeEndpoint.scripted(script) as endpoint:
        client, delays = client_for(endpoint)
        reply = client.complete(USER)
    assert reply.content == "finally"
    assert len(endpoint.requests) == 4
    assert delays == [3.0, 1.0, 0.25]  # Retry-After, then backoff for attempt 2, then Retry-After again


def test_gives_up_after_max_retries_with_a_clear_error():
    with FakeEndpoint.scripted([Fault.server_error(502)] * 4) as endpoint:
        client, delays = client_for(endpoint, max_retries=2)
        with pytest.raises(LLMError, match=r"gave up after 3 attempts: HTTP 502"):
            client.complete(USER)
    assert len(endpoint.requests) == 3 and delays == [0.5, 1.0]


def test_client_errors_are_not_retried():
    with FakeEndpoint.scripted([Fault(401, {"error": {"message": "bad key"}}), text_reply("never")]) as endpoint:
        client, delays = client_for(endpoint)
        with pytest.raises(LLMError, match=r"refused the request \(HTTP 401: bad key\)"):
            client.complete(USER)
    assert len(endpoint.requests) == 1 and delays == []


def test_a_key_echoed_across_the_300_character_cut_leaves_no_part_behind():
    key = "plain-settings-only-key-0123456789"  # not key-shaped and in no environment variable: only Settings knows it
    body = {"error": {"message": "x" * 290 + f" key {key} rejected"}}
    with FakeEndpoint.scripted([Fault(401, body)]) as endpoint:
        client = OpenAIChatClient(Settings(base_url=endpoint.base_url, api_key=key, model="m"), sleep=lambda s: None)
        with pytest.raises(LLMError) as err:
            client.complete(USER)
    assert key[:5] not in str(err.value) and " key [reda" in str(err.value)  # redacted, then cut


def test_timeouts_are_retried():
    slow_then_fast = iter([0.5, 0.0])

    def handler(request):
        time.sleep(next(slow_then_fast))
        return text_reply("in time")

    with FakeEndpoint(handler) as endpoint:
        client, delays = client_for(endpoint, request_timeout=0.2)
        assert client.complete(USER).content == "in time"
    assert delays == [0.5]


def test_connection_errors_are_retried_then_reported():
    with FakeEndpoint.scripted([]) as endpoint:
        url = endpoint.base_url
    client = OpenAIChatClient(Settings(base_url=url, max_retries=1), sleep=lambda s: None)
    with pytest.raises(LLMError, match="gave up after 2 attempts: APIConnectionError"):
        client.complete(USER)


def test_malformed_body_is_an_llm_error():
    with FakeEndpoint.scripted([{"choices": []}]) as endpoint:
        client, _ = client_for(endpoint)
        with pytest.raises(LLMError, match="no choices"):
            client.complete(USER)


def test_retry_after_forms_and_backoff_cap():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds({"retry-after": future}) <= 31
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None
    assert [backoff_seconds(n, None) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_seconds(0, 999) == 120


def test_no_endpoint_is_a_clear_error_and_a_key_alone_is_enough():
    with pytest.raises(LLMError, match="no LLM endpoint configured"):
        make_client(Settings())
    assert resolve_endpoint(Settings(base_url="http://127.0.0.1:1/v1")) == ("http://127.0.0.1:1/v1", "sk-no-key-required")
    assert resolve_endpoint(Settings(api_key="k")) == (None, "k")


def test_scripted_client_records_requests_and_reports_exhaustion():
    client = ScriptedChatClient([text_reply("one")])
    messages = [{"role": "user", "content": "q"}]
    assert client.complete(messages, max_tokens=5).content == "one"
    messages[0]["content"] = "mutated"
    assert client.requests[0]["messages"][0]["content"] == "q" and client.requests[0]["max_tokens"] == 5
    with pytest.raises(LLMError, match="ran out of replies"):
        client.complete(messages)
