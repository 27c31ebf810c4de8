"""The simulator's KV cache and events, and its LoRA adapters, over real sockets: what it
publishes is what the gateway's subscriber indexes, and matches the keys the gateway
computes for the same request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.canonical import CanonicalRequest, Deployment, Target
from policies.kv_index import KvIndex
from selfhost.kv_blocks import BlockHasher
from selfhost.kv_events import KvEventsMonitor, KvEventsSpec
from selfhost.kv_keys import RequestKeys
from selfhost.sim import RunningSim, Simulator, serve
from selfhost.sim_kv import BlockCache, SimTokenizer
from selfhost.sim_lora import Adapters
from tests.support.polling import until
from tests.support.procs import free_port

SYSTEM = " ".join(f"rule{i}" for i in range(60))  # 64 tokens with the template's 4


def _chat(question: str, model: str = "sim-model") -> dict[str, object]:
    return {"model": model, "max_tokens": 2, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


@pytest.fixture
async def running() -> AsyncIterator[RunningSim]:
    sim = Simulator("instant", kv_blocks=8, block_size=16,
                    adapters=Adapters({"sql": "/adapters/sql"}, runtime_updates=True))
    r = await serve(sim)
    yield r
    await r.close()


async def _post(url: str, body: object) -> tuple[int, dict[str, object] | str]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as resp:
        text = await resp.text()
        return resp.status, (await resp.json() if "json" in resp.content_type else text)


async def test_published_blocks_are_the_keys_the_gateway_computes(running: RunningSim) -> None:
    assert running.sim.kv_publisher is not None
    index = KvIndex()
    monitor = KvEventsMonitor(
        "p", KvEventsSpec(running.sim.kv_publisher.port, running.sim.kv_publisher.replay_port),
        index, members=lambda: [running.url], replica_id=lambda root: "p/r")
    await monitor.start()
    try:
        body = _chat("first question here")
        status, answer = await _post(running.url + "/v1/chat/completions", body)
        assert status == 200 and isinstance(answer, dict)
        dep = Deployment("p/r", "m", "openai", Target(running.url + "/v1", "sim-model"),
                         pool="p")
        keys = RequestKeys(SimTokenizer()).keys(CanonicalRequest("chat", "m", body), dep, 16)
        assert keys is not None and len(keys) == 4  # 72 prompt tokens: 4 full blocks
        await until(lambda: index.matched("p/r", keys) == 4)
        # Same system prompt, another question: the system prompt's 4 blocks hit.
        _, again = await _post(running.url + "/v1/chat/completions", _chat("another one"))
        assert isinstance(again, dict)
        usage = again["usage"]
        assert isinstance(usage, dict)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 64}
        # A third long prompt overflows the 8-block cache: the oldest blocks go.
        await _post(running.url + "/v1/chat/completions",
                    {"model": "sim-model", "messages": [
                        {"role": "user", "content": " ".join(["x"] * 100)}]})
        await until(lambda: index.get("p/r") is not None
                     and index.get("p/r").removed_total > 0)  # type: ignore[union-attr]
        assert len(index.get("p/r").blocks) == 8  # type: ignore[union-attr]
    finally:
        await monitor.stop()


async def test_adapters_are_listed_served_and_loaded(running: RunningSim) -> None:
    async with aiohttp.ClientSession() as s, s.get(running.url + "/v1/models") as resp:
        cards = (await resp.json())["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
        ("sim-model", None, "sim-model"), ("sql", "sim-model", "/adapters/sql")]
    status, _ = await _post(running.url + "/v1/chat/completions", _chat("q", "sql"))
    assert status == 200
    status, err = await _post(running.url + "/v1/chat/completions", _chat("q", "legal"))
    assert status == 404 and isinstance(err, dict)
    status, _ = await _post(running.url + "/v1/load_lora_adapter",
                            {"lora_name": "legal", "lora_path": "/adapters/legal"})
    assert status == 200
    status, again = await _post(running.url + "/v1/load_lora_adapter",
                                {"lora_name": "legal", "lora_path": "/adapters/legal"})
    assert status == 400 and "already been loaded" in str(again)
    status, _ = await _post(running.url + "/v1/chat/completions", _chat("q", "legal"))
    assert status == 200
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'vllm:lora_requests_info{max_lora="4",running_lora_adapters=""' in metrics


def test_block_cache_keys_adapters_apart_and_evicts_tails_first() -> None:
    cache = BlockCache(4, BlockHasher(2))
    assert cache.lookup_insert([1, 2, 3, 4, 5, 6]) == 0
    assert cache.lookup_insert([1, 2, 3, 4, 9, 9]) == 4
    assert cache.lookup_insert([1, 2, 3, 4], ("sql", "/a")) == 0  # other keys, as vLLM's
    events = cache.drain()
    kinds = [e["type"] for e in events]
    assert kinds == ["BlockStored", "BlockStored", "BlockStored", "BlockRemoved"]
    assert events[1]["parent_block_hash"] == events[0]["block_hashes"][1]
    assert events[2]["lora_name"] == "sql"
    # The first prompt's tail (and the second's) went before the shared head.
    assert cache.lookup_insert([1, 2, 3, 4]) == 4


async def test_events_on_the_ports_asked_for() -> None:
    ports = (free_port(), free_port())
    running = await serve(Simulator("instant", kv_blocks=4, kv_ports=ports))
    try:
        assert running.sim.kv_publisher is not None
        assert (running.sim.kv_publisher.port, running.sim.kv_publisher.replay_port) == ports
    finally:
        await running.close()
