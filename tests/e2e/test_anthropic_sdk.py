"""Mixed dialects through a running gateway, with the official SDKs:

- the `anthropic` SDK on /v1/messages reaching an OpenAI-compatible deployment (the
  simulator) and an Anthropic-format server (natively, through the Anthropic adapter);
- the `openai` SDK reaching an Anthropic-format and a Gemini-format upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from selfhost.sim import Simulator, ThreadedSim
from tests.support.gemini_mock import GeminiMock
from tests.support.procs import Gateway
from tests.support.provider_mocks import (
    AnthropicMock,
    Failure,
    Reply,
    Text,
    ToolCall,
    serving,
)

TEAM_KEY = "tk-test-anthropic-surface-0123456789"
ANTHROPIC_KEY = "sk-ant-upstream-secret-0123456789"
GEMINI_KEY = "gm-upstream-secret-0123456789"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, AnthropicMock, str, GeminiMock, str]]:
    claude = AnthropicMock(reply=Reply([Text("Bonjour from Claude!")], input_tokens=21,
                                       output_tokens=4, cached_tokens=3),
                           api_key=ANTHROPIC_KEY)
    gemini = GeminiMock(reply=Reply([Text("Hello from Gemini.")], input_tokens=9,
                                    output_tokens=4), api_key=GEMINI_KEY)
    with ThreadedSim(Simulator("instant")) as sim, serving(claude) as c_root, \
            serving(gemini) as g_root:
        yield sim.url, claude, c_root, gemini, g_root


@pytest.fixture(scope="module")
def gateway(upstreams: tuple[str, AnthropicMock, str, GeminiMock, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    sim, _, c_root, _, g_root = upstreams
    gw = Gateway({
        "providers": [
            {"name": "vllm", "base_url": sim + "/v1"},
            {"name": "claude", "dialect": "anthropic", "base_url": c_root + "/v1",
             "api_key": ANTHROPIC_KEY},
            {"name": "gemini", "dialect": "gemini", "base_url": g_root + "/v1beta",
             "api_key": GEMINI_KEY},
        ],
        "models": {
            "open-model": {"deployments": [{"target": "vllm", "model": "tiny"}]},
            "claude-x": {"deployments": [{"target": "claude", "model": "claude-sonnet-4-5"}]},
            "gemini-x": {"deployments": [{"target": "gemini", "model": "gemini-2.5-flash"}]},
        },
        "teams": [{"name": "t", "keys": [{"id": "k", "key": TEAM_KEY}]}],
    }, tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()
    logs = gw.logs()
    assert ANTHROPIC_KEY not in logs and GEMINI_KEY not in logs and TEAM_KEY not in logs


@pytest.fixture
def claude_sdk(gateway: Gateway) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=TEAM_KEY, max_retries=0)


@pytest.fixture
def openai_sdk(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=TEAM_KEY, max_retries=0)


ASK: Any = [{"role": "user", "content": "Say hello"}]


def test_anthropic_sdk_to_openai_compatible_deployment(claude_sdk: Anthropic,
                                                       openai_sdk: OpenAI) -> None:
    msg = claude_sdk.messages.create(model="open-model", max_tokens=6, messages=ASK,
                                     system="Be brief.")
    same = openai_sdk.chat.completions.create(
        model="open-model", max_tokens=6,
        messages=[{"role": "system", "content": "Be brief."}, *ASK])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == same.choices[0].message.content
    assert msg.stop_reason == "max_tokens"  # the simulator used all 6 tokens: "length"
    assert same.usage is not None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (
        same.usage.prompt_tokens, same.usage.completion_tokens)

    with claude_sdk.messages.stream(model="open-model", max_tokens=6, messages=ASK,
                                    system="Be brief.") as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text
    assert final.usage.output_tokens == 6 and final.stop_reason == "max_tokens"


def test_anthropic_sdk_to_anthropic_upstream(
        claude_sdk: Anthropic, upstreams: tuple[str, AnthropicMock, str, GeminiMock, str]
) -> None:
    mock = upstreams[1]
    msg = claude_sdk.messages.create(model="claude-x", max_tokens=50, messages=ASK,
                                     system="Be French.")
    assert msg.content[0].text == "Bonjour from Claude!"  # type: ignore[union-attr]
    # Anthropic's accounting survives the round trip through the canonical (OpenAI)
    # usage: input_tokens excludes the cache reads, reported on their own.
    assert msg.usage.input_tokens == 21 and msg.usage.cache_read_input_tokens == 3
    assert msg.usage.output_tokens == 4
    sent = mock.last
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.body["model"] == "claude-sonnet-4-5"
    assert sent.body["system"] == "Be French."  # the client's request, as it wrote it
    with claude_sdk.messages.stream(model="claude-x", max_tokens=50, messages=ASK) as stream:
        assert "".join(stream.text_stream) == "Bonjour from Claude!"


def test_tool_calls_round_trip_through_anthropic(
        openai_sdk: OpenAI, upstreams: tuple[str, AnthropicMock, str, GeminiMock, str]
) -> None:
    mock = upstreams[1]
    mock.reply = Reply([ToolCall("get_weather", {"city": "Paris"})])
    try:
        tools: Any = [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}}}}}]
        chunks = list(openai_sdk.chat.completions.create(
            model="claude-x", messages=ASK, tools=tools, stream=True))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function is not None and calls[0].function.name == "get_weather"
        args = "".join(tc.function.arguments or "" for tc in calls if tc.function)
        assert args.replace(" ", "") == '{"city":"Paris"}'
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert mock.last.body["tools"][0]["input_schema"]["properties"]["city"]
    finally:
        mock.reply = Reply([Text("Bonjour from Claude!")], input_tokens=21, output_tokens=4,
                           cached_tokens=3)


def test_openai_sdk_to_gemini_upstream(
        openai_sdk: OpenAI, upstreams: tuple[str, AnthropicMock, str, GeminiMock, str]
) -> None:
    mock = upstreams[3]
    reply = openai_sdk.chat.completions.create(model="gemini-x", messages=ASK, max_tokens=20)
    assert reply.choices[0].message.content == "Hello from Gemini."
    assert reply.usage is not None and reply.usage.prompt_tokens == 9
    assert mock.last.headers["x-goog-api-key"] == GEMINI_KEY
    assert mock.last.path.endswith("/models/gemini-2.5-flash:generateContent")
    text = "".join(c.choices[0].delta.content or "" for c in openai_sdk.chat.completions.create(
        model="gemini-x", messages=ASK, stream=True) if c.choices)
    assert text == "Hello from Gemini."


def test_anthropic_overload_is_a_typed_error(
        claude_sdk: Anthropic, upstreams: tuple[str, AnthropicMock, str, GeminiMock, str]
) -> None:
    upstreams[1].fail(Failure(529, "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        claude_sdk.messages.create(model="claude-x", max_tokens=5, messages=ASK)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_errors_in_anthropic_shape(gateway: Gateway, claude_sdk: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        claude_sdk.messages.create(model="nope", max_tokens=5, messages=ASK)
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude_sdk.messages.create(model="claude-x", max_tokens=5, messages=[])
    with pytest.raises(anthropic.AuthenticationError):
        Anthropic(base_url=gateway.url, api_key="tk-wrong-0123456789abcdef",
                  max_retries=0).messages.create(model="claude-x", max_tokens=5, messages=ASK)
    # Older SDKs and curl users send x-api-key: accepted like a Bearer token.
    r = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": TEAM_KEY},
                   json={"model": "open-model", "max_tokens": 3, "messages": ASK})
    assert r.status_code == 200 and r.json()["type"] == "message"
    r = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": TEAM_KEY},
                   content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_openai_sdk_gets_openai_errors_for_anthropic_upstream_failures(
        openai_sdk: OpenAI, upstreams: tuple[str, AnthropicMock, str, GeminiMock, str]
) -> None:
    upstreams[1].fail(Failure(429, "Rate limited", retry_after=7))
    with pytest.raises(openai.InternalServerError) as info:
        openai_sdk.chat.completions.create(model="claude-x", messages=ASK)
    assert info.value.status_code == 503 and info.value.code == "upstream_rate_limited"
    assert info.value.response.headers["retry-after"] == "7"
