"""The Anthropic adapter: Messages answers and streams → the OpenAI shape, golden and over HTTP
(requests: test_anthropic_request.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.anthropic import AnthropicAdapter, AnthropicStream
from gateway.canonical import (
    ErrorClass,
    FailureKind,
    Target,
    UpstreamFailure,
    Usage,
)
from tests.support.chat_requests import HI, WEATHER, chat
from tests.support.provider_mocks import (
    AnthropicMock,
    Failure,
    Reply,
    Text,
    ToolCall,
    attempt,
    running,
)

ADAPTER = AnthropicAdapter()


MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3,
              "cache_read_input_tokens": 20, "output_tokens": 7},
}


def test_message_becomes_chat_completion_with_cache_aware_usage() -> None:
    result = ADAPTER.parse_response(chat(HI), orjson.dumps(MESSAGE))
    body = orjson.loads(result.body)
    assert body["id"] == "msg_1" and body["object"] == "chat.completion"
    assert body["model"] == "claude-up" and isinstance(body["created"], int)
    # The thinking block comes back whole (signature included) beside its text.
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                                "message": {"role": "assistant", "content": "Let me check.",
                                            "refusal": None, "tool_calls": [
                                                {"id": "toolu_1", "type": "function",
                                                 "function": {"name": "weather",
                                                              "arguments": '{"city":"Paris"}'}}],
                                            "reasoning_content": "hmm", "thinking_blocks": [
                                                {"type": "thinking", "thinking": "hmm",
                                                 "signature": "s"}]}}]
    # prompt_tokens = input + cache creation + cache read; cached = cache read, and the
    # cache write is counted apart too
    assert body["usage"] == {"prompt_tokens": 33, "completion_tokens": 7, "total_tokens": 40,
                             "prompt_tokens_details": {"cached_tokens": 20,
                                                       "cache_write_tokens": 3}}
    assert result.usage == Usage(33, 7, cached_tokens=20, cache_write_tokens=3)


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("model_context_window_exceeded", "length"), (None, "stop"),
])
def test_stop_reasons(stop: str | None, finish: str) -> None:
    msg = {**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop}
    body = orjson.loads(ADAPTER.parse_response(chat(HI), orjson.dumps(msg)).body)
    assert body["choices"][0]["finish_reason"] == finish
    assert "tool_calls" not in body["choices"][0]["message"]


def test_unusable_bodies_are_protocol_errors() -> None:
    for bad in (b"not json", b"[1]"):
        with pytest.raises(UpstreamFailure) as info:
            ADAPTER.parse_response(chat(HI), bad)
        assert info.value.kind is FailureKind.PROTOCOL


# -- streams -----------------------------------------------------------------------------------


def ev(name: str, **data: Any) -> tuple[bytes, bytes]:
    return name.encode(), orjson.dumps({"type": name, **data})


TOOL_STREAM = [
    ev("message_start", message={**MESSAGE, "content": [], "stop_reason": None,
                                 "usage": {"input_tokens": 10, "cache_read_input_tokens": 20,
                                           "output_tokens": 1}}),
    ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    ev("ping"),
    ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me"}),
    ev("content_block_delta", index=0, delta={"type": "text_delta", "text": " check."}),
    ev("content_block_stop", index=0),
    ev("content_block_start", index=1, content_block={"type": "tool_use", "id": "toolu_1",
                                                      "name": "weather", "input": {}}),
    ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
    ev("content_block_delta", index=1,
       delta={"type": "input_json_delta", "partial_json": '{"city": '}),
    ev("content_block_delta", index=1,
       delta={"type": "input_json_delta", "partial_json": '"Paris"}'}),
    ev("content_block_stop", index=1),
    ev("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None},
       usage={"output_tokens": 15}),
    ev("message_stop"),
]


def translate(events: list[tuple[bytes, bytes]], include_usage: bool = False
              ) -> tuple[AnthropicStream, list[list[Any]]]:
    """Feed events one by one; per event, the (delta, finish_reason) of each chunk."""
    tr = ADAPTER.stream_translator(chat(HI, stream=True, include_usage=include_usage))
    out = []
    for name, data in events:
        out.append([_summary(c.data) for c in tr.feed(name, data)])
    return tr, out


def _summary(data: bytes) -> Any:
    if not data:
        return "usage (dropped)"
    obj = orjson.loads(data)
    assert obj["object"] == "chat.completion.chunk" and obj["id"] == "msg_1"
    if not obj["choices"]:
        return {"usage": obj["usage"]}
    (c,) = obj["choices"]
    return (c["delta"], c["finish_reason"])


def test_stream_translated_event_by_event() -> None:
    tr, out = translate(TOOL_STREAM)
    call = {"index": 0, "id": "toolu_1", "type": "function",
            "function": {"name": "weather", "arguments": ""}}
    assert out == [
        [],  # message_start: the role waits for content
        [],  # empty text block start
        [],  # ping
        [({"role": "assistant", "content": ""}, None), ({"content": "Let me"}, None)],
        [({"content": " check."}, None)],
        [],
        [({"tool_calls": [call]}, None)],
        [],  # the empty partial_json Anthropic opens with
        [({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}, None)],
        [({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, None)],
        [],
        [({}, "tool_calls")],
        ["usage (dropped)"],
    ]
    assert tr.finished


def test_stream_usage_is_reported_always_and_kept_when_asked() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True))
    last = [c for name, data in TOOL_STREAM for c in tr.feed(name, data)][-1]
    assert last.usage_only and last.data == b"" and last.usage is not None
    # output from message_delta; input and cache read kept from message_start
    assert (last.usage.prompt_tokens, last.usage.completion_tokens,
            last.usage.cached_tokens) == (30, 15, 20)
    _, out = translate(TOOL_STREAM, include_usage=True)
    assert out[-1] == [{"usage": {"prompt_tokens": 30, "completion_tokens": 15,
                                  "total_tokens": 45, "prompt_tokens_details": {
                                      "cached_tokens": 20}}}]


def test_stream_tool_calls_get_their_own_indexes() -> None:
    events = [TOOL_STREAM[0]]
    for block, (name, city) in enumerate([("weather", "Paris"), ("time", "Rome")]):
        events += [
            ev("content_block_start", index=block,
               content_block={"type": "tool_use", "id": f"t{block}", "name": name, "input": {}}),
            ev("content_block_delta", index=block,
               delta={"type": "input_json_delta", "partial_json": f'{{"city":"{city}"}}'}),
            ev("content_block_stop", index=block)]
    _, out = translate(events)
    deltas = [d["tool_calls"][0] for chunks in out for d, _ in chunks[-1:]]
    assert [(d["index"], d.get("id"), d["function"]) for d in deltas] == [
        (0, "t0", {"name": "weather", "arguments": ""}),
        (0, None, {"arguments": '{"city":"Paris"}'}),
        (1, "t1", {"name": "time", "arguments": ""}),
        (1, None, {"arguments": '{"city":"Rome"}'}),
    ]


def test_stream_ignores_unknown_events_and_server_tools() -> None:
    _, out = translate([
        TOOL_STREAM[0],
        ev("content_block_start", index=1, content_block={
            "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
        ev("content_block_delta", index=1,
           delta={"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
        ev("some_future_event", x=1),
    ])
    assert out == [[]] * 4


def test_stream_carries_thinking_and_its_signature() -> None:
    """thinking_delta → `reasoning_content` deltas; signature_delta (which ends the block)
    and a redacted block → `thinking_blocks`, as the client must send them back."""
    _, out = translate([
        TOOL_STREAM[0],
        ev("content_block_start", index=0,
           content_block={"type": "thinking", "thinking": "", "signature": ""}),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hm"}),
        ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQ"}),
        ev("content_block_stop", index=0),
        ev("content_block_start", index=1,
           content_block={"type": "redacted_thinking", "data": "EmwK"}),
    ])
    role = ({"role": "assistant", "content": ""}, None)
    assert out == [
        [], [],
        [role, ({"reasoning_content": "hm"}, None)],
        [({"thinking_blocks": [{"type": "thinking", "signature": "EqQ"}]}, None)],
        [],
        [({"thinking_blocks": [{"type": "redacted_thinking", "data": "EmwK"}]}, None)],
    ]


@pytest.mark.parametrize(("error_type", "kind", "status"), [
    ("overloaded_error", FailureKind.SERVER, 529),
    ("rate_limit_error", FailureKind.RATE_LIMITED, 429),
    ("api_error", FailureKind.SERVER, 500),
    ("invalid_request_error", FailureKind.REJECTED, 400),
])
def test_stream_error_event_raises(error_type: str, kind: FailureKind, status: int) -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True))
    tr.feed(*TOOL_STREAM[0])
    with pytest.raises(UpstreamFailure) as info:
        tr.feed(*ev("error", error={"type": error_type, "message": "Overloaded"}))
    assert (info.value.kind, info.value.status, info.value.message) == (kind, status, "Overloaded")


def test_stream_without_message_start_is_a_protocol_error() -> None:
    tr = ADAPTER.stream_translator(chat(HI, stream=True))
    with pytest.raises(UpstreamFailure) as info:
        tr.feed(*TOOL_STREAM[3])
    assert info.value.kind is FailureKind.PROTOCOL


# -- errors ------------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": "req_1"})


@pytest.mark.parametrize(("status", "headers", "body", "kind", "retry_after"), [
    (529, {"retry-after": "2"}, anthropic_error("overloaded_error", "Overloaded"),
     FailureKind.SERVER, 2.0),
    (429, {"retry-after": "7"}, anthropic_error("rate_limit_error", "slow down"),
     FailureKind.RATE_LIMITED, 7.0),
    (500, {}, anthropic_error("api_error", "oops"), FailureKind.SERVER, None),
    (504, {}, anthropic_error("timeout_error", "timed out"), FailureKind.TIMEOUT, None),
    (400, {}, anthropic_error("invalid_request_error",
                              "prompt is too long: 210000 tokens > 200000 maximum"),
     FailureKind.CONTEXT_LENGTH, None),
    (400, {}, anthropic_error("invalid_request_error", "bad"), FailureKind.REJECTED, None),
    (401, {}, anthropic_error("authentication_error", "invalid x-api-key"),
     FailureKind.REJECTED, None),
    (413, {}, anthropic_error("request_too_large", "too big"), FailureKind.REJECTED, None),
    (400, {"x-should-retry": "true"}, anthropic_error("invalid_request_error", "try again"),
     FailureKind.SERVER, None),
    (502, {}, b"<html>bad gateway</html>", FailureKind.SERVER, None),
])
def test_error_classes(status: int, headers: dict[str, str], body: bytes, kind: FailureKind,
                       retry_after: float | None) -> None:
    failure = ADAPTER.classify_error(status, headers, body)
    assert (failure.kind, failure.status, failure.retry_after) == (kind, status, retry_after)


def test_error_message_is_the_upstreams() -> None:
    failure = ADAPTER.classify_error(529, {}, anthropic_error("overloaded_error", "Overloaded"))
    assert failure.message == "Overloaded" and failure.error_class is ErrorClass.RETRYABLE


# -- over HTTP, against the mock ---------------------------------------------------------------


def mock_target(root: str, mock: AnthropicMock) -> Target:
    return Target(root + "/v1", "claude-up", mock.api_key)


async def test_http_non_stream() -> None:
    mock = AnthropicMock(Reply([Text("Sunny."), ToolCall("weather", {"city": "Paris"})],
                               input_tokens=9, output_tokens=4, cached_tokens=6))
    async with running(mock) as root:
        result = await attempt(ADAPTER, chat([{"role": "system", "content": "Be brief."}, *HI],
                                             tools=[WEATHER], temperature=0.3),
                               mock_target(root, mock))
    body = orjson.loads(result.body)
    message = body["choices"][0]["message"]
    assert message["content"] == "Sunny." and body["choices"][0]["finish_reason"] == "tool_calls"
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert result.usage is not None and result.usage.prompt_tokens == 15
    sent = mock.last
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == mock.api_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == [{"type": "text", "text": "Be brief."}]
    assert sent.body["temperature"] == 0.3 and sent.body["tools"][0]["name"] == "weather"


async def test_http_stream_with_ping_and_tool_arguments() -> None:
    mock = AnthropicMock(Reply([Text("Let me check."), ToolCall("weather", {"city": "Paris"})]))
    async with running(mock) as root:
        result = await attempt(ADAPTER, chat(HI, stream=True, include_usage=True),
                               mock_target(root, mock))
    chunks = result.events()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    args = "".join(tc["function"]["arguments"] for c in chunks if c["choices"]
                   for tc in c["choices"][0]["delta"].get("tool_calls") or [])
    assert text == "Let me check." and orjson.loads(args) == {"city": "Paris"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:-1]] == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert mock.last.body["stream"] is True


async def test_http_overloaded_529_is_retryable_with_retry_after() -> None:
    mock = AnthropicMock()
    mock.fail(Failure(529, "Overloaded", retry_after=3))
    async with running(mock) as root:
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI), mock_target(root, mock))
        assert (info.value.kind, info.value.status, info.value.retry_after) == (
            FailureKind.SERVER, 529, 3.0)
        assert info.value.error_class is ErrorClass.RETRYABLE
        again = await attempt(ADAPTER, chat(HI), mock_target(root, mock))  # failure used up
    assert again.status == 200


async def test_http_error_event_mid_stream() -> None:
    mock = AnthropicMock()
    mock.fail(Failure(529, "Overloaded", mid_stream=True))
    async with running(mock) as root:
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI, stream=True), mock_target(root, mock))
    assert (info.value.kind, info.value.status) == (FailureKind.SERVER, 529)


async def test_http_mock_rejects_what_the_real_api_rejects() -> None:
    mock = AnthropicMock()
    async with running(mock) as root:
        bad_key = Target(root + "/v1", "claude-up", "wrong")
        with pytest.raises(UpstreamFailure) as info:
            await attempt(ADAPTER, chat(HI), bad_key)
        assert (info.value.kind, info.value.status) == (FailureKind.REJECTED, 401)
        new_api = Target(root + "/v1", "claude-up", mock.api_key,
                         options={"anthropic_version": "2026-10-21"})
        result = await attempt(ADAPTER, chat(HI, temperature=0.5), new_api)
    assert result.status == 200 and "temperature" not in mock.last.body
