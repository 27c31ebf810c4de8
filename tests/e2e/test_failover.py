"""Failover end to end: `turnout serve` in a subprocess in front of simulators and
provider mocks on real ports, failures injected upstream, exact counts asserted from
what the upstreams saw and from the gateway's own `/debug/failover` counters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from selfhost.sim import FailNext, Faults, SimProfile, Simulator, ThreadedSim
from tests.support.procs import Gateway
from tests.support.provider_mocks import AnthropicMock, Failure, Replay, Reply, Text

MESSAGES: Any = [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Tell me about failover"}]
SLOW_TTFT_MS = 300.0


def openai_error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": code}})


class Upstreams:
    """Every upstream of the shared gateway, by role."""

    def __init__(self) -> None:
        self.p1, self.p2 = Simulator("instant", seed=1), Simulator("instant", seed=2)
        self.slow = Simulator(SimProfile.named("instant", base_ttft_ms=SLOW_TTFT_MS), seed=3)
        self.fast = Simulator("instant", seed=4)
        self.qa, self.qb, self.qc = (Simulator("instant", seed=s) for s in (5, 6, 7))
        self.storm = Simulator("instant", seed=8, faults=Faults(rate_503=1.0))
        self.q1, self.q2 = Simulator("instant", seed=9), Simulator("instant", seed=10)
        self.ctx = Replay(openai_error("context_length_exceeded", "This model's maximum"
                                       " context length is 8192 tokens."),
                          status=400, content_type="application/json")
        self.cp = Replay(openai_error("content_policy_violation", "Your request was rejected"
                                      " by the safety system."),
                         status=400, content_type="application/json")
        self.a1 = AnthropicMock(Reply([Text("The quick brown fox")], input_tokens=12,
                                      output_tokens=4))
        self.a2 = AnthropicMock(Reply([Text(" over the lazy dog.")], input_tokens=12,
                                      output_tokens=5))
        self.urls: dict[str, str] = {}

    def all(self) -> list[Simulator]:
        return [self.p1, self.p2, self.slow, self.fast, self.qa, self.qb, self.qc, self.storm,
                self.q1, self.q2, *(cast(Simulator, m) for m in
                                    (self.ctx, self.cp, self.a1, self.a2))]


@pytest.fixture(scope="module")
def ups() -> Iterator[Upstreams]:
    u = Upstreams()
    with ThreadedSim(*u.all()) as threaded:
        names = ("p1", "p2", "slow", "fast", "qa", "qb", "qc", "storm", "q1", "q2", "ctx",
                 "cp", "a1", "a2")
        u.urls = dict(zip(names, threaded.urls, strict=True))
        yield u


def _dep(target: str, price: float = 1.0) -> dict[str, Any]:
    return {"target": target, "model": "x", "price": {"input": price, "output": price}}


@pytest.fixture(scope="module")
def gw(ups: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    urls = ups.urls
    plain = ["qa", "qb", "qc", "storm", "q1", "ctx", "cp"]
    providers: list[dict[str, Any]] = [{"name": n, "base_url": urls[n] + "/v1"} for n in plain]
    providers += [
        {"name": "q2", "base_url": urls["q2"] + "/v1", "continuation": True},
        *({"name": n, "dialect": "anthropic", "base_url": urls[n] + "/v1",
           "api_key": AnthropicMock.api_key} for n in ("a1", "a2")),
    ]
    round_robin = {"policy": "round-robin"}
    gateway = Gateway({
        "server": {"timeouts": {"connect_s": 2, "first_token_s": 5, "idle_s": 5,
                                "total_s": 30}},
        "providers": providers,
        "pools": [{"name": "gpu", "endpoints": [urls["p1"], urls["p2"]]},
                  {"name": "gpu2", "endpoints": [urls["slow"], urls["fast"]]}],
        "failover": {"rounds": 2},
        "models": {
            "chat": {"deployments": [{"target": "gpu", "model": "x"}]},
            "plain": {"deployments": [{"target": "gpu2", "model": "x"}],
                      "routing": round_robin},
            "hedged": {"deployments": [{"target": "gpu2", "model": "x"}],
                       "routing": round_robin,
                       "hedging": {"min_delay_ms": 50, "max_delay_ms": 2000}},
            "ab": {"deployments": [_dep("qa", 1), _dep("qb", 2)]},  # slo-cost: qa first
            "solo": {"deployments": [_dep("qc")]},
            "primary": {"deployments": [_dep("storm")], "fallbacks": ["backup"]},
            "backup": {"deployments": [_dep("qb")]},
            "small": {"deployments": [_dep("ctx")], "context_window_fallback": "backup"},
            "filtered": {"deployments": [_dep("cp")], "fallbacks": ["backup"]},
            "cont": {"deployments": [_dep("q1", 1), _dep("q2", 2)]},
            "stuck": {"deployments": [_dep("q2", 1), _dep("q1", 2)]},
            "claude": {"deployments": [_dep("a1", 1), _dep("a2", 2)]},
        },
    }, tmp_path_factory.mktemp("gw-failover"))
    yield gateway
    gateway.stop()


def sdk(gw: Gateway) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)


def counters(gw: Gateway) -> dict[str, Any]:
    return cast(dict[str, Any], httpx.get(gw.url + "/debug/failover").json())


def expected_text(max_tokens: int) -> tuple[str, int]:
    """The uninterrupted answer (the simulator's text depends on the messages alone)."""
    with ThreadedSim(Simulator("instant")) as ref:
        reply = OpenAI(base_url=ref.url + "/v1", api_key="x").chat.completions.create(
            model="x", messages=MESSAGES, max_tokens=max_tokens)
    assert reply.usage is not None
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


def stream(gw: Gateway, model: str, **kw: Any) -> list[Any]:
    return list(sdk(gw).chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                **kw))


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- retries, Retry-After, fallbacks ---------------------------------------------------------


