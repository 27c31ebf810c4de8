"""A batch line in its endpoint's client format: /v1/responses lines parsed and answered by
the Responses format (a Response object in the output line, not stored), stateless (no
`previous_response_id`, no `store: true`); the other endpoints in OpenAI's format."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.batch import lines
from gateway.batch.line_run import LineRunner, Verdict
from gateway.batch.settings import BatchConfig
from gateway.canonical import CanonicalRequest
from gateway.http.asgi import Send
from gateway.http.client_format import ClientFormat
from gateway.http.openai_format import OPENAI
from gateway.http.responses_format import ResponsesFormat
from gateway.store.batch_base import LineEnd
from policies.keys import Principal

CHAT_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "an answer"}}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class FakePipeline:
    """`handle` answers every request with CHAT_ANSWER, rendered by the request's format."""

    telemetry = None

    def __init__(self) -> None:
        self.handled: list[tuple[CanonicalRequest, ClientFormat]] = []

    async def handle(self, principal: Principal, req: CanonicalRequest, fmt: ClientFormat,
                     send: Send, **_: Any) -> None:
        self.handled.append((req, fmt))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body",
                    "body": fmt.completion_body(req, orjson.dumps(CHAT_ANSWER))})


class NoSettlements:
    def take(self, request_id: str) -> None:
        return None


def run(endpoint: str, body: dict[str, Any]) -> tuple[Verdict, dict[str, Any], FakePipeline]:
    pipeline = FakePipeline()
    runner = LineRunner(pipeline, NoSettlements(), BatchConfig())  # type: ignore[arg-type]
    line = lines.Line(0, "line-0", body)
    verdict = asyncio.run(runner.run("batch_1", endpoint, line, Principal("lab", "k1"),
                                     held=LineEnd("lab", "batch_1", "0", "line-0")))
    out: dict[str, Any] = orjson.loads(verdict.result)
    return verdict, out["response"]["body"], pipeline


def test_a_responses_line_is_answered_as_a_response_object() -> None:
    verdict, body, pipeline = run(lines.RESPONSES, {"model": "chat", "input": "hi",
                                                    "instructions": "be brief"})
    assert not verdict.failed and verdict.status == 200
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "an answer"
    assert body["instructions"] == "be brief" and body["usage"]["output_tokens"] == 2
    assert body["store"] is False  # lines are not stored, and the Response says so
    [(req, fmt)] = pipeline.handled
    assert isinstance(fmt, ResponsesFormat) and req.operation == "chat"
    assert req.body["messages"][-1]["content"] == [{"type": "text", "text": "hi"}]
    assert req.priority == BatchConfig().priority


def test_each_responses_line_has_a_format_of_its_own() -> None:
    first = run(lines.RESPONSES, {"model": "chat", "input": "a"})[1]
    second = run(lines.RESPONSES, {"model": "chat", "input": "b"})[1]
    assert first["id"] != second["id"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"stream": True}, "stream"),
    ({"background": True}, "background"),  # the Responses format's own refusal
    ({"store": "yes"}, "store"),  # still validated, not defaulted over
])
def test_what_a_responses_line_may_not_ask(extra: dict[str, Any], param: str) -> None:
    verdict, body, pipeline = run(lines.RESPONSES, {"model": "chat", "input": "x", **extra})
    assert verdict.failed and verdict.status == 400
    assert body["error"]["param"] == param
    assert pipeline.handled == []


def test_store_false_and_an_empty_previous_id_are_what_a_line_is_anyway() -> None:
    verdict, body, _ = run(lines.RESPONSES, {"model": "chat", "input": "x", "store": False,
                                             "previous_response_id": ""})
    assert not verdict.failed and body["object"] == "response"


def test_other_endpoints_stay_in_the_openai_format() -> None:
    verdict, body, pipeline = run("/v1/chat/completions", {
        "model": "chat", "messages": [{"role": "user", "content": "hi"}],
        "previous_response_id": "resp_1"})  # not a chat field: passed on as before
    assert not verdict.failed and body["object"] == "chat.completion"
    [(req, fmt)] = pipeline.handled
    assert fmt is OPENAI and req.operation == "chat"


def test_a_responses_batch_checks_each_line_against_its_endpoint() -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/responses",
            "body": {"model": "chat", "input": "x"}}
    chat = {**good, "custom_id": "b", "url": "/v1/chat/completions"}
    data = b"\n".join(orjson.dumps(r) for r in (good, chat))
    parsed, errors = lines.parse_input(data, lines.RESPONSES, 10)
    assert parsed.spans and parsed.model == "chat"
    assert [(e["line"], e["code"]) for e in errors] == [(2, "invalid_url")]
