"""The Responses API's stream, as golden streams: canonical chunks in, the exact typed
event sequence out, as OpenAI documents it (platform.openai.com/docs/api-reference/
responses-streaming: response.created, response.in_progress, per item
output_item.added → content_part.added → deltas → .done → content_part.done →
output_item.done, function calls with function_call_arguments.delta/.done, then
response.completed / response.incomplete; `error` and response.failed on a failure),
each event named in its `event:` line and its `type`, sequence numbers from 0. Then the
official SDK's own accumulator reads the stream."""

from __future__ import annotations

from typing import Any

import orjson
from openai import OpenAI

from gateway.canonical import StreamChunk, Usage
from gateway.errors import GatewayError
from gateway.http.responses_format import ResponsesFormat
from gateway.wire.sse import SSEParser
from tests.support.provider_mocks import Replay, serving


def chunk(delta: dict[str, Any], finish: str | None = None) -> StreamChunk:
    return StreamChunk(orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                                     "created": 1, "model": "up", "choices": [
                                         {"index": 0, "delta": delta,
                                          "finish_reason": finish}]}))


USAGE = StreamChunk(b"", usage=Usage(20, 9, cached_tokens=8, reasoning_tokens=3),
                    usage_only=True)


def encoded(chunks: list[StreamChunk], **request: Any) -> tuple[ResponsesFormat, bytes]:
    fmt = ResponsesFormat()
    body = {"model": "pub", "input": "hi", "stream": True, **request}
    req = fmt.parse("chat", orjson.dumps(body), "rid")
    enc = fmt.stream_encoder(req)
    return fmt, b"".join(enc.chunk(c) for c in chunks) + enc.end()


def events(data: bytes) -> list[dict[str, Any]]:
    parser, out = SSEParser(), []
    for line in data.splitlines(keepends=True):
        event = parser.feed_line(line)
        if event is not None:
            obj = orjson.loads(event.data)
            assert event.event is not None and obj["type"] == event.event.decode()
            out.append(obj)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_golden_text_stream() -> None:
    fmt, data = encoded([chunk({"role": "assistant", "content": ""}),
                         chunk({"content": "Hel"}), chunk({"content": "lo"}),
                         chunk({}, "stop"), USAGE])
    got = events(data)
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    created, item_id = got[0]["response"], got[2]["item"]["id"]
    assert (created["status"], created["output"], created["model"]) == ("in_progress", [], "pub")
    assert got[2] == {"type": "response.output_item.added", "output_index": 0,
                      "sequence_number": 2, "item": {
                          "id": item_id, "type": "message", "role": "assistant",
                          "status": "in_progress", "content": []}}
    assert got[3]["part"] == {"type": "output_text", "text": "", "annotations": [],
                              "logprobs": []}
    assert got[4] == {"type": "response.output_text.delta", "item_id": item_id,
                      "output_index": 0, "content_index": 0, "delta": "Hel", "logprobs": [],
                      "sequence_number": 4}
    assert got[6]["text"] == "Hello" and got[7]["part"]["text"] == "Hello"
    done = got[8]["item"]
    assert done["status"] == "completed" and done["content"][0]["text"] == "Hello"
    final = got[9]["response"]
    assert final["status"] == "completed" and final["output"] == [done]
    assert final["usage"] == {"input_tokens": 20, "input_tokens_details": {
        "cached_tokens": 8, "cache_write_tokens": 0}, "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 29}
    assert fmt.final == final  # what is stored


def test_golden_reasoning_then_function_calls() -> None:
    _, data = encoded([
        chunk({"reasoning_content": "Think"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), USAGE])
    got = events(data)
    assert [(e["type"], e.get("output_index")) for e in got[2:]] == [
        ("response.output_item.added", 0), ("response.content_part.added", 0),
        ("response.reasoning_text.delta", 0), ("response.reasoning_text.done", 0),
        ("response.content_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1), ("response.output_item.added", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 1), ("response.output_item.done", 1),
        ("response.function_call_arguments.done", 2), ("response.output_item.done", 2),
        ("response.completed", None)]
    reasoning = got[7]["item"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [
        {"type": "reasoning_text", "text": "Think"}]
    call = got[14]["item"]
    assert {k: call[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call", "call_id": "call_a", "name": "weather",
        "arguments": '{"city":"Paris"}', "status": "completed"}
    assert got[13] == {"type": "response.function_call_arguments.done", "item_id": call["id"],
                       "output_index": 1, "name": "weather", "arguments": '{"city":"Paris"}',
                       "sequence_number": 13}
    assert [i["type"] for i in got[-1]["response"]["output"]] == [
        "reasoning", "function_call", "function_call"]


def test_golden_incomplete_stream() -> None:
    _, data = encoded([chunk({"content": "cut"}), chunk({}, "length"), USAGE],
                      max_output_tokens=9)
    got = events(data)
    assert got[-1]["type"] == "response.incomplete"
    final = got[-1]["response"]
    assert final["status"] == "incomplete" and final["max_output_tokens"] == 9
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert got[-2]["item"]["status"] == "incomplete"


def test_a_failure_after_the_head_ends_with_error_and_response_failed() -> None:
    fmt = ResponsesFormat()
    req = fmt.parse("chat", b'{"model": "pub", "input": "hi", "stream": true}', "rid")
    enc = fmt.stream_encoder(req)
    data = enc.chunk(chunk({"content": "par"})) + enc.error(
        GatewayError(502, "upstream cut the stream", type="server_error",
                     code="upstream_protocol_error"))
    got = events(data)
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert got[-2] == {"type": "error", "code": "upstream_protocol_error",
                       "message": "upstream cut the stream", "param": None,
                       "sequence_number": len(got) - 2}
    failed = got[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "upstream_protocol_error", "message": "upstream cut the stream"}
    assert fmt.final is None  # a failed response is not stored


def test_the_official_sdk_accumulates_the_stream() -> None:
    _, data = encoded([chunk({"content": "Hello"}),
                       chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]}),
                       chunk({}, "tool_calls"), USAGE])
    with serving(Replay(data)) as root:
        client = OpenAI(base_url=root + "/v1", api_key="k", max_retries=0)
        with client.responses.stream(model="pub", input="hi") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert deltas == ["Hello"] and final.output_text == "Hello"
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 3