def test_429_retry_after_is_honoured(gw: Gateway, ups: Upstreams) -> None:
    ups.qa.faults = Faults(retry_after_s=1.0, fail_next=FailNext(1, status=429))
    client = sdk(gw)
    first = client.chat.completions.with_raw_response.create(model="ab", messages=MESSAGES)
    blocked_at = time.monotonic()
    assert first.headers["x-turnout-deployment"] == "qb/x"  # failed over at once
    assert "qa/x failed (429)" in first.headers["x-turnout-route"]
    assert ups.qa.stats.by_status == {429: 1}
    sent_meanwhile = 0
    while ups.qa.stats.requests_total == 1:  # every request goes to qb until Retry-After
        r = client.chat.completions.with_raw_response.create(model="ab", messages=MESSAGES)
        sent_meanwhile += 1
        assert time.monotonic() - blocked_at < 5, "qa never got traffic back"
        if r.headers["x-turnout-deployment"] == "qa/x":
            break
        assert "qa/x skipped (asked to wait)" in r.headers["x-turnout-route"]
    waited = time.monotonic() - blocked_at
    assert waited >= 0.9 and sent_meanwhile >= 2  # the pause began before `blocked_at`
    assert ups.qa.stats.by_status == {429: 1, 200: 1}
    assert counters(gw)["circuits"]["qa/x"]["blocks_total"] == 1


def test_misconfigured_deployment_fails_over(gw: Gateway, ups: Upstreams) -> None:
    ups.qa.faults = Faults(fail_next=FailNext(1, status=401))  # e.g. a revoked key
    raw = sdk(gw).chat.completions.with_raw_response.create(model="ab", messages=MESSAGES)
    assert raw.headers["x-turnout-deployment"] == "qb/x"
    assert "qa/x failed (401)" in raw.headers["x-turnout-route"]


def test_single_deployment_waits_for_retry_after_then_retries(gw: Gateway,
                                                             ups: Upstreams) -> None:
    ups.qc.faults = Faults(retry_after_s=0.3, fail_next=FailNext(1, status=429))
    started = time.monotonic()
    raw = sdk(gw).chat.completions.with_raw_response.create(model="solo", messages=MESSAGES)
    assert time.monotonic() - started >= 0.3
    assert raw.headers["x-turnout-deployment"] == "qc/x"
    assert "pass 2 after 300ms" in raw.headers["x-turnout-route"]
    assert ups.qc.stats.by_status == {429: 1, 200: 1}


def test_fallback_model_when_deployments_are_exhausted(gw: Gateway, ups: Upstreams) -> None:
    before = ups.qb.stats.requests_total
    raw = sdk(gw).chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.headers["x-turnout-deployment"] == "qb/x"
    assert "storm/x failed (503); fallback to backup" in raw.headers["x-turnout-route"]
    assert ups.qb.stats.requests_total == before + 1
    assert ups.storm.stats.by_status == {503: 1}


def test_context_length_error_falls_back_to_the_larger_model(gw: Gateway,
                                                             ups: Upstreams) -> None:
    raw = sdk(gw).chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
    assert raw.headers["x-turnout-deployment"] == "qb/x"
    assert "context window fallback to backup" in raw.headers["x-turnout-route"]
    assert len(ups.ctx.requests) == 1


