"""Token estimates, streamed-text counting, cost arithmetic, and settlement through an
outage of the store."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.accounting.metering import Meter, Outcome, RequestContext, settlement, text_chars
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.store import RedisStore, StoreUnavailable
from gateway.telemetry.metrics import MeasuredConnection, Metrics
from gateway.wire.base import ScriptCall
from policies.budgets import to_nanos
from policies.keys import ANONYMOUS
from policies.pricing import cost_nanos, max_output_tokens, prompt_tokens, worst_case_nanos
from tests.support.fake_wire import FakeRedis


def dep(i: float, o: float, cached: float | None = None) -> Deployment:
    return Deployment("d", "m", "openai", Target("http://x/v1", "m"), i, o,
                      price_cached_input=cached)


def test_prompt_estimates() -> None:
    chat = {"messages": [{"role": "user", "content": "abcdefgh"},  # 2 + 4
                         {"role": "user", "content": [{"type": "text", "text": "abcde"},
                                                      {"type": "image_url"}]}]}  # 2 + 4
    assert prompt_tokens("chat", chat) == 12
    assert prompt_tokens("completions", {"prompt": [[1, 2, 3], [4]]}) == 4  # ids are exact
    assert prompt_tokens("embeddings", {"input": ["abcd", "abcde"]}) == 3
    assert max_output_tokens("chat", {"max_completion_tokens": 7, "n": 2}, 99) == 14
    assert max_output_tokens("completions", {}, 99) == 99
    assert max_output_tokens("embeddings", {"max_tokens": 5}, 99) == 0


def test_streamed_text_is_counted_from_serialized_chunks() -> None:
    chunk = orjson.dumps({"choices": [{"delta": {"content": 'say "hi"'}}]})
    assert text_chars(chunk) == len('say \\"hi\\"')  # escapes count as written
    tool = orjson.dumps({"choices": [{"delta": {"tool_calls": [
        {"function": {"arguments": '{"a":1}'}}]}}]})
    assert text_chars(tool) == len('{\\"a\\":1}')
    assert text_chars(b'{"choices":[{"delta":{"content": "abc"}}]}') == 3
    assert text_chars(b'{"choices":[{"delta":{"content":null}}]}') == 0
    assert text_chars(b'{"choices":[{"text":"abcd","index":0}]}') == 4


def test_cost_uses_cached_input_price_and_rounds_once() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=400)
    assert cost_nanos(dep(0.15, 0.60, 0.075), usage) == round(1000 * (600 * 0.15 + 400 * 0.075
                                                                      + 10 * 0.60))
    assert cost_nanos(dep(0.15, 0.60), usage) == round(1000 * (1000 * 0.15 + 10 * 0.60))
    assert worst_case_nanos([dep(1, 1), dep(0.5, 4)], 10, 10) == 45_000  # the dearer one
    assert to_nanos(0.00037) == 370_000


def admitted(rid: str) -> tuple[RequestContext, Outcome]:
    req = CanonicalRequest("chat", "m", {"messages": []}, request_id=rid)
    out = Outcome(time.monotonic(), status=200, deployment=dep(1, 2), usage=Usage(10, 5))
    return RequestContext(ANONYMOUS, req, rid, 10, 5, 0, ()), out


async def test_settlements_wait_out_a_store_outage_in_order() -> None:
    # Over a fake Redis connection (no sockets): down, then back.
    redis = FakeRedis(lambda command: 1)
    meter = Meter(RedisStore(redis))
    redis.down = True
    for rid in ("r1", "r2", "r3"):
        args = meter.settle(*admitted(rid))
        assert args.cost_nanos == 20_000  # 10 tokens at $1/M + 5 at $2/M
    await asyncio.sleep(0.05)
    assert redis.commands == []  # nothing recorded yet, nothing lost either
    redis.down = False
    await meter.close()
    calls = [c for c in redis.commands if isinstance(c, ScriptCall)]
    assert [c.script.name for c in calls] == ["settle"] * 3
    events = [orjson.loads(next(a for a in c.args if isinstance(a, bytes) and a[:1] == b"{"))
              for c in calls]
    assert [e["request_id"] for e in events] == ["r1", "r2", "r3"]


async def test_redis_round_trips_are_timed_by_operation() -> None:
    metrics = Metrics(["m"], None)
    redis = MeasuredConnection(FakeRedis(lambda command: b"OK"), metrics)
    store = RedisStore(redis)
    await store.set("k", b"v")
    down = FakeRedis(lambda command: 1)
    down.down = True
    with pytest.raises(StoreUnavailable):
        await RedisStore(MeasuredConnection(down, metrics)).settle_many(
            [settlement(*admitted("r9"))])
    samples = {(s.name, s.labels.get("op")): s.value
               for family in metrics.registry.collect() for s in family.samples}
    assert samples[("turnout_redis_duration_seconds_count", "set")] == 1
    assert samples[("turnout_redis_errors_total", "settle")] == 1
