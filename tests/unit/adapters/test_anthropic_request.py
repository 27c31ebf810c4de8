"""The Anthropic adapter's requests: OpenAI-shaped chat requests → the Messages API."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters import get_adapter
from adapters.anthropic import AnthropicAdapter
from gateway.canonical import CanonicalRequest, ErrorClass, FailureKind, Target, UpstreamFailure
from tests.support.chat_requests import HI, WEATHER, chat

ADAPTER = AnthropicAdapter()
TARGET = Target("http://up/v1", "claude-up", "sk-ant", {"anthropic-beta": "b1"})


def built(req: CanonicalRequest, target: Target = TARGET) -> dict[str, Any]:
    up = ADAPTER.build_request(req, target)
    body: dict[str, Any] = orjson.loads(up.body)
    return body


# -- requests ----------------------------------------------------------------------------------


def test_registered_and_addressed_with_anthropic_headers() -> None:
    assert isinstance(get_adapter("anthropic"), AnthropicAdapter)
    up = ADAPTER.build_request(chat(HI, stream=True), TARGET)
    assert up.method == "POST" and up.url == "http://up/v1/messages"
    assert up.headers["x-api-key"] == "sk-ant" and "authorization" not in up.headers
    assert up.headers["anthropic-version"] == "2023-06-01"
    assert up.headers["anthropic-beta"] == "b1" and up.headers["accept"] == "text/event-stream"
    assert orjson.loads(up.body)["stream"] is True


def test_minimal_request_defaults_max_tokens() -> None:
    assert built(chat(HI)) == {
        "model": "claude-up", "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    custom = Target("http://up/v1", "m", options={"max_tokens_default": "512"})
    assert built(chat(HI), custom)["max_tokens"] == 512
    assert built(chat(HI, max_tokens=7))["max_tokens"] == 7
    assert built(chat(HI, max_tokens=7, max_completion_tokens=9))["max_tokens"] == 9


def test_system_and_developer_messages_are_lifted_to_system() -> None:
    body = built(chat([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
    ]))
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Use French."}]
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_sampling_stop_user_and_json_schema() -> None:
    body = built(chat(HI, temperature=1.6, top_p=0.9, top_k=40, stop="END", user="u-1",
                      seed=3, response_format={"type": "json_schema", "json_schema": {
                          "name": "x", "schema": {"type": "object"}}}))
    assert body["temperature"] == 1.0  # OpenAI's 0-2 clamped to Anthropic's 0-1
    assert (body["top_p"], body["top_k"], body["stop_sequences"]) == (0.9, 40, ["END"])
    assert body["metadata"] == {"user_id": "u-1"} and "seed" not in body
    assert body["output_config"] == {"format": {"type": "json_schema",
                                                "schema": {"type": "object"}}}
    assert built(chat(HI, stop=["a", "b"]))["stop_sequences"] == ["a", "b"]


def test_api_version_2026_10_21_gets_no_sampling_parameters() -> None:
    target = Target("http://up/v1", "m", "k", options={"anthropic_version": "2026-10-21"})
    up = ADAPTER.build_request(chat(HI, temperature=0.2, top_p=0.5, stop="x"), target)
    body = orjson.loads(up.body)
    assert up.headers["anthropic-version"] == "2026-10-21"
    assert "temperature" not in body and "top_p" not in body and body["stop_sequences"] == ["x"]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "weather"}}, None,
     {"type": "tool", "name": "weather"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tools_and_tool_choice(choice: Any, parallel: bool | None, expected: Any) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    body = built(chat(HI, **extra))
    assert body["tools"] == [{"name": "weather", "description": "Weather in a city",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert body.get("tool_choice") == expected


def test_tool_calls_and_results_both_ways_merge_consecutive_results() -> None:
    body = built(chat([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "t2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks; and tomorrow?"},
    ], tools=[WEATHER]))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "rain"},
            {"type": "text", "text": "Thanks; and tomorrow?"}]},
    ]


def test_images_become_base64_or_url_sources() -> None:
    body = built(chat([{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg", "detail": "low"}},
    ]}]))
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0K"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
    ]


@pytest.mark.parametrize(("req", "words"), [
    (CanonicalRequest("completions", "pub", {"model": "pub", "prompt": "x"}), "no completions"),
    (CanonicalRequest("embeddings", "pub", {"model": "pub", "input": "x"}), "no embeddings"),
    (chat(HI, n=2), "`n` > 1"),
    (chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
     "input_audio"),
    (chat([{"role": "user", "content": [{"type": "image_url",
                                         "image_url": {"url": "ftp://x"}}]}]), "data: URL"),
    (chat([{"role": "assistant", "tool_calls": [
        {"id": "t", "function": {"name": "f", "arguments": "[1]"}}]}]), "JSON object"),
    (chat(HI, tools=[{"type": "web_search"}]), "only function tools"),
])
def test_requests_anthropic_cannot_take_are_rejected_as_final(
        req: CanonicalRequest, words: str) -> None:
    with pytest.raises(UpstreamFailure) as info:
        ADAPTER.build_request(req, TARGET)
    assert info.value.kind is FailureKind.REJECTED and info.value.status == 400
    assert info.value.error_class is ErrorClass.FINAL and words in info.value.message


# -- responses ---------------------------------------------------------------------------------