def test_content_policy_error_is_returned_not_retried(gw: Gateway, ups: Upstreams) -> None:
    before = ups.qb.stats.requests_total
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gw).chat.completions.create(model="filtered", messages=MESSAGES)
    assert info.value.code == "content_policy"
    assert len(ups.cp.requests) == 1 and ups.qb.stats.requests_total == before


# -- hedging -------------------------------------------------------------------------------


def ttft_and_text(gw: Gateway, model: str) -> tuple[float, str]:
    started = time.monotonic()
    ttft, parts = None, []
    for c in sdk(gw).chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                             max_tokens=6):
        if ttft is None:
            ttft = time.monotonic() - started
        parts.append(c.choices[0].delta.content or "" if c.choices else "")
    assert ttft is not None
    return ttft, "".join(parts)


def test_hedging_cuts_the_slow_replicas_tail_and_cancels_the_loser(gw: Gateway,
                                                                   ups: Upstreams) -> None:
    expected, _ = expected_text(6)
    plain = [ttft_and_text(gw, "plain") for _ in range(10)]  # also warms both replicas' TTFT
    slow_cancelled, fast_requests = ups.slow.stats.cancelled, ups.fast.stats.requests_total
    budget_before = counters(gw)["retry_budget"]["retries_total"]
    hedged = [ttft_and_text(gw, "hedged") for _ in range(10)]
    assert {t for _, t in plain + hedged} == {expected}
    # Round-robin puts 5 of the 10 on the slow replica first: each is hedged to the fast
    # one after 50 ms, the fast one wins, the slow attempt is cancelled upstream.
    assert ups.slow.stats.wait_for(lambda s: s.cancelled == slow_cancelled + 5 and
                                   s.active == 0)
    assert ups.fast.stats.requests_total == fast_requests + 10
    after = counters(gw)
    assert (after["counters"]["hedges_total"], after["counters"]["hedge_wins_total"]) == (5, 5)
    assert after["retry_budget"]["retries_total"] == budget_before + 5  # hedges are retries
    p99_plain, p99_hedged = max(t for t, _ in plain), max(t for t, _ in hedged)
    print(f"\nhedging: P99 TTFT {p99_plain * 1000:.0f} ms without, {p99_hedged * 1000:.0f} ms"
          f" with (slow replica {SLOW_TTFT_MS:.0f} ms)")
    assert p99_hedged < p99_plain


# -- mid-stream continuation ---------------------------------------------------------------


def test_broken_streams_are_continued_without_a_seam(gw: Gateway, ups: Upstreams) -> None:
    expected, prompt = expected_text(12)
    before = counters(gw)["counters"]["continuations_total"]
    # Both replicas drop their next stream after 5 events (the role chunk and 4 tokens):
    # the stream breaks on one, continues on the other, breaks again, and finishes on the
    # first: three segments, two seams.
    for sim in (ups.p1, ups.p2):
        sim.faults = Faults(fail_next=FailNext(1, kind="disconnect", after_chunks=5))
    chunks = stream(gw, "chat", max_tokens=12, stream_options={"include_usage": True})
    assert text_of(chunks) == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    # Output: 4 + 4 + 4 tokens. Input: each segment's prompt, the last one reported, the
    # broken ones derived from it (see gateway/dispatch/continuation.py).
    assert (usage.completion_tokens, usage.prompt_tokens) == (12, 3 * prompt + 24)
    assert ups.p1.stats.aborted + ups.p2.stats.aborted == 2
    last = max((ups.p1, ups.p2), key=lambda s: s.stats.requests_total).stats.last_body
    assert last["continue_final_message"] is True and last["add_generation_prompt"] is False
    partial = "".join(" " + word for word in expected.split()[:8])
    assert last["messages"][-1] == {"role": "assistant", "content": partial}
    assert last["max_tokens"] == 4
    assert counters(gw)["counters"]["continuations_total"] == before + 2


def test_break_before_any_content_is_retried_transparently(gw: Gateway,
                                                           ups: Upstreams) -> None:
    expected, _ = expected_text(7)
    for sim in (ups.p1, ups.p2):
        sim.faults = Faults(fail_next=FailNext(1, kind="disconnect", after_chunks=1))
    chunks = stream(gw, "chat", max_tokens=7)
    assert text_of(chunks) == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    last = max((ups.p1, ups.p2), key=lambda s: s.stats.requests_total).stats.last_body
    assert "continue_final_message" not in last and last["max_tokens"] == 7


