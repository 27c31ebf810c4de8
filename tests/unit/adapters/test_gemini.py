"""The Gemini adapter: OpenAI-shaped requests → generateContent and back, golden and over HTTP."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from adapters import get_adapter
from adapters.gemini import SKIP_SIGNATURE, GeminiAdapter
from gateway.canonical import CanonicalRequest, ErrorClass, FailureKind, Target, UpstreamFailure
from tests.support.gemini_mock import GeminiMock
from tests.support.provider_mocks import (
    Failure,
    Reply,
    Text,
    ToolCall,
    attempt,
    running,
)

ADAPTER = GeminiAdapter()
TARGET = Target("http://up/v1beta", "gemini-up", "g-key")
HI = [{"role": "user", "content": "hi"}]
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "additionalProperties": False}}}


def chat(messages: list[dict[str, Any]], stream: bool = False, include_usage: bool = False,
         **extra: Any) -> CanonicalRequest:
    return CanonicalRequest("chat", "pub", {"model": "pub", "messages": messages, **extra},
                            stream, include_usage)


def built(req: CanonicalRequest) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(ADAPTER.build_request(req, TARGET).body)
    return body


# -- requests ----------------------------------------------------------------------------------


def test_registered_and_addressed() -> None:
    assert isinstance(get_adapter("gemini"), GeminiAdapter)
    up = ADAPTER.build_request(chat(HI), TARGET)
    assert up.url == "http://up/v1beta/models/gemini-up:generateContent"
    assert up.headers["x-goog-api-key"] == "g-key" and "authorization" not in up.headers
    up = ADAPTER.build_request(chat(HI, stream=True), Target("http://up/v1beta", "models/g"))
    assert up.url == "http://up/v1beta/models/g:streamGenerateContent?alt=sse"
    assert "x-goog-api-key" not in up.headers


def test_contents_system_instruction_and_generation_config() -> None:
    body = built(chat([{"role": "system", "content": "Be brief."}, *HI,
                       {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": [{"type": "text", "text": "Joke?"}]}],
                      temperature=1.5, top_p=0.9, max_completion_tokens=64, stop="END",
                      seed=7, n=2, presence_penalty=0.5, user="ignored"))
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]},
                     {"role": "model", "parts": [{"text": "Hello!"}]},
                     {"role": "user", "parts": [{"text": "Joke?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 1.5, "topP": 0.9, "seed": 7, "candidateCount": 2,
                             "presencePenalty": 0.5, "maxOutputTokens": 64,
                             "stopSequences": ["END"]},
    }


def test_json_modes() -> None:
    config = built(chat(HI, response_format={"type": "json_object"}))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}
    config = built(chat(HI, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}))["generationConfig"]
    assert config == {"responseMimeType": "application/json",
                      "responseJsonSchema": {"type": "object"}}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["weather"]}),
])
def test_tools_as_function_declarations(choice: Any, expected: dict[str, Any]) -> None:
    body = built(chat(HI, tools=[WEATHER], tool_choice=choice))
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "weather", "description": "Weather in a city",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_tool_calls_and_results_round_trip_with_thought_signatures() -> None:
    body = built(chat([
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
             "extra_content": {"google": {"thought_signature": "SIG"}}},
            {"id": "c2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "c2", "content": "rainy"},
        {"role": "assistant", "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
    ]))
    assert body["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
             "thoughtSignature": "SIG"},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
        {"role": "user", "parts": [  # both results in one turn, named by function
            {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "weather", "response": {"output": "rainy"}}}]},
        {"role": "model", "parts": [  # a call Gemini never signed gets the documented dummy
            {"functionCall": {"name": "weather", "args": {}}, "thoughtSignature": SKIP_SIGNATURE}]},
    ]


def test_images_and_audio_become_parts() -> None:
    body = built(chat([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png?s=1"}},
        {"type": "input_audio", "input_audio": {"data": "AAA", "format": "mp3"}},
    ]}]))
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/webp", "data": "UklGR"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/cat.png?s=1"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "AAA"}},
    ]


@pytest.mark.parametrize(("req", "words"), [
    (CanonicalRequest("completions", "pub", {"prompt": "x"}), "no completions"),
    (CanonicalRequest("embeddings", "pub", {"input": [[1, 2]]}), "not token ids"),
    (chat([{"role": "tool", "tool_call_id": "nope", "content": "x"}]), "tool_call_id"),
    (chat([{"role": "function", "name": "f", "content": "x"}]), "role 'function'"),
])
def test_requests_gemini_cannot_take_are_rejected(req: CanonicalRequest, words: str) -> None:
    with pytest.raises(UpstreamFailure) as info:
        ADAPTER.build_request(req, TARGET)
    assert info.value.kind is FailureKind.REJECTED and words in info.value.message


# -- responses ---------------------------------------------------------------------------------

USAGE = {"promptTokenCount": 30, "cachedContentTokenCount": 20, "candidatesTokenCount": 7,
         "thoughtsTokenCount": 5, "totalTokenCount": 42}
RESPONSE = {
    "candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True},
        {"text": "Let me "}, {"text": "check."},
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}, "id": "fc1"},
         "thoughtSignature": "SIG"}]}}],
    "usageMetadata": USAGE, "modelVersion": "gemini-2.5-flash", "responseId": "r1",
}


def test_response_becomes_chat_completion() -> None:
    result = ADAPTER.parse_response(chat(HI), orjson.dumps(RESPONSE))
    body = orjson.loads(result.body)
    assert (body["id"], body["model"], body["object"]) == ("r1", "gemini-2.5-flash",
                                                           "chat.completion")
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                                "message": {"role": "assistant", "content": "Let me check.",
                                            "refusal": None, "tool_calls": [{
                                                "id": "fc1", "type": "function",
                                                "function": {"name": "weather",
                                                             "arguments": '{"city":"Paris"}'},
                                                "extra_content": {"google": {
                                                    "thought_signature": "SIG"}}}]}}]
    # thoughts are output tokens; prompt tokens already include the cached ones
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                             "prompt_tokens_details": {"cached_tokens": 20},
                             "completion_tokens_details": {"reasoning_tokens": 5}}
    assert result.usage is not None and result.usage.cached_tokens == 20


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
    ("SPII", "content_filter"), ("BLOCKLIST", "content_filter"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop"),
])
def test_finish_reasons(reason: str, finish: str) -> None:
    resp = {"candidates": [{"finishReason": reason, "content": {"parts": [{"text": "x"}]}}]}
    body = orjson.loads(ADAPTER.parse_response(chat(HI), orjson.dumps(resp)).body)
    assert body["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_a_content_policy_failure() -> None:
    blocked = orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"},
                            "usageMetadata": {"promptTokenCount": 3}})
    with pytest.raises(UpstreamFailure) as info:
        ADAPTER.parse_response(chat(HI), blocked)
    assert info.value.kind is FailureKind.CONTENT_POLICY and "SAFETY" in info.value.message


# -- streams -----------------------------------------------------------------------------------


def chunk(parts: list[dict[str, Any]], finish: str | None = None, **usage: int) -> bytes:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return orjson.dumps({"candidates": [cand], "modelVersion": "gemini-2.5-flash",
                         "responseId": "r1",
                         "usageMetadata": {"promptTokenCount": 8, **usage}})


def summary(data: bytes) -> Any:
    if not data:
        return "usage (dropped)"
    obj = orjson.loads(data)
    assert obj["id"] == "r1" and obj["object"] == "chat.completion.chunk"
    if not obj["choices"]:
        return {"usage": obj["usage"]}
    (c,) = obj["choices"]
    return (c["delta"], c["finish_reason"])


def test_stream_translated_chunk_by_chunk_and_finished_on_finish_reason() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True))
    feed = [chunk([{"text": "Let me "}]), chunk([{"text": "check."}]),
            chunk([{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}],
                  "STOP", candidatesTokenCount=9)]
    out = []
    for data in feed:
        assert not tr.finished
        out.append([summary(c.data) for c in tr.feed(None, data)])
    assert tr.finished  # Gemini sends no [DONE]: the finishReason ends the stream
    call = out[2][0][0]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["index"] == 0
    assert out == [
        [({"role": "assistant", "content": ""}, None), ({"content": "Let me "}, None)],
        [({"content": "check."}, None)],
        [({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                           "function": {"name": "weather",
                                        "arguments": '{"city":"Paris"}'}}]}, None),
         ({}, "tool_calls"), "usage (dropped)"],
    ]


def test_stream_usage_chunk_kept_when_asked() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True, include_usage=True))
    chunks = tr.feed(None, chunk([{"text": "hi"}], "MAX_TOKENS", candidatesTokenCount=2))
    assert [summary(c.data) for c in chunks][1:] == [
        ({"content": "hi"}, None), ({}, "length"),
        {"usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10,
                   "prompt_tokens_details": {"cached_tokens": 0}}}]
    assert chunks[-1].usage_only and chunks[-1].usage is not None


def test_stream_waits_for_every_candidate() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True, n=2))
    first = orjson.loads(chunk([{"text": "a"}], "STOP"))
    tr.feed(None, orjson.dumps(first))
    assert not tr.finished
    first["candidates"][0]["index"] = 1
    out = tr.feed(None, orjson.dumps(first))
    assert tr.finished and orjson.loads(out[0].data)["choices"][0]["index"] == 1


def test_stream_error_event_raises_classified() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True))
    tr.feed(None, chunk([{"text": "a"}]))
    error = {"error": {"code": 503, "message": "The model is overloaded.",
                       "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamFailure) as info:
        tr.feed(None, orjson.dumps(error))
    assert (info.value.kind, info.value.status) == (FailureKind.SERVER, 503)


# -- errors ------------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status, **extra}})


RETRY_INFO = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.5s"}]


@pytest.mark.parametrize(("status", "headers", "body", "kind", "retry_after"), [
    (429, {}, google_error(429, "RESOURCE_EXHAUSTED", "quota", details=RETRY_INFO),
     FailureKind.RATE_LIMITED, 37.5),
    (429, {"retry-after": "4"}, google_error(429, "RESOURCE_EXHAUSTED", "quota"),
     FailureKind.RATE_LIMITED, 4.0),
    (503, {}, google_error(503, "UNAVAILABLE", "overloaded"), FailureKind.SERVER, None),
    (500, {}, google_error(500, "INTERNAL", "oops"), FailureKind.SERVER, None),
    (504, {}, google_error(504, "DEADLINE_EXCEEDED", "slow"), FailureKind.TIMEOUT, None),
    (400, {}, google_error(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds"
                           " the maximum number of tokens allowed (1048576)."),
     FailureKind.CONTEXT_LENGTH, None),
    (400, {}, google_error(400, "INVALID_ARGUMENT", "API key not valid."),
     FailureKind.REJECTED, None),
    (403, {}, google_error(403, "PERMISSION_DENIED", "denied"), FailureKind.REJECTED, None),
    (429, {}, b'[{"error": {"code": 429, "message": "wrapped", "status": "RESOURCE_EXHAUSTED"}}]',
     FailureKind.RATE_LIMITED, None),
    (502, {}, b"<html>bad gateway</html>", FailureKind.SERVER, None),
])
def test_error_classes(status: int, headers: dict[str, str], body: bytes, kind: FailureKind,
                       retry_after: float | None) -> None:
    failure = ADAPTER.classify_error(status, headers, body)
    assert (failure.kind, failure.status, failure.retry_after) == (kind, status, retry_after)


# -- embeddings --------------------------------------------------------------------------------


def test_embeddings_request_and_response() -> None:
    req = CanonicalRequest("embeddings", "pub", {"model": "pub", "input": ["a", "b"],
                                                 "dimensions": 2, "encoding_format": "base64"})
    up = ADAPTER.build_request(req, TARGET)
    assert up.url == "http://up/v1beta/models/gemini-up:batchEmbedContents"
    assert orjson.loads(up.body) == {"requests": [
        {"model": "models/gemini-up", "content": {"parts": [{"text": t}]},
         "outputDimensionality": 2} for t in ("a", "b")]}
    resp = {"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]}
    body = orjson.loads(ADAPTER.parse_response(req, orjson.dumps(resp)).body)
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    decoded = struct.unpack("<2f", base64.b64decode(body["data"][0]["embedding"]))
    assert decoded == (0.5, -1.0)
    req.body["encoding_format"] = "float"
    body = orjson.loads(ADAPTER.parse_response(req, orjson.dumps(resp)).body)
    assert body["data"][1]["embedding"] == [0.25, 2.0]


# -- over HTTP, against the mock ---------------------------------------------------------------


def mock_target(root: str, mock: GeminiMock) -> Target:
    return Target(root + "/v1beta", "gemini-2.5-flash", mock.api_key)


async def test_http_non_stream_with_tool_call_round_trip() -> None:
    mock = GeminiMock(Reply([Text("Checking."), ToolCall("weather", {"city": "Paris"},
                                                         signature="SIG")],
                            input_tokens=11, output_tokens=3, thoughts_tokens=2),
                      require_signatures=True)
    async with running(mock) as root:
        first = await attempt(ADAPTER, chat(HI, tools=[WEATHER]), mock_target(root, mock))
        message = orjson.loads(first.body)["choices"][0]["message"]
        assert message["content"] == "Checking."
        # The client sends the assistant message back as it got it, then the result.
        follow = [*HI, {k: v for k, v in message.items() if v is not None},
                  {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                   "content": "sunny"}]
        second = await attempt(ADAPTER, chat(follow, tools=[WEATHER]), mock_target(root, mock))
    assert second.status == 200
    assert first.usage is not None and (first.usage.prompt_tokens,
                                        first.usage.completion_tokens) == (11, 5)
    sent = mock.last
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == mock.api_key
    assert sent.body["contents"][1]["parts"][1]["thoughtSignature"] == "SIG"


async def test_http_stream_ends_at_finish_reason_without_done() -> None:
    mock = GeminiMock(Reply([Text("Hello there, friend.")], output_tokens=4))
    async with running(mock) as root:
        result = await attempt(ADAPTER, chat(HI, stream=True, include_usage=True),
                               mock_target(root, mock))
    chunks = result.events()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there, friend."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert mock.last.query == {"alt": "sse"}


async def test_http_rate_limited_with_retry_info() -> None:
    mock = GeminiMock()
    mock.fail(Failure(429, "Resource has been exhausted (e.g. check quota).", retry_after=12))
    async with running(mock) as root:
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI, stream=True), mock_target(root, mock))
    assert (info.value.kind, info.value.retry_after) == (FailureKind.RATE_LIMITED, 12.0)
    assert info.value.error_class is ErrorClass.RETRYABLE


async def test_http_error_mid_stream() -> None:
    mock = GeminiMock(Reply([Text("one two three")]))
    mock.fail(Failure(503, "The model is overloaded.", mid_stream=True))
    async with running(mock) as root:
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI, stream=True), mock_target(root, mock))
    assert (info.value.kind, info.value.status) == (FailureKind.SERVER, 503)


async def test_http_embeddings_and_bad_key() -> None:
    mock = GeminiMock()
    req = CanonicalRequest("embeddings", "pub", {"model": "pub", "input": "hello",
                                                 "dimensions": 4})
    async with running(mock) as root:
        result = await attempt(ADAPTER, req, mock_target(root, mock))
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI), Target(root + "/v1beta", "g", "wrong"))
    assert len(orjson.loads(result.body)["data"][0]["embedding"]) == 4
    assert (info.value.kind, info.value.status) == (FailureKind.REJECTED, 400)
