"""Dispatch over a fake HTTP client (no sockets): the attempt, failover to the next
candidate, streams read line by line, and what never reaches the client."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.canonical import CanonicalRequest, Deployment, FailureKind, UpstreamFailure
from gateway.config import parse_config
from gateway.config.server import Timeouts
from gateway.dispatch.dispatcher import AttemptRunner, Dispatcher
from gateway.dispatch.failover import Failover
from gateway.dispatch.fallbacks import Fallbacks
from gateway.planner import Planner
from gateway.registry import Registry
from policies.breakers import CircuitState
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard
from tests.support.fake_wire import FakeHttpClient, FakeResponse

KEY = "sk-upstream-secret-0123456789"
CONFIG = parse_config({
    "providers": [{"name": p, "base_url": f"http://{p}.test/v1", "api_key": KEY}
                  for p in ("a", "b")],
    "models": {"m": {"deployments": [{"target": "a", "model": "up"},
                                     {"target": "b", "model": "up"}]}}})
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up",
                       "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": "hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                 "total_tokens": 4}})


def request(stream: bool = False) -> CanonicalRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return CanonicalRequest("chat", "m", body, stream=stream, request_id="r1")


def dispatcher(client: FakeHttpClient) -> tuple[Dispatcher, list[Deployment]]:
    board = Scoreboard()
    registry = Registry(CONFIG, {})
    failover = Failover(CONFIG, board, Fallbacks(CONFIG, registry, Planner(CONFIG, board)))
    runner = AttemptRunner(client, board, Timeouts(), failover.breakers)
    return Dispatcher(runner, failover), registry.models["m"]


def host(url: str) -> str:
    return url.split("//")[1].split(".")[0]


async def test_a_503_fails_over_to_the_next_candidate() -> None:
    client = FakeHttpClient(lambda req: FakeResponse(503, body=b'{"error":{"message":"busy"}}')
                            if host(req.url) == "a" else FakeResponse(200, body=ANSWER))
    d, deps = dispatcher(client)
    plan = Plan(list(deps), "test", "first")
    done = await d.complete(request(), plan)
    assert done.deployment.id == "b/up" and done.usage is not None
    assert done.usage.total_tokens == 4
    assert [host(r.url) for r in client.sent] == ["a", "b"]
    assert all(r.released for r in client.responses)  # both read whole, connections kept
    assert plan.reason == "first; a/up failed (503)"
    assert [r.outcome for r in done.attempts] == ["failed", "ok"]


async def test_a_stream_is_read_line_by_line_and_cut_short_is_an_error() -> None:
    def chunk(content: str, finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": {"content": content},
                         "finish_reason": finish}]}) + b"\n"

    whole = [chunk("Hel"), b"\n", chunk("lo", "stop"), b"\n", b"data: [DONE]\n", b"\n"]
    cut = [chunk("Hel"), b"\n"]  # the body ends with no finish and no [DONE]
    client = FakeHttpClient(lambda req: FakeResponse(200, lines=list(whole)))
    d, deps = dispatcher(client)
    d.failover = None  # one attempt, no continuation: the cut must reach the caller
    stream = await d.open_stream(request(stream=True), Plan([deps[0]], "test", ""))
    texts = [orjson.loads(c.data)["choices"][0]["delta"].get("content")
             async for c in stream.chunks() if c.data]
    await stream.aclose()
    assert texts == ["Hel", "lo"] and client.responses[0].released

    client = FakeHttpClient(lambda req: FakeResponse(200, lines=list(cut)))
    d, deps = dispatcher(client)
    d.failover = None
    stream = await d.open_stream(request(stream=True), Plan([deps[0]], "test", ""))
    with pytest.raises(UpstreamFailure) as info:
        async for _ in stream.chunks():
            pass
    await stream.aclose()
    assert info.value.kind is FailureKind.PROTOCOL
    assert client.responses[0].closed  # dropped: the upstream sees the request end


async def test_a_half_open_circuit_closes_at_its_probe_streams_first_token() -> None:
    # Not at the stream's end: meanwhile every other request would skip a replica that
    # is serving again (seconds of traffic sent to dearer deployments).
    client = FakeHttpClient(lambda req: FakeResponse(200, lines=[
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"up",'
        b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n', b"\n",
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"up",'
        b'"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n', b"\n",
        b"data: [DONE]\n", b"\n"]))
    d, deps = dispatcher(client)
    assert d.failover is not None
    breaker = d.failover.breakers.get(deps[0])
    for _ in range(5):
        breaker.failure(0.0, False, "down")
    breaker.open_until = 0.0  # the cooldown is over: the next request is the probe
    assert breaker.state is CircuitState.OPEN
    stream = await d.open_stream(request(stream=True), Plan([deps[0]], "test", ""))
    assert breaker.state is CircuitState.CLOSED  # the first token came; the rest has not
    assert [c async for c in stream.chunks() if c.data]
    await stream.aclose()
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive == 0


async def test_an_upstream_message_never_carries_the_key_back() -> None:
    message = orjson.dumps({"error": {"message": f"invalid request for key {KEY}"}})
    client = FakeHttpClient(lambda req: FakeResponse(400, body=message))
    d, deps = dispatcher(client)
    with pytest.raises(UpstreamFailure) as info:
        await d.complete(request(), Plan(list(deps), "test", ""))
    assert KEY not in info.value.message and "***" in info.value.message
    assert client.sent[0].headers["authorization"] == f"Bearer {KEY}"
    assert len(client.sent) == 1  # a 400 is the request's fault: not retried


def test_a_deployment_built_by_the_registry_knows_its_capabilities() -> None:
    cfg = parse_config({
        "providers": [{"name": "claude", "dialect": "anthropic", "api_key": "k",
                       "base_url": "http://x.test/v1"},
                      {"name": "oa", "base_url": "http://y.test/v1", "api_key": "k",
                       "health_check": "models"}],
        "pools": [{"name": "gpu", "endpoints": ["http://10.0.0.1:8000"],
                   "continuation": False}],
        "models": {"m": {"deployments": [{"target": t, "model": "up"}
                                         for t in ("claude", "oa", "gpu")]}}})
    claude, oa, gpu = Registry(cfg, {}).models["m"]
    assert (claude.can_continue, claude.capabilities.prefill_trims_whitespace,
            claude.health_check) == (True, True, "chat")
    assert (oa.can_continue, oa.health_check) == (False, "models")
    assert (gpu.can_continue, gpu.health_check) == (False, "health")


async def test_a_hung_upstream_is_left_after_first_token_s_for_a_whole_answer_too() -> None:
    client = FakeHttpClient(lambda req: None if host(req.url) == "a"
                            else FakeResponse(200, body=ANSWER))
    d, deps = dispatcher(client)
    d.runner.timeouts = Timeouts(first_token_s=0.05, total_s=30)
    started = asyncio.get_running_loop().time()
    done = await d.complete(request(), Plan(list(deps), "test", ""))
    waited = asyncio.get_running_loop().time() - started
    assert done.deployment.id == "b/up"
    assert 0.05 <= waited < 5  # the head's deadline, not total_s