def test_provider_configured_to_continue_takes_over(gw: Gateway, ups: Upstreams) -> None:
    expected, _ = expected_text(9)
    ups.q1.faults = Faults(fail_next=FailNext(1, kind="disconnect", after_chunks=4))
    chunks = stream(gw, "cont", max_tokens=9)
    assert text_of(chunks) == expected
    body = ups.q2.stats.last_body
    assert body["continue_final_message"] is True and body["max_tokens"] == 6


def test_stream_that_cannot_be_continued_ends_with_a_clear_error(gw: Gateway,
                                                                 ups: Upstreams) -> None:
    expected, _ = expected_text(9)
    q1_before = ups.q1.stats.requests_total
    ups.q2.faults = Faults(fail_next=FailNext(1, kind="disconnect", after_chunks=4))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in sdk(gw).chat.completions.create(model="stuck", messages=MESSAGES,
                                                     stream=True, max_tokens=9):
            received.append(chunk)
    assert "could not be continued" in info.value.message
    assert expected.startswith(text_of(received)) and len(text_of(received).split()) == 3
    assert ups.q1.stats.requests_total == q1_before  # q1 cannot continue: never asked


def test_anthropic_prefill_continues_a_broken_stream(gw: Gateway, ups: Upstreams) -> None:
    ups.a1.fail(Failure(529, "Overloaded", mid_stream=True))  # breaks after "The "
    chunks = stream(gw, "claude", stream_options={"include_usage": True})
    # The prefill may not end in whitespace: "The" is sent, and the continuation's leading
    # space is skipped at the seam, so the client reads no doubled or missing space.
    assert ups.a2.last.body["messages"][-1] == {
        "role": "assistant", "content": [{"type": "text", "text": "The"}]}
    assert text_of(chunks) == "The over the lazy dog."
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (12 + 11, 5 + 1)


# -- retry budget --------------------------------------------------------------------------


def test_retry_budget_bounds_upstream_attempts_when_everything_fails(tmp_path: Path) -> None:
    a, b = (Simulator("instant", seed=s, faults=Faults(rate_503=1.0)) for s in (1, 2))
    with ThreadedSim(a, b) as sims:
        gw = Gateway({
            "providers": [{"name": "a", "base_url": sims.urls[0] + "/v1"},
                          {"name": "b", "base_url": sims.urls[1] + "/v1"}],
            "routing": {"policy": "round-robin"},
            "failover": {"retry_budget": {"ratio": 0.2, "min_per_s": 0, "window_s": 60},
                         # circuits stay closed, so every request wants its retry
                         "breaker": {"consecutive_failures": 1000, "min_requests": 1000}},
            "models": {"m": {"deployments": [_dep("a"), _dep("b")]}},
        }, tmp_path)
        try:
            statuses: list[int] = []

            def client() -> None:
                with httpx.Client(base_url=gw.url, timeout=30) as c:
                    for _ in range(10):
                        statuses.append(c.post("/v1/chat/completions", json={
                            "model": "m", "messages": MESSAGES}).status_code)

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            budget = counters(gw)["retry_budget"]
            attempts = a.stats.requests_total + b.stats.requests_total
            print(f"\nretry budget: 80 requests, {attempts} upstream attempts,"
                  f" {budget['retries_total']} retries allowed, {budget['refused_total']}"
                  " refused")
            assert statuses == [502] * 80
            assert attempts == 80 + budget["retries_total"]
            assert budget["retries_total"] + budget["refused_total"] == 80
            assert 1 <= budget["retries_total"] <= 16  # 20 % of 80
        finally:
            gw.stop()


def test_fallback_only_to_models_the_key_may_use(ups: Upstreams, tmp_path: Path) -> None:
    key = "tk-test-primary-only-0123456789"
    gateway = Gateway({
        "providers": [{"name": n, "base_url": ups.urls[n] + "/v1"} for n in ("storm", "qb")],
        "models": {"primary": {"deployments": [_dep("storm")], "fallbacks": ["backup"]},
                   "backup": {"deployments": [_dep("qb")]}},
        "teams": [{"name": "t", "models": ["primary"], "keys": [{"id": "k", "key": key}]}],
    }, tmp_path)
    try:
        before = ups.qb.stats.requests_total
        client = OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="primary", messages=MESSAGES)
        assert info.value.code == "upstream_server_error"
        assert "upstream storm/x failed" in info.value.message
        assert ups.qb.stats.requests_total == before  # "backup" is not this key's model
    finally:
        gateway.stop()
