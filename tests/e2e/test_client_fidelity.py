"""Today's client APIs at full fidelity, through a running gateway (2 workers, Redis):

- the `anthropic` SDK to an Anthropic-format upstream (the mock, with prompt caching and
  extended thinking as Anthropic documents them): cache_control and thinking reach the
  upstream as written, cache writes and reads come back exactly and are priced in the
  ledger at their own rates, signed thinking blocks survive a tool-use round trip (the
  thinking billed, and priced, as output); messages.count_tokens is Anthropic's own count;
- the `openai` SDK's Responses API, translated, to an OpenAI-compatible upstream without
  it (the simulator) and to the Anthropic-format mock: plain, streamed, a function tool
  round trip with previous_response_id, JSON schema output; a response's usage in the
  ledger, priced at the deployment's prices; stored responses per team,
  shared by the workers; `store: false`; errors in the Responses API's shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from selfhost.sim import Simulator, ThreadedSim
from tests.support import anthropic_features as features
from tests.support.accounts import auth, eventually, new_key, suffix
from tests.support.procs import Gateway, RedisServer
from tests.support.provider_mocks import AnthropicMock, PromptCache, Reply, Text, ToolCall, serving

KEY, OTHER_KEY, ADMIN = new_key(), new_key(), new_key()
TEAM, OTHER = "fid" + suffix(), "fid2" + suffix()
UPSTREAM_KEY = "sk-ant-fidelity-secret-0123456789"
# Sonnet's published prices (USD per 1M): 3 in, 15 out, 3.75 cache write, 0.30 cache read
SONNET = {"input": 3.0, "output": 15.0, "cached_input": 0.30, "cache_write": 3.75}
LONG = "You are a meticulous assistant. " * 150  # ~1,200 mock tokens: cacheable


@pytest.fixture(scope="module")
def claude_mock() -> Iterator[tuple[AnthropicMock, str]]:
    mock = AnthropicMock(reply=Reply([Text("Cached answer.")], output_tokens=6),
                         api_key=UPSTREAM_KEY, prompt_cache=PromptCache())
    with serving(mock) as root:
        yield mock, root


@pytest.fixture(scope="module")
def gateway(claude_mock: tuple[AnthropicMock, str], redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _, root = claude_mock
    with ThreadedSim(Simulator("instant")) as sim:
        gw = Gateway({
            "redis": {"url": redis_server.url},
            "auth": {"admin_key": ADMIN},
            "providers": [
                {"name": "claude", "dialect": "anthropic", "base_url": root + "/v1",
                 "api_key": UPSTREAM_KEY},
                {"name": "compat", "base_url": sim.url + "/v1"},  # no Responses API
            ],
            "models": {
                "claude": {"deployments": [{"target": "claude", "model": "claude-sonnet-4-5",
                                            "price": SONNET}]},
                "compat": {"deployments": [{"target": "compat", "model": "m"}]},
            },
            "teams": [{"name": TEAM, "keys": [{"id": "k", "key": KEY}]},
                      {"name": OTHER, "keys": [{"id": "k", "key": OTHER_KEY}]}],
        }, tmp_path_factory.mktemp("gw-fidelity"), workers=2)
        yield gw
        gw.stop()
    assert UPSTREAM_KEY not in gw.logs() and KEY not in gw.logs()


@pytest.fixture
def claude(gateway: Gateway) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)


@pytest.fixture
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)


def event(gw: Gateway, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        r = httpx.get(f"{gw.url}/admin/events", headers=auth(ADMIN),
                      params={"team": TEAM, "format": "json", "limit": 1000})
        return next((e for e in r.json()["data"] if e["request_id"] == request_id), None)
    found: dict[str, Any] = eventually(find)
    return found


# -- Anthropic: prompt caching, thinking, count_tokens ---------------------------------------------


def test_prompt_caching_reaches_anthropic_and_is_priced_exactly(
        gateway: Gateway, claude: Anthropic, claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    system: Any = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    ask: Any = {"model": "claude", "max_tokens": 50, "system": system,
                "messages": [{"role": "user", "content": "Summarise. " + suffix()}]}
    first = claude.messages.with_raw_response.create(**ask)
    sent = mock.last.body
    assert sent["system"] == system and sent["model"] == "claude-sonnet-4-5"
    written = features.count({"system": system})  # the prefix up to the breakpoint
    u1 = first.parse().usage
    assert (u1.cache_creation_input_tokens, u1.cache_read_input_tokens) == (written, 0)
    second = claude.messages.with_raw_response.create(**ask)
    u2 = second.parse().usage
    assert (u2.cache_creation_input_tokens, u2.cache_read_input_tokens) == (0, written)
    assert u2.input_tokens == u1.input_tokens  # reads and writes come on top of it
    for raw, usage in ((first, u1), (second, u2)):
        e = event(gateway, raw.headers["x-request-id"])
        prompt = usage.input_tokens + written  # canonical: everything sent
        assert (e["prompt_tokens"], e["cached_tokens"], e["cache_write_tokens"]) == (
            prompt, usage.cache_read_input_tokens, usage.cache_creation_input_tokens)
        nanos = (usage.input_tokens * 3000 + usage.cache_creation_input_tokens * 3750
                 + usage.cache_read_input_tokens * 300 + usage.output_tokens * 15000)
        assert e["cost_usd"] == pytest.approx(nanos / 1e9, abs=1e-12)
    # A stream says the same in its final usage
    with claude.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == written


def test_top_level_cache_control_is_passed_through(
        claude: Anthropic, claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    claude.messages.create(model="claude", max_tokens=20, system=LONG,
                           messages=[{"role": "user", "content": "Hi " + suffix()}],
                           extra_body={"cache_control": {"type": "ephemeral", "ttl": "1h"}})
    assert mock.last.body["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_thinking_round_trip_with_a_tool(gateway: Gateway, claude: Anthropic,
                                        claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    thinking: Any = {"type": "enabled", "budget_tokens": 2000}
    tools: Any = [{"name": "weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    mock.reply = Reply([ToolCall("weather", {"city": "Paris"}, id="toolu_1")],
                       thinking="The user wants the weather.", redacted="EmwKAhgB")
    try:
        raw = claude.messages.with_raw_response.create(
            model="claude", max_tokens=4000, thinking=thinking, tools=tools, messages=[question])
        first = raw.parse()
        assert mock.last.body["thinking"] == thinking
        # Anthropic bills thinking inside output_tokens: the ledger's completion is all of
        # it, priced as output, and no reasoning_tokens are split out of it.
        u = first.usage
        assert u.output_tokens == 5 + features.tokens("The user wants the weather.")
        assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (0, 0)
        e = event(gateway, raw.headers["x-request-id"])
        assert (e["prompt_tokens"], e["completion_tokens"], e["reasoning_tokens"]) == (
            u.input_tokens, u.output_tokens, 0)
        assert e["cost_usd"] == (u.input_tokens * 3000 + u.output_tokens * 15000) / 1e9
        kinds = [b.type for b in first.content]
        assert kinds == ["thinking", "redacted_thinking", "tool_use"]
        block = first.content[0]
        assert block.type == "thinking" and block.signature == features.signature(
            "The user wants the weather.")
        assert first.stop_reason == "tool_use"
        # The next turn sends the blocks back as they came: the mock checks the signature
        # and that the assistant turn starts with its thinking.
        mock.reply = Reply([Text("It is sunny.")], thinking="Answer plainly.")
        follow: Any = [question, {"role": "assistant", "content": first.content},
                       {"role": "user", "content": [{"type": "tool_result",
                                                     "tool_use_id": "toolu_1",
                                                     "content": "sunny"}]}]
        with claude.messages.stream(model="claude", max_tokens=4000, thinking=thinking,
                                    tools=tools, messages=follow) as stream:
            thinking_deltas = [e.thinking for e in stream if e.type == "thinking"]
            final = stream.get_final_message()
        assert "".join(thinking_deltas) == "Answer plainly."
        assert mock.last.body["messages"][1]["content"][1] == {
            "type": "redacted_thinking", "data": "EmwKAhgB"}
        streamed = final.content[0]
        assert streamed.type == "thinking"
        assert streamed.signature == features.signature("Answer plainly.")
        assert final.content[-1].type == "text" and final.stop_reason == "end_turn"
    finally:
        mock.reply = Reply([Text("Cached answer.")], output_tokens=6)


def test_count_tokens_is_anthropics_own(claude: Anthropic,
                                        claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    ask: Any = {"model": "claude", "system": "Be brief.",
                "messages": [{"role": "user", "content": "How long is this?"}]}
    raw = claude.messages.with_raw_response.count_tokens(**ask)
    assert mock.last.path == "/v1/messages/count_tokens"
    assert mock.last.body == {**ask, "model": "claude-sonnet-4-5"}
    assert raw.parse().input_tokens == features.count(ask)
    assert raw.headers["x-turnout-token-count"] == "anthropic"


def test_count_tokens_estimates_where_no_tokenizer_is_known(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/v1/messages/count_tokens", headers={"x-api-key": KEY},
                   json={"model": "compat", "messages": [{"role": "user", "content": "abcd"}]})
    assert r.json() == {"input_tokens": 5}  # ceil(4 / 4) + 4 per message
    assert r.headers["x-turnout-token-count"] == "estimate"


# -- the Responses API, translated ------------------------------------------------------------


@pytest.mark.parametrize("model", ["compat", "claude"])
def test_responses_translated(client: OpenAI, model: str) -> None:
    # (the simulator uses up any explicit limit: none is set, so both stop on their own)
    reply = client.responses.create(model=model, input="Say hi", instructions="Be brief.")
    assert reply.status == "completed" and reply.model == model and reply.output_text
    assert reply.usage is not None and reply.usage.total_tokens > 0
    events = list(client.responses.create(model=model, input="Say hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text  # type: ignore[union-attr]


def test_a_response_is_in_the_ledger_priced_exactly(
        gateway: Gateway, client: OpenAI, claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    raw = client.responses.with_raw_response.create(model="claude", input="Price me " + suffix())
    reply = raw.parse()
    u = reply.usage
    assert u is not None  # the mock's counts: the translated request's, and its reply's 6
    assert (u.input_tokens, u.output_tokens) == (features.count(mock.last.body), 6)
    assert u.input_tokens_details.cached_tokens == 0
    e = event(gateway, raw.headers["x-request-id"])
    assert (e["model"], e["status"]) == ("claude", 200)
    assert (e["prompt_tokens"], e["completion_tokens"], e["cached_tokens"]) == (
        u.input_tokens, u.output_tokens, 0)
    # Sonnet's 3 in, 15 out per 1M: nano-dollars are tokens x price x 1000
    assert e["cost_usd"] == (u.input_tokens * 3000 + u.output_tokens * 15000) / 1e9


def test_function_round_trip_through_anthropic(
        client: OpenAI, claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    tools: Any = [{"type": "function", "name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]
    mock.reply = Reply([ToolCall("weather", {"city": "Paris"}, id="toolu_9")])
    try:
        first = client.responses.create(model="claude", input="Weather in Paris?", tools=tools)
        (call,) = first.output
        assert call.type == "function_call" and call.call_id == "toolu_9"
        assert call.arguments == '{"city":"Paris"}'
        mock.reply = Reply([Text("Sunny in Paris.")])
        second = client.responses.create(
            model="claude", previous_response_id=first.id, tools=tools,
            input=[{"type": "function_call_output", "call_id": "toolu_9", "output": "sunny"}])
        # the Anthropic upstream got the whole conversation, tool result after the call
        sent = mock.last.body["messages"]
        assert sent[1]["content"] == [{"type": "tool_use", "id": "toolu_9", "name": "weather",
                                       "input": {"city": "Paris"}}]
        assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_9",
                                       "content": "sunny"}]
        assert second.output_text == "Sunny in Paris."
    finally:
        mock.reply = Reply([Text("Cached answer.")], output_tokens=6)


def test_json_schema_output_reaches_anthropic(
        client: OpenAI, claude_mock: tuple[AnthropicMock, str]) -> None:
    mock, _ = claude_mock
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    client.responses.create(model="claude", input="A number",
                            text={"format": {"type": "json_schema", "name": "n",
                                             "schema": schema}})
    assert mock.last.body["output_config"] == {"format": {"type": "json_schema",
                                                          "schema": schema}}


def test_stored_responses_across_workers_and_teams(gateway: Gateway, client: OpenAI) -> None:
    first = client.responses.create(model="compat", input="Remember me", metadata={"k": "v"})
    # Any worker finds it (Redis): ask a few times, over fresh connections.
    for _ in range(4):
        fresh = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        got = fresh.responses.retrieve(first.id)
        assert got.id == first.id and got.metadata == {"k": "v"}
    other = OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)  # another team's
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model="compat", input="x", previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_max_output_tokens_reached_is_incomplete(client: OpenAI) -> None:
    reply = client.responses.create(model="compat", input="Say hi", max_output_tokens=7)
    assert reply.status == "incomplete" and reply.usage is not None
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 7


def test_store_false_is_honoured(client: OpenAI) -> None:
    reply = client.responses.create(model="compat", input="Forget me", store=False)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)


def test_errors_in_the_responses_shape(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/v1/responses", headers=auth(KEY),
                   json={"model": "compat", "input": "x", "tools": [{"type": "web_search"}]})
    assert r.status_code == 400
    assert r.json() == {"error": {
        "message": "`tools[0].type` 'web_search': only function tools are supported by this"
                   " gateway", "type": "invalid_request_error", "param": "tools[0].type",
        "code": None}}
    r = httpx.get(gateway.url + "/v1/responses/resp_missing/input_items", headers=auth(KEY))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.post(gateway.url + "/v1/responses", json={"model": "compat", "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
