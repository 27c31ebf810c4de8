"""The Responses API and Anthropic's count_tokens through Turnout to a REAL vLLM on the CPU
(tiny random-weight model, hermes tool parser), with the official `openai` and
`anthropic` SDKs and the OpenAI Agents SDK:

- `tiny`: a pool whose replica serves /v1/responses itself, so requests pass through to
  vLLM's own Responses API (its access log shows which endpoint each went to);
- `tiny-chat`: the same server as a pool with `responses_api: false`, an OpenAI-compatible
  upstream without the Responses API: requests are translated to chat completions.

With random weights, a forced function call comes out as `1e+23`, not a JSON object: the
gateway relays it as it is (the SDKs and the agent see what the model said).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anthropic import Anthropic
from openai import AsyncOpenAI, OpenAI

from selfhost import vllm_cpu
from selfhost.vllm_cpu import VllmServer
from tests.support.procs import Gateway

pytestmark = pytest.mark.vllm

TOOLS: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                              "required": ["city"]}}]
FORCED: Any = {"type": "function", "name": "get_weather"}


@pytest.fixture(scope="module")
def vllm() -> Iterator[VllmServer]:
    venv = vllm_cpu.ensure_venv()
    model_dir = vllm_cpu.ensure_tiny_model(venv=venv)
    server = vllm_cpu.launch(model_dir, port=vllm_cpu.free_port(), venv=venv, extra_args=[
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    try:
        server.wait_ready(300)
    except vllm_cpu.VllmError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(vllm: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway({
        "pools": [{"name": "cpu", "endpoints": [vllm.url]},
                  {"name": "cpu-chat", "endpoints": [vllm.url], "responses_api": False}],
        "models": {"tiny": {"deployments": [{"target": "cpu", "model": "tiny-llama"}]},
                   "tiny-chat": {"deployments": [{"target": "cpu-chat",
                                                  "model": "tiny-llama"}]}},
    }, tmp_path_factory.mktemp("gw-responses"))
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def served(vllm: VllmServer, path: str) -> int:
    """How many POSTs to `path` vLLM has answered (its access log)."""
    return vllm.log_path.read_text(errors="replace").count(f'"POST {path} HTTP/1.1" 200')


def direct_usage(vllm: VllmServer, text: str) -> dict[str, Any]:
    body = {"model": "tiny-llama", "input": text, "max_output_tokens": 8, "temperature": 0}
    usage: dict[str, Any] = httpx.post(vllm.url + "/v1/responses", json=body,
                                       timeout=60).json()["usage"]
    return usage


@pytest.mark.parametrize(("model", "path"), [("tiny", "/v1/responses"),
                                             ("tiny-chat", "/v1/chat/completions")])
def test_plain_and_streamed(client: OpenAI, vllm: VllmServer, model: str, path: str) -> None:
    before = served(vllm, path)
    reply = client.responses.create(model=model, input="Hello there", max_output_tokens=8,
                                    temperature=0, instructions="Be brief.")
    assert served(vllm, path) == before + 1  # passed through, or translated
    assert reply.model == model and reply.status in ("completed", "incomplete")
    assert reply.usage is not None and reply.usage.output_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    events = list(client.responses.create(model=model, input="Hello there", stream=True,
                                          max_output_tokens=8, temperature=0,
                                          instructions="Be brief."))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    # cut at 8 tokens it is `response.incomplete`, as OpenAI documents (vLLM itself sends
    # response.completed with status incomplete)
    last = events[-1]
    assert last.type == f"response.{reply.status}"
    final = last.response  # type: ignore[union-attr]
    assert final.output_text == reply.output_text  # temperature 0: the same answer
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta"
                   ) == reply.output_text  # type: ignore[union-attr]
    assert final.usage is not None and reply.usage.input_tokens == final.usage.input_tokens


def test_usage_is_vllms_own(client: OpenAI, vllm: VllmServer) -> None:
    reply = client.responses.create(model="tiny", input="Count me", max_output_tokens=8,
                                    temperature=0)
    usage = direct_usage(vllm, "Count me")
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (
        usage["input_tokens"], usage["output_tokens"])


def test_function_call_arguments_are_relayed_as_vllm_wrote_them(client: OpenAI,
                                                               vllm: VllmServer) -> None:
    ask: Any = {"input": "Weather in Paris?", "tools": TOOLS, "tool_choice": FORCED,
                "temperature": 0, "max_output_tokens": 100}
    reply = client.responses.create(model="tiny", **ask)
    direct = httpx.post(vllm.url + "/v1/responses", json={"model": "tiny-llama", **ask},
                        timeout=60).json()
    (mine,) = [o.arguments for o in reply.output if o.type == "function_call"]
    (theirs,) = [o["arguments"] for o in direct["output"] if o["type"] == "function_call"]
    assert mine == theirs  # not a JSON object (random weights): relayed as it is


@pytest.mark.parametrize("model", ["tiny", "tiny-chat"])
def test_function_tool_round_trip_with_previous_response_id(client: OpenAI,
                                                            model: str) -> None:
    first = client.responses.create(model=model, input="Weather in Paris?", tools=TOOLS,
                                    tool_choice=FORCED, temperature=0, max_output_tokens=100)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments
    second = client.responses.create(
        model=model, previous_response_id=first.id, tools=TOOLS, temperature=0,
        max_output_tokens=5, input=[{"type": "function_call_output",
                                     "call_id": calls[0].call_id, "output": "sunny"}])
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    # the second prompt held the whole conversation: the first one and the call
    assert second.usage.input_tokens > first.usage.input_tokens
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]
    assert client.responses.retrieve(second.id).output_text == second.output_text


@pytest.mark.parametrize("model", ["tiny", "tiny-chat"])
def test_json_schema_output(client: OpenAI, vllm: VllmServer, model: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    ask: Any = {"input": "A number", "temperature": 0, "max_output_tokens": 30,
                "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}}}
    reply = client.responses.create(model=model, **ask)
    direct = httpx.post(vllm.url + "/v1/responses", json={"model": "tiny-llama", **ask},
                        timeout=60).json()
    # vLLM's guided decoding ran (random weights write JSON only when made to), the same
    # through chat completions' response_format as through text.format
    assert reply.output_text.startswith("{")
    assert reply.output_text == direct["output"][0]["content"][0]["text"]


def test_count_tokens_is_vllms_tokenize(gateway: Gateway, vllm: VllmServer) -> None:
    claude = Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    raw = claude.messages.with_raw_response.count_tokens(model="tiny", messages=messages,
                                                         system="Be brief.")
    direct = httpx.post(vllm.url + "/tokenize", json={
        "model": "tiny-llama", "add_generation_prompt": True,
        "messages": [{"role": "system", "content": "Be brief."}, *messages]}).json()
    assert raw.parse().input_tokens == direct["count"]
    assert raw.headers["x-turnout-token-count"] == "vllm"


def test_anthropic_forced_tool_call_stops_for_tool_use(gateway: Gateway,
                                                       vllm: VllmServer) -> None:
    claude = Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    msg = claude.messages.create(
        model="tiny", max_tokens=100, messages=question, extra_body={"temperature": 0},
        tools=[{"name": "get_weather", "input_schema": TOOLS[0]["parameters"]}],
        tool_choice={"type": "tool", "name": "get_weather"})
    direct = httpx.post(vllm.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny-llama", "max_tokens": 100, "temperature": 0, "messages": question,
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": TOOLS[0]["parameters"]}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}).json()
    choice = direct["choices"][0]
    assert choice["finish_reason"] == "stop"  # vLLM's word for a forced call...
    # ... which agent loops do not take for a tool call: tool_use whenever there is one
    assert msg.stop_reason == "tool_use" and msg.model == "tiny"
    tool = msg.content[-1]
    assert tool.type == "tool_use" and tool.name == "get_weather"
    arguments = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert tool.input == json.loads(arguments)  # relayed as the model wrote it, not {}


def test_openai_chat_names_the_requested_model(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert raw.parse().model == "tiny"  # not vLLM's tiny-llama
    assert raw.headers["x-turnout-deployment"].startswith("cpu/")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True))
    assert {c.model for c in chunks} == {"tiny"}


async def test_an_agent_with_a_function_tool(gateway: Gateway, vllm: VllmServer) -> None:
    """The OpenAI Agents SDK, its model on the Responses API through Turnout. The agent
    stops at its tool's answer: a random-weight model's own next words never end before
    its token limit, which the SDK takes for a failure."""
    from agents import Agent, FunctionTool, ModelSettings, OpenAIResponsesModel, Runner

    seen: list[str] = []

    async def get_weather(ctx: Any, arguments: str) -> str:
        seen.append(arguments)
        return "sunny"

    tool = FunctionTool(name="get_weather", description="Weather in a city",
                        params_json_schema=TOOLS[0]["parameters"], on_invoke_tool=get_weather,
                        strict_json_schema=False)
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    # (no instructions: with them the tiny model's forced call runs past its token limit)
    agent = Agent(name="weather", tools=[tool],
                  model=OpenAIResponsesModel("tiny", client),
                  model_settings=ModelSettings(tool_choice="get_weather", temperature=0,
                                               max_tokens=100),
                  tool_use_behavior="stop_on_first_tool")
    before = served(vllm, "/v1/responses")
    result = await Runner.run(agent, "Weather in Paris?", max_turns=3,
                              auto_previous_response_id=True)
    kinds = [item.type for item in result.new_items]
    call = result.new_items[0].raw_item
    assert seen == [call.arguments]  # type: ignore[union-attr]  # ran once, on the model's
    assert kinds == ["tool_call_item", "tool_call_output_item"]
    assert result.final_output == "sunny"
    assert served(vllm, "/v1/responses") == before + 1  # passed through
    (raw,) = result.raw_responses
    assert raw.usage.input_tokens > 0 and raw.usage.output_tokens > 0
    # the response it chained from is stored: the next turn could continue it
    stored = await client.responses.retrieve(str(result.last_response_id))
    assert stored.output[0].type == "function_call"
