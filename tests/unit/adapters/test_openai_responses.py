"""Answers of an upstream's own Responses API (as vLLM 0.32 sends them: recorded from the
real server, trimmed) back into the canonical chat shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.openai import OpenAIAdapter
from gateway.canonical import CanonicalRequest, FailureKind, NativeRequest, UpstreamFailure, Usage

ADAPTER = OpenAIAdapter()


def request(stream: bool = False) -> CanonicalRequest:
    body: dict[str, Any] = {"model": "pub", "messages": [{"role": "user", "content": "hi"}]}
    req = CanonicalRequest("chat", "pub", body, stream)
    req.native = NativeRequest("openai.responses", {"model": "pub", "input": "hi"}, body)
    return req


USAGE = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0,
                                                      "cache_write_tokens": 0},
         "output_tokens": 58, "output_tokens_details": {"reasoning_tokens": 0},
         "total_tokens": 69}
RESPONSE = {
    "id": "resp_8995", "created_at": 1796665223, "object": "response", "model": "tiny-llama",
    "status": "completed", "incomplete_details": None,
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Hmm."}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"annotations": [], "text": "Calling.", "type": "output_text"}]},
        {"arguments": "1e+23", "call_id": "chatcmpl-tool-a3", "name": "get_weather",
         "type": "function_call", "id": "fc_a3", "status": "completed"}],
    "usage": USAGE,
}


def test_a_response_becomes_a_chat_completion() -> None:
    result = ADAPTER.parse_response(request(), orjson.dumps(RESPONSE))
    body = orjson.loads(result.body)
    assert body["id"] == "resp_8995" and body["object"] == "chat.completion"
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                                "message": {"role": "assistant", "content": "Calling.",
                                            "refusal": None, "reasoning_content": "Hmm.",
                                            "tool_calls": [{
                                                "id": "chatcmpl-tool-a3", "type": "function",
                                                "function": {"name": "get_weather",
                                                             "arguments": "1e+23"}}]}}]
    assert result.usage == Usage(11, 58)


def test_incomplete_and_failed_responses() -> None:
    # vLLM reports a length stop as status incomplete (in a response.completed event)
    cut = {**RESPONSE, "status": "incomplete", "output": RESPONSE["output"][1:2],
           "incomplete_details": {"reason": "max_output_tokens"}}
    body = orjson.loads(ADAPTER.parse_response(request(), orjson.dumps(cut)).body)
    assert body["choices"][0]["finish_reason"] == "length"
    failed = {**RESPONSE, "status": "failed", "error": {"code": "server_error",
                                                        "message": "engine died"}}
    with pytest.raises(UpstreamFailure) as info:
        ADAPTER.parse_response(request(), orjson.dumps(failed))
    assert (info.value.kind, info.value.message) == (FailureKind.SERVER, "engine died")


def ev(kind: str, **data: Any) -> tuple[bytes, bytes]:
    return kind.encode(), orjson.dumps({"type": kind, **data, "sequence_number": 0})


STREAM = [
    ev("response.created", response={**RESPONSE, "status": "in_progress", "output": [],
                                     "usage": None}),
    ev("response.in_progress", response={**RESPONSE, "status": "in_progress", "output": []}),
    ev("response.output_item.added", output_index=0, item={
        "id": "msg_9c", "content": [], "role": "assistant", "status": "in_progress",
        "type": "message"}),
    ev("response.content_part.added", content_index=0, item_id="msg_9c", output_index=0,
       part={"annotations": [], "text": "", "type": "output_text", "logprobs": []}),
    ev("response.output_text.delta", content_index=0, delta="am", item_id="msg_9c",
       logprobs=[], output_index=0),
    ev("response.output_text.done", content_index=0, item_id="msg_9c", logprobs=[],
       output_index=0, text="am"),
    ev("response.output_item.added", output_index=1, item={
        "arguments": "", "call_id": "call_7", "name": "f", "type": "function_call",
        "id": "fc_7", "status": "in_progress"}),
    ev("response.function_call_arguments.delta", delta="{}", item_id="fc_7", output_index=1),
    ev("response.completed", response={**RESPONSE, "status": "completed"}),
]


def test_a_responses_stream_becomes_chat_chunks() -> None:
    tr = ADAPTER.stream_translator(request(stream=True))
    out = [[(orjson.loads(c.data)["choices"] if c.data else None, c.usage)
            for c in tr.feed(name, data)] for name, data in STREAM]
    assert tr.finished
    delta = [[(ch[0]["delta"], ch[0]["finish_reason"]) if ch else None for ch, _ in step]
             for step in out]
    assert delta == [
        [], [], [], [],
        [({"role": "assistant", "content": ""}, None), ({"content": "am"}, None)],
        [],
        [({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                           "function": {"name": "f", "arguments": ""}}]}, None)],
        [({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, None)],
        [({}, "tool_calls"), None],
    ]
    assert out[-1][-1][1] == Usage(11, 58)  # usage last, dropped for the client


def test_a_chat_stream_of_a_responses_request_passes_as_chat() -> None:
    """A deployment without the Responses API answered the translated request."""
    tr = ADAPTER.stream_translator(request(stream=True))
    chunk = b'{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{}}]}'
    assert [c.data for c in tr.feed(None, chunk)] == [chunk]
    assert tr.feed(None, b"[DONE]") == [] and tr.finished


def test_an_error_event_fails_the_attempt() -> None:
    tr = ADAPTER.stream_translator(request(stream=True))
    tr.feed(*STREAM[0])
    with pytest.raises(UpstreamFailure) as info:
        tr.feed(*ev("error", code="server_error", message="boom", param=None))
    assert info.value.kind is FailureKind.SERVER and info.value.message == "boom"
