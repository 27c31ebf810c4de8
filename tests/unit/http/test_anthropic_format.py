"""The Anthropic Messages surface's translations, golden and checked with the official SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from adapters.anthropic import FINISH_REASONS, AnthropicAdapter
from gateway.canonical import StreamChunk, Target, Usage
from gateway.errors import GatewayError
from gateway.http.anthropic_answers import (
    STOP_REASONS,
    StreamEncoder,
    error_body,
    error_event,
    error_type,
    message_body,
)
from gateway.http.anthropic_schema import canonical
from gateway.wire.sse import SSEParser
from tests.support.provider_mocks import Replay, serving


def request(**fields: Any) -> bytes:
    body = {"model": "claude-pub", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}], **fields}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


# -- (1) requests ------------------------------------------------------------------------------


def test_minimal_request() -> None:
    req = canonical(request(), "rid")
    assert (req.operation, req.model, req.stream, req.include_usage, req.request_id) == (
        "chat", "claude-pub", False, False, "rid")
    assert req.body == {"model": "claude-pub", "max_tokens": 100,
                        "messages": [{"role": "user", "content": "hi"}]}


def test_full_request_in_openai_shape() -> None:
    req = canonical(request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        stream=True, temperature=0.5, top_p=0.9, top_k=5, stop_sequences=["END"],
        metadata={"user_id": "u-1"}, thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[{"name": "weather", "description": "Weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf",
                                                "data": "JVBER"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "And Rome?"}]},
        ]), "rid")
    assert req.stream and not req.include_usage
    assert req.body == {
        "model": "claude-pub", "max_tokens": 100, "stream": True,
        "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop": ["END"], "user": "u-1",
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "parallel_tool_calls": False,
        # thinking changes the answer, so it is part of the canonical body (cache key)
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBER"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "user", "content": [{"type": "text", "text": "And Rome?"}]},
        ],
    }
    # ... and the request as the client wrote it rides beside it, for Anthropic upstreams
    assert req.native is not None and req.native.stands_for(req)
    assert req.native.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert req.native.body["messages"][1]["content"][0]["signature"] == "s"


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "any"}, "required"),
    ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    assert canonical(request(tool_choice=choice), "r").body["tool_choice"] == expected


def test_system_string_and_structured_output() -> None:
    body = canonical(request(system="Be brief.", output_config={"format": {
        "type": "json_schema", "schema": {"type": "object"}}}), "r").body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": {"type": "object"}}}


def test_round_trip_through_the_anthropic_adapter_keeps_the_conversation() -> None:
    """Anthropic in, OpenAI shape in the middle, Anthropic out: the messages survive."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
            {"type": "text", "text": "Thanks"}]},
    ]
    req = canonical(request(messages=messages, system="Be brief.", stop_sequences=["X"]), "r")
    # Translated (as a continuation's changed body is): the conversation survives.
    req.native = None
    up = AnthropicAdapter().build_request(req, Target("http://a/v1", "claude-up", "k"))
    body = orjson.loads(up.body)
    assert body["messages"] == messages
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert (body["max_tokens"], body["stop_sequences"]) == (100, ["X"])


