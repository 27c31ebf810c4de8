"""The response cache end to end: a gateway with 2 workers sharing a real Redis, the
simulator counting what reaches it (`requests_total`), both HTTP surfaces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from selfhost.sim import FailNext, Faults, Simulator, ThreadedSim
from tests.conftest import GatewayFactory
from tests.e2e.test_demo_config import DEMO_KEY, NO_KEYS, demo_config
from tests.support.accounts import auth, eventually, new_key, suffix
from tests.support.procs import Gateway, RedisServer

S = suffix()
TEAMS = {name: f"{name}-{S}" for name in ("a", "b", "lean", "meter")}
KEYS = {name: new_key() for name in TEAMS}
ADMIN = new_key()
PRICE = {"input": 1.0, "output": 2.0}  # USD per 1M tokens
LEAN_RPM = 3
# The lean team's budget: one answer of 5 output tokens at $2 per 1M, input free, which is
# also that request's worst case (the simulator always writes max_tokens tokens).
LEAN_BUDGET_NANOS = 5 * 2000


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant")) as s:
        yield s


def _dep(sim: ThreadedSim, price: dict[str, float] = PRICE) -> dict[str, Any]:
    return {"deployments": [{"target": "sim", "model": "m", "price": price}]}


@pytest.fixture(scope="module")
def gateway(sim: ThreadedSim, redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "redis": {"url": redis_server.url},
        # A hung first token fails its stream after 1 s (the leader-failure test).
        "server": {"timeouts": {"first_token_s": 1, "total_s": 30}},
        "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
        "models": {"cached": _dep(sim), "embed": _dep(sim),
                   "shared": {**_dep(sim), "cache": {"shared": True}},
                   "uncached": {**_dep(sim), "cache": {"enabled": False}},
                   "free-input": _dep(sim, {"input": 0.0, "output": 2.0}),
                   "primary": {"deployments": [{"target": "sim", "model": "p"}],
                               "fallbacks": ["cached"]}},
        "cache": {"enabled": True, "wait_s": 20},
        "auth": {"admin_key": ADMIN},
        "teams": [{"name": TEAMS[n], "keys": [{"id": n, "key": KEYS[n]}],
                   **({"key_limits": {"rpm": LEAN_RPM},
                       "budget": {"usd": LEAN_BUDGET_NANOS / 1e9, "period": "daily"}}
                      if n == "lean" else {})} for n in TEAMS],
    }
    gw = Gateway(config, tmp_path_factory.mktemp("gw"), workers=2)
    yield gw
    gw.stop()


@contextmanager
def upstream_calls(sim: ThreadedSim, expected: int) -> Iterator[None]:
    """Asserts how many requests reached the simulator within the block."""
    before = sim.sim.stats.requests_total
    yield
    assert sim.sim.stats.requests_total - before == expected


_n = 0


def prompt(tag: str) -> list[dict[str, str]]:
    global _n
    _n += 1
    return [{"role": "user", "content": f"{tag} {_n} {S}"}]  # fresh for each test


def chat(gw: Gateway, who: str = "a", headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions", **body: Any) -> httpx.Response:
    body = {"model": "cached", "max_tokens": 5, "temperature": 0, **body}
    return httpx.post(gw.url + path, json=body, headers={**auth(KEYS[who]), **(headers or {})},
                      timeout=30)


def events(resp: httpx.Response) -> list[Any]:
    """The `data:` payloads of an SSE response, parsed, [DONE] as the string."""
    out: list[Any] = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def chunk_texts(resp: httpx.Response) -> list[str | None]:
    return [e["choices"][0]["delta"].get("content") for e in events(resp)
            if isinstance(e, dict) and e["choices"]]


def content(resp: httpx.Response) -> str:
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text


def test_miss_then_hit_ignoring_who_asks(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs = prompt("hello")
    with upstream_calls(sim, 1):
        first = chat(gateway, messages=msgs, user="alice")
        again = chat(gateway, messages=msgs, user="bob", temperature=0.0)
    assert first.status_code == again.status_code == 200
    assert (first.headers["x-turnout-cache"], again.headers["x-turnout-cache"]) == ("miss", "hit")
    assert again.json() == first.json()
    assert "x-turnout-deployment" in first.headers and "x-turnout-deployment" not in again.headers
    assert int(again.headers["age"]) >= 0
    with upstream_calls(sim, 1):  # anything that changes the answer is another entry
        other = chat(gateway, messages=msgs, max_tokens=4)
    assert other.headers["x-turnout-cache"] == "miss"


def test_embeddings_are_cached(gateway: Gateway, sim: ThreadedSim) -> None:
    body = {"model": "embed", "input": f"embed me {S}"}
    with upstream_calls(sim, 1):
        got = [httpx.post(gateway.url + "/v1/embeddings", json=body, headers=auth(KEYS["a"]))
               for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "hit"]
    assert got[0].json() == got[1].json()


def test_bypass_and_request_directives(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs = prompt("directives")
    with upstream_calls(sim, 2):  # not deterministic: never cached
        sampled = [chat(gateway, messages=msgs, temperature=0.7) for _ in range(2)]
    assert {r.headers["x-turnout-cache"] for r in sampled} == {"bypass"}
    with upstream_calls(sim, 1):  # a seed makes it deterministic
        seeded = [chat(gateway, messages=msgs, temperature=0.7, seed=4) for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in seeded] == ["miss", "hit"]

    no_store = {"cache-control": "no-store"}
    with upstream_calls(sim, 3):  # no-store: neither looked up nor stored; then a miss
        got = [chat(gateway, messages=msgs, headers=no_store) for _ in range(2)]
        got.append(chat(gateway, messages=msgs))
    assert [r.headers["x-turnout-cache"] for r in got] == ["bypass", "bypass", "miss"]
    with upstream_calls(sim, 2):  # no-cache: not answered from the cache, still stored
        got = [chat(gateway, messages=msgs, headers={"cache-control": "no-cache"}),
               chat(gateway, messages=msgs, headers={"cache-control": "max-age=0"}),
               chat(gateway, messages=msgs, headers={"cache-control": "max-age=3600"})]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "miss", "hit"]
    with upstream_calls(sim, 2):  # a model the cache is off for: no header at all
        got = [chat(gateway, model="uncached", messages=msgs) for _ in range(2)]
    assert all("x-turnout-cache" not in r.headers for r in got)
    bad = chat(gateway, messages=msgs, headers={"x-turnout-cache-ttl": "soon"})
    assert bad.status_code == 400 and "x-turnout-cache-ttl" in bad.json()["error"]["message"]


def test_entries_expire_after_their_ttl(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs, ttl = prompt("ttl"), {"x-turnout-cache-ttl": "1"}
    with upstream_calls(sim, 1):
        got = [chat(gateway, messages=msgs, headers=ttl) for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "hit"]
    time.sleep(1.5)  # waiting out the TTL is the behaviour under test
    with upstream_calls(sim, 1):
        assert chat(gateway, messages=msgs).headers["x-turnout-cache"] == "miss"


def test_stream_replay_equals_the_original_chunk_for_chunk(gateway: Gateway,
                                                           sim: ThreadedSim) -> None:
    msgs = prompt("stream")
    usage = {"include_usage": True}
    with upstream_calls(sim, 1):
        original = chat(gateway, messages=msgs, stream=True, max_tokens=8, stream_options=usage)
        replayed = chat(gateway, messages=msgs, stream=True, max_tokens=8, stream_options=usage)
        whole = chat(gateway, messages=msgs, max_tokens=8)  # and as one answer
    assert [r.headers["x-turnout-cache"] for r in (original, replayed, whole)] == [
        "miss", "hit", "hit"]
    assert replayed.headers["content-type"].startswith("text/event-stream")
    texts = chunk_texts(original)
    assert len(texts) == 9 and texts[0] == ""  # the role chunk, then one chunk a token
    assert chunk_texts(replayed) == texts
    assert content(whole) == "".join(t or "" for t in texts)
    final = [events(r)[-2]["usage"] for r in (original, replayed)]
    assert final[0] == final[1] and final[0]["completion_tokens"] == 8
    assert whole.json()["usage"]["total_tokens"] == final[0]["total_tokens"]
    assert events(replayed)[-1] == "[DONE]"
    plain = chat(gateway, messages=msgs, stream=True, max_tokens=8)  # usage not asked for
    assert chunk_texts(plain) == texts and all(e == "[DONE]" or e["choices"]
                                               for e in events(plain))


def test_a_non_streamed_answer_replays_as_a_stream(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs = prompt("whole")
    with upstream_calls(sim, 1):
        whole = chat(gateway, messages=msgs)
        streamed = chat(gateway, messages=msgs, stream=True)
    assert streamed.headers["x-turnout-cache"] == "hit"
    assert "".join(t or "" for t in chunk_texts(streamed)) == content(whole)
    assert events(streamed)[-1] == "[DONE]"


def anthropic_text(resp: httpx.Response) -> str:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            event = orjson.loads(line[6:])
            if event["type"] == "content_block_delta":
                out.append(event["delta"]["text"])
    return "".join(out)


def test_the_anthropic_surface_replays_hits_in_its_own_format(gateway: Gateway,
                                                              sim: ThreadedSim) -> None:
    msgs = prompt("claude")
    with upstream_calls(sim, 1):
        first = chat(gateway, path="/v1/messages", messages=msgs)
        streamed = chat(gateway, path="/v1/messages", messages=msgs, stream=True)
        openai_side = chat(gateway, messages=msgs)  # the same canonical request
    assert [r.headers["x-turnout-cache"] for r in (first, streamed, openai_side)] == [
        "miss", "hit", "hit"]
    text = first.json()["content"][0]["text"]
    assert first.json()["type"] == "message" and first.json()["usage"]["output_tokens"] == 5
    assert anthropic_text(streamed) == text == content(openai_side)
    assert "event: message_stop" in streamed.text
    assert '"output_tokens":5' in streamed.text.split("event: message_delta")[1]


def test_concurrent_identical_misses_make_one_upstream_call(gateway: Gateway,
                                                            sim: ThreadedSim) -> None:
    msgs = prompt("burst")
    sim.sim.faults = Faults(extra_ttft_ms=500)  # the leader is still working as they arrive

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=60) as c:
            body = {"model": "cached", "messages": msgs, "max_tokens": 6, "temperature": 0}
            return list(await asyncio.gather(*(
                c.post("/v1/chat/completions", json={**body, "stream": i % 2 == 1},
                       headers=auth(KEYS["a"])) for i in range(100))))

    try:
        with upstream_calls(sim, 1):
            got = asyncio.run(burst())
    finally:
        sim.sim.faults = Faults()
    assert [r.status_code for r in got] == [200] * 100
    outcomes = [r.headers["x-turnout-cache"] for r in got]
    assert (outcomes.count("miss"), outcomes.count("hit")) == (1, 99)
    answers = {content(r) if i % 2 == 0 else "".join(t or "" for t in chunk_texts(r))
               for i, r in enumerate(got)}
    assert len(answers) == 1 and len(answers.pop().split()) == 6


def test_a_failing_leader_hands_over_to_one_waiter(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs = prompt("takeover")
    # The first request to arrive hangs (the leader), until the gateway gives up on its
    # first token after 1 s; the others are waiting for it by then.
    sim.sim.faults = Faults(fail_next=FailNext(1, kind="hang"))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as c:
            body = {"model": "cached", "messages": msgs, "max_tokens": 5, "temperature": 0,
                    "stream": True}
            return list(await asyncio.gather(*(
                c.post("/v1/chat/completions", json=body, headers=auth(KEYS["a"]))
                for _ in range(20))))

    try:
        with upstream_calls(sim, 2):  # the hung one, and one taking over
            got = asyncio.run(burst())
    finally:
        sim.sim.faults = Faults()
    assert sorted(r.status_code for r in got) == [200] * 19 + [504]
    outcomes = sorted(r.headers["x-turnout-cache"] for r in got)
    assert outcomes == ["hit"] * 18 + ["miss"] * 2  # the failed leader and its successor
    assert len({tuple(chunk_texts(r)) for r in got if r.status_code == 200}) == 1


def test_a_fallback_models_answer_is_not_stored(gateway: Gateway, sim: ThreadedSim) -> None:
    msgs = prompt("fallback")
    sim.sim.faults = Faults(fail_next=FailNext(1, status=500))  # the primary fails once
    try:
        with upstream_calls(sim, 2):
            rescued = chat(gateway, model="primary", messages=msgs)
    finally:
        sim.sim.faults = Faults()
    assert rescued.status_code == 200 and rescued.headers["x-turnout-cache"] == "miss"
    assert "fallback to cached" in rescued.headers["x-turnout-route"]
    with upstream_calls(sim, 1):  # the primary's own answer is the one stored
        got = [chat(gateway, model="primary", messages=msgs) for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "hit"]


def test_no_answer_crosses_teams_unless_the_model_is_shared(gateway: Gateway,
                                                            sim: ThreadedSim) -> None:
    msgs = prompt("teams")
    with upstream_calls(sim, 2):
        got = [chat(gateway, who, messages=msgs) for who in ("a", "b", "a", "b")]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "miss", "hit", "hit"]
    with upstream_calls(sim, 1):
        got = [chat(gateway, who, model="shared", messages=msgs) for who in ("a", "b")]
    assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "hit"]


def test_hits_are_metered_free_with_what_they_saved(gateway: Gateway) -> None:
    msgs = prompt("meter")
    miss, hit = (chat(gateway, "meter", messages=msgs) for _ in range(2))
    assert (miss.headers["x-turnout-cache"], hit.headers["x-turnout-cache"]) == ("miss", "hit")
    admin = {"authorization": f"Bearer {ADMIN}"}

    def settled() -> list[dict[str, Any]] | None:
        rows = httpx.get(f"{gateway.url}/admin/events", headers=admin,
                         params={"team": TEAMS["meter"], "format": "json"}).json()["data"]
        return rows if len(rows) == 2 else None

    first, second = sorted(eventually(settled), key=lambda e: e["cache_hit"])
    tokens = miss.json()["usage"]["total_tokens"]
    assert (first["cache_hit"], first["total_tokens"], first["saved_tokens"]) == (
        False, tokens, 0)
    assert first["cost_usd"] > 0
    assert (second["cache_hit"], second["cost_usd"], second["total_tokens"]) == (True, 0.0, 0)
    assert (second["saved_tokens"], second["saved_cost_usd"]) == (tokens, first["cost_usd"])
    assert second["deployment"] is None
    [row] = httpx.get(f"{gateway.url}/admin/usage", headers=admin,
                      params={"team": TEAMS["meter"], "by": "team"}).json()["data"]
    assert (row["requests"], row["cache_hits"], row["saved_tokens"]) == (2, 1, tokens)
    assert row["saved_cost_usd"] == row["cost_usd"] == first["cost_usd"]


def test_a_hit_counts_against_rpm_but_reserves_no_budget(gateway: Gateway) -> None:
    msgs = prompt("lean")

    def lean(messages: list[dict[str, str]]) -> httpx.Response:
        return chat(gateway, "lean", model="free-input", messages=messages)

    first = lean(msgs)  # reserves, then spends, the whole budget
    assert first.status_code == 200 and first.headers["x-turnout-cache"] == "miss"
    admin = {"authorization": f"Bearer {ADMIN}"}
    eventually(lambda: httpx.get(f"{gateway.url}/admin/teams/{TEAMS['lean']}",
                                 headers=admin).json()["spend"]["spent_usd"] > 0)
    broke = lean(prompt("lean other"))  # a miss: no budget left for it
    assert broke.status_code == 429 and broke.json()["error"]["code"] == "insufficient_quota"
    hits = [lean(msgs) for _ in range(LEAN_RPM - 1)]  # free: no budget needed
    assert [r.headers["x-turnout-cache"] for r in hits] == ["hit"] * (LEAN_RPM - 1)
    assert [r.headers["x-ratelimit-remaining-requests"] for r in hits] == ["1", "0"]
    assert all("x-ratelimit-remaining-tokens" not in r.headers for r in hits)
    limited = lean(msgs)  # but each counted against the key's RPM
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_redis_down_serves_uncached(sim: ThreadedSim, gateway_factory: GatewayFactory,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("redis-down")
    redis = RedisServer(workdir)
    try:
        gw = gateway_factory({"redis": {"url": redis.url},
                              "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
                              "models": {"cached": _dep(sim)}, "cache": {"enabled": True}})
        msgs = prompt("outage")
        body = {"model": "cached", "messages": msgs, "max_tokens": 5, "temperature": 0}
        with upstream_calls(sim, 1):
            got = [httpx.post(gw.url + "/v1/chat/completions", json=body) for _ in range(2)]
        assert [r.headers["x-turnout-cache"] for r in got] == ["miss", "hit"]
        redis.kill()
        with upstream_calls(sim, 2):
            down = [httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
                    for _ in range(2)]
        assert [r.status_code for r in down] == [200, 200]
        assert [r.headers["x-turnout-cache"] for r in down] == ["bypass", "bypass"]
        assert content(down[0]) == content(got[0])
        assert eventually(lambda: "response cache: redis unavailable" in gw.logs())
        redis = RedisServer(workdir, port=redis.port)  # back, empty: the cache resumes
        assert eventually(lambda: httpx.post(gw.url + "/v1/chat/completions", json=body)
                          .headers["x-turnout-cache"] == "hit")
        assert "response cache: the store is back" in gw.logs()
    finally:
        redis.stop()


def test_the_demo_config_caches(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(demo_config(), env=NO_KEYS)  # the README's run command
    client = OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "What is Turnout?"}]
    raws = [client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=messages, temperature=0, max_tokens=6) for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in raws] == ["miss", "hit"]
    answer = raws[0].parse().choices[0].message.content
    assert raws[1].parse().choices[0].message.content == answer
    stream = client.chat.completions.create(model="demo-chat", messages=messages,
                                            temperature=0, max_tokens=6, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
    embed = [client.embeddings.with_raw_response.create(model="demo-embed", input="x")
             for _ in range(2)]
    assert [r.headers["x-turnout-cache"] for r in embed] == ["miss", "hit"]
