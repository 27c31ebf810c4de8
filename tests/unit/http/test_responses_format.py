"""A Responses request's two upstream forms (the canonical chat body every deployment
takes, and the native body for deployments serving the Responses API), its validation,
and a canonical answer rendered as a Response."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.openai import OpenAIAdapter
from gateway.canonical import Target
from gateway.errors import GatewayError
from gateway.http.responses_format import ResponsesFormat
from gateway.http.responses_schema import history

TOOLS = [{"type": "function", "name": "weather", "description": "Weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
          "strict": True}]


def parse(**body: Any) -> tuple[ResponsesFormat, Any]:
    fmt = ResponsesFormat()
    req = fmt.parse("chat", orjson.dumps({"model": "pub", **body}), "rid")
    return fmt, req


def test_every_field_in_the_canonical_body() -> None:
    _, req = parse(
        instructions="Be brief.", stream=True, temperature=0.2, top_p=0.9,
        max_output_tokens=50, tools=TOOLS, tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False, reasoning={"effort": "low"}, metadata={"k": "v"},
        text={"format": {"type": "json_schema", "name": "w", "strict": True,
                         "schema": {"type": "object"}}},
        input=[
            {"role": "user", "content": [
                {"type": "input_text", "text": "Paris?"},
                {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "developer", "content": "Answer in French."},
        ])
    assert req.stream and not req.include_usage and req.model == "pub"
    assert req.body == {
        "model": "pub", "stream": True, "temperature": 0.2, "top_p": 0.9,
        "parallel_tool_calls": False, "max_completion_tokens": 50,
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "w", "schema": {"type": "object"}, "strict": True}},
        "reasoning_effort": "low",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Paris?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png",
                                                    "detail": "low"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "system", "content": "Answer in French."},
        ]}


def test_a_previous_response_expands_the_native_and_the_canonical_body() -> None:
    fmt, req = parse(input=[{"type": "function_call_output", "call_id": "c1",
                             "output": "sunny"}],
                     previous_response_id="resp_1", instructions="Now.", store=True)
    stored = {"input": [{"id": "msg_1", "type": "message", "role": "user", "status": "completed",
                         "content": [{"type": "input_text", "text": "Paris?"}]}],
              "response": {"output": [
                  {"id": "rs_1", "type": "reasoning", "summary": [], "content": []},
                  {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "weather",
                   "arguments": "{}", "status": "completed"}]}}
    fmt.expand(req, history(stored))
    assert req.native is not None and req.native.stands_for(req)
    # Upstream the conversation is whole, without our ids or reasoning items, not stored.
    assert req.native.body == {
        "model": "pub", "instructions": "Now.", "store": False, "input": [
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Paris?"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}
    assert [m["role"] for m in req.body["messages"]] == ["system", "user", "assistant", "tool"]
    assert [i["type"] for i in fmt.conversation] == [
        "message", "reasoning", "function_call", "function_call_output"]


def test_the_openai_adapter_sends_the_native_body_where_the_responses_api_is_served() -> None:
    _, req = parse(input="hi", stream=True, reasoning={"effort": "high"})
    native = Target("http://v/v1", "up", options={"responses_api": "native"})
    sent = OpenAIAdapter().build_request(req, native)
    assert sent.url == "http://v/v1/responses"
    assert orjson.loads(sent.body) == {"model": "up", "input": "hi", "stream": True,
                                       "reasoning": {"effort": "high"}, "store": False}
    translated = OpenAIAdapter().build_request(req, Target("http://v/v1", "up"))
    assert translated.url == "http://v/v1/chat/completions"
    body = orjson.loads(translated.body)
    assert body["model"] == "up" and body["reasoning_effort"] == "high"
    assert body["stream_options"] == {"include_usage": True}
    # OpenAI's own API serves it natively unless told otherwise
    assert OpenAIAdapter().build_request(req, Target("https://api.openai.com/v1", "up")
                                         ).url.endswith("/responses")


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "model": ""}, "model"),
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "metadata": {"k": 1}}, "metadata"),
    ({"input": "x", "background": True}, "background"),
])
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        ResponsesFormat().parse("chat", orjson.dumps({"model": "pub", **body}), "r")
    assert info.value.status == 400 and info.value.param == param


def test_a_canonical_answer_as_a_response() -> None:
    fmt, req = parse(input="hi", metadata={"k": "v"}, max_output_tokens=5)
    body = fmt.completion_body(req, orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "upstream-name",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "reasoning": "why",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "weather", "arguments": "1e+23"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}}))
    response = orjson.loads(body)
    assert response == fmt.final
    assert response["model"] == "pub" and response["status"] == "completed"
    assert response["metadata"] == {"k": "v"} and response["max_output_tokens"] == 5
    kinds = [(o["type"], o.get("status")) for o in response["output"]]
    assert kinds == [("reasoning", "completed"), ("message", "completed"),
                     ("function_call", "completed")]
    call = response["output"][2]
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "weather", "1e+23")
    assert response["usage"] == {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 4,
                                                     "cache_write_tokens": 0},
        "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 16}


def test_openai_answers_name_the_requested_model() -> None:
    from gateway.http.openai_format import with_model

    assert with_model(b'{"id":"c","model":"llama-3.1-8b","choices":[]}', b"chat") == (
        b'{"id":"c","model":"chat","choices":[]}')
    assert with_model(b'{"id": "c", "model": "gpt-4o-mini"}', b"chat") == (
        b'{"id": "c", "model": "chat"}')
    # a quoted `"model":` inside the text is not the key
    text = b'{"choices":[{"text":"say \\"model\\": x"}],"model":"up"}'
    assert with_model(text, b"pub") == b'{"choices":[{"text":"say \\"model\\": x"}],"model":"pub"}'
    assert with_model(b'{"object":"list","data":[]}', b"pub") == b'{"object":"list","data":[]}'