@pytest.mark.parametrize(("raw", "param", "words"), [
    (b"", None, "empty"),
    (b"{nope", None, "not valid JSON"),
    (request(max_tokens=None), "max_tokens", "required"),
    (request(max_tokens=0), "max_tokens", ">= 1"),
    (request(model=""), "model", "required"),
    (request(messages=[]), "messages", "non-empty"),
    (request(messages=[{"role": "system", "content": "x"}]), "messages.0.role", "'user'"),
    (request(messages=[{"role": "user", "content": 3}]), "messages.0.content", "string"),
    (request(messages=[{"role": "user", "content": [{"type": "video"}]}]),
     "messages.0.content.0.type", "'video'"),
    (request(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
     "messages.0.content.0.source", "image source"),
    (request(temperature=1.5), "temperature", "between 0 and 1"),
    (request(stop_sequences="END"), "stop_sequences", "list of strings"),
    (request(tool_choice={"type": "sometimes"}), "tool_choice", "auto, any"),
    (request(tool_choice={"type": "tool"}), "tool_choice.name", "required"),
    (request(tools=[{"name": "t"}]), "tools.0.input_schema", "required"),
    (request(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools.0.type", "not supported"),
    (request(system=[{"type": "image"}]), "system", "text blocks"),
])
def test_invalid_requests_are_400s_with_the_field(raw: bytes, param: str | None,
                                                  words: str) -> None:
    with pytest.raises(GatewayError) as info:
        canonical(raw, "r")
    assert info.value.status == 400 and info.value.param == param
    assert words in info.value.message


# -- (2) responses -----------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str, **choice: Any) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                  "prompt_tokens_details": {"cached_tokens": 20}},
    })


def test_completion_becomes_message() -> None:
    raw = completion({"content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls")
    assert orjson.loads(message_body(raw, "claude-pub")) == {
        "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-pub",
        "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "weather",
                     "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        # Anthropic's input_tokens leaves out the cached ones
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 20, "output_tokens": 7},
    }


@pytest.mark.parametrize(("finish", "extra", "stop", "sequence"), [
    ("stop", {}, "end_turn", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the match
    ("stop", {"stop_reason": 128001}, "end_turn", None),  # a stop token id is not a sequence
    ("length", {}, "max_tokens", None),
    ("content_filter", {}, "refusal", None),
    ("function_call", {}, "tool_use", None),
])
def test_stop_reasons(finish: str, extra: dict[str, Any], stop: str,
                      sequence: str | None) -> None:
    msg = orjson.loads(message_body(completion({"content": "x"}, finish, **extra)))
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop, sequence)


def test_stop_reason_map_inverts_the_adapters() -> None:
    for finish, stop in STOP_REASONS.items():
        if finish != "function_call":
            assert FINISH_REASONS[stop] == finish


@pytest.mark.parametrize(("arguments", "relayed"), [
    ('{"city":"Paris"}', {"city": "Paris"}),
    ("1e+23", 1e23),  # what vLLM's tiny model answers a forced call with
    ("{oops", "{oops"),  # not JSON: the text, never a silent {}
    ("", {}),
])
def test_tool_arguments_are_relayed_as_the_model_wrote_them(arguments: str,
                                                            relayed: Any) -> None:
    raw = completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        "stop")  # vLLM's finish_reason for a forced tool call
    message = orjson.loads(message_body(raw))
    assert message["content"] == [{"type": "tool_use", "id": "c", "name": "f",
                                   "input": relayed}]
    assert message["stop_reason"] == "tool_use"  # an answer holding a tool call


def test_a_tool_call_cut_by_max_tokens_says_max_tokens() -> None:
    raw = completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]},
        "length")
    assert orjson.loads(message_body(raw))["stop_reason"] == "max_tokens"


def test_cache_usage_and_thinking_come_back_in_anthropic_shape() -> None:
    """Canonical usage counts cache reads and writes inside prompt_tokens; Anthropic's
    input_tokens excludes both. Signed thinking blocks come back first, unchanged."""
    body = orjson.loads(completion({
        "content": "Hi", "reasoning_content": "hm",
        "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "EqQ"},
                            {"type": "redacted_thinking", "data": "EmwK"}]}, "stop"))
    body["usage"] = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
                     "prompt_tokens_details": {"cached_tokens": 700, "cache_write_tokens": 200}}
    message = orjson.loads(message_body(orjson.dumps(body)))
    assert message["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": "EqQ"},
        {"type": "redacted_thinking", "data": "EmwK"}, {"type": "text", "text": "Hi"}]
    assert message["usage"] == {"input_tokens": 100, "cache_creation_input_tokens": 200,
                                "cache_read_input_tokens": 700, "output_tokens": 50}


def test_reasoning_from_an_openai_compatible_upstream_is_an_unsigned_thinking_block() -> None:
    # vLLM >= 0.10 names it `reasoning`, older ones and most hosts `reasoning_content`
    for field in ("reasoning", "reasoning_content"):
        message = orjson.loads(message_body(completion({"content": "Hi", field: "so"}, "stop")))
        assert message["content"][0] == {"type": "thinking", "thinking": "so", "signature": ""}


# -- (3) streams -------------------------------------------------------------------------------


def oa_chunk(delta: dict[str, Any] | None, finish: str | None = None) -> StreamChunk:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return StreamChunk(orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                                     "created": 1, "model": "m", "choices": choices}))


USAGE = Usage(prompt_tokens=30, completion_tokens=9, cached_tokens=20)
TOOL_CHUNKS = [
    oa_chunk({"role": "assistant", "content": ""}),
    oa_chunk({"content": "Let me"}),
    oa_chunk({"content": " check."}),
    oa_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                              "function": {"name": "weather", "arguments": ""}}]}),
    oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    oa_chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                              "function": {"name": "time", "arguments": "{}"}}]}),
    oa_chunk({}, "tool_calls"),
    StreamChunk(b"", usage=USAGE, usage_only=True),
]


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    parser, out = SSEParser(), []
    for line in data.splitlines(keepends=True):
        event = parser.feed_line(line)
        if event is not None:
            assert event.event is not None
            obj = orjson.loads(event.data)
            assert obj["type"] == event.event.decode()  # named twice, the same way
            out.append((event.event.decode(), obj))
    return out


def encode_all(chunks: list[StreamChunk], **kwargs: Any) -> bytes:
    enc = StreamEncoder("claude-pub", "msg_1", **kwargs)
    return b"".join(enc.feed(c) for c in chunks) + enc.end()


def test_stream_encoded_chunk_by_chunk_in_anthropic_order() -> None:
    enc = StreamEncoder("claude-pub", "msg_1", input_tokens=25)
    per_chunk = [[name for name, _ in events(enc.feed(c))] for c in TOOL_CHUNKS]
    assert per_chunk == [
        ["message_start"],
        ["content_block_start", "content_block_delta"],
        ["content_block_delta"],
        ["content_block_stop", "content_block_start"],
        ["content_block_delta"],
        ["content_block_delta"],
        ["content_block_stop", "content_block_start", "content_block_delta"],
        ["content_block_stop"],
        [],
    ]
    assert [name for name, _ in events(enc.end())] == ["message_delta", "message_stop"]


def test_stream_event_payloads() -> None:
    got = events(encode_all(TOOL_CHUNKS, input_tokens=25))
    assert got[0][1]["message"] == {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "model": "claude-pub", "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 0}}
    data = [obj for _, obj in got[1:]]
    assert data[0] == {"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}
    assert data[1]["delta"] == {"type": "text_delta", "text": "Let me"}
    assert data[4] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "weather", "input": {}}}
    assert data[5] == {"type": "content_block_delta", "index": 1,
                       "delta": {"type": "input_json_delta", "partial_json": '{"city":'}}
    assert data[-2] == {"type": "message_delta",
                        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0,
                                  "cache_read_input_tokens": 20, "output_tokens": 9}}
    assert data[-1] == {"type": "message_stop"}


def test_stream_usage_from_a_kept_usage_chunk_and_empty_streams() -> None:
    kept = StreamChunk(orjson.dumps({"id": "c", "choices": [], "usage": {
        "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}))
    got = events(encode_all([oa_chunk({"content": "x"}, "length"), kept]))
    assert got[-2][1]["usage"]["output_tokens"] == 2
    assert got[-2][1]["delta"]["stop_reason"] == "max_tokens"
    empty = [name for name, _ in events(encode_all([]))]
    assert empty == ["message_start", "message_delta", "message_stop"]


def sdk_client(root: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root, api_key="k", max_retries=0)


ASK: dict[str, Any] = {"model": "claude-pub", "max_tokens": 100,
                       "messages": [{"role": "user", "content": "hi"}]}


def test_the_official_sdk_accumulates_the_encoded_stream() -> None:
    with serving(Replay(encode_all(TOOL_CHUNKS))) as root, \
            sdk_client(root).messages.stream(**ASK) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Let me check."
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    tool = final.content[1]
    assert tool.type == "tool_use" and (tool.id, tool.name, tool.input) == (
        "call_1", "weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use" and final.id == "msg_1"
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (10, 20, 9)


THINKING_CHUNKS = [
    oa_chunk({"role": "assistant", "content": ""}),
    oa_chunk({"reasoning_content": "Let me "}),
    oa_chunk({"reasoning_content": "think."}),
    oa_chunk({"thinking_blocks": [{"type": "thinking", "signature": "EqQBCg"}]}),
    oa_chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": "EmwK"}]}),
    oa_chunk({"content": "Hi"}),
    oa_chunk({}, "stop"),
]


def test_thinking_streams_as_thinking_signature_and_redacted_blocks() -> None:
    got = [(name, obj.get("index"), obj.get("delta") or obj.get("content_block"))
           for name, obj in events(encode_all(THINKING_CHUNKS))][1:-2]
    assert got == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Let me "}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "think."}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": "EqQBCg"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "redacted_thinking", "data": "EmwK"}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "text", "text": ""}),
        ("content_block_delta", 2, {"type": "text_delta", "text": "Hi"}),
        ("content_block_stop", 2, None),
    ]


def test_the_official_sdk_accumulates_streamed_thinking() -> None:
    with serving(Replay(encode_all(THINKING_CHUNKS))) as root, \
            sdk_client(root).messages.stream(**ASK) as stream:
        final = stream.get_final_message()
    thinking, redacted, text = final.content
    assert thinking.type == "thinking" and (thinking.thinking, thinking.signature) == (
        "Let me think.", "EqQBCg")
    assert redacted.type == "redacted_thinking" and redacted.data == "EmwK"
    assert text.type == "text" and text.text == "Hi" and final.stop_reason == "end_turn"


def test_the_official_sdk_parses_the_message_body() -> None:
    raw = message_body(completion({"content": "Hi!"}, "stop"), "claude-pub")
    with serving(Replay(raw, content_type="application/json")) as root:
        msg = sdk_client(root).messages.create(**ASK)
    assert msg.content[0].type == "text" and msg.content[0].text == "Hi!"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens == 10


# -- (4) errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
    (422, "invalid_request_error"),
])
def test_error_types(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_error_body_shape() -> None:
    err = GatewayError(429, "slow down", type="rate_limit", code="x")
    assert orjson.loads(error_body(err, "req_1")) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "slow down"},
        "request_id": "req_1"}
    assert orjson.loads(error_body(err)) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


@pytest.mark.parametrize(("status", "exc"), [
    (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
    (429, anthropic.RateLimitError), (529, anthropic.OverloadedError),
])
def test_the_official_sdk_maps_error_bodies(status: int, exc: type[Exception]) -> None:
    raw = error_body(GatewayError(status, "nope"), "req_1")
    with serving(Replay(raw, status=status, content_type="application/json")) as root, \
            pytest.raises(exc) as info:
        sdk_client(root).messages.create(**ASK)
    assert "nope" in str(info.value)


def test_the_official_sdk_raises_on_the_error_event() -> None:
    enc = StreamEncoder("claude-pub")
    raw = enc.feed(oa_chunk({"content": "Hel"})) + error_event(
        GatewayError(503, "upstream x failed: overloaded"))
    with serving(Replay(raw)) as root, pytest.raises(anthropic.APIStatusError) as info, \
            sdk_client(root).messages.stream(**ASK) as stream:
        for _ in stream:
            pass
    assert "overloaded_error" in str(info.value)
