"""KV-aware routing against REAL vLLM servers on the CPU (the tiny random-weight model):
two replicas with prefix caching, KV events on ZeroMQ (`--kv-events-config`) and LoRA
enabled, a tiny adapter (made with peft) loaded on the first one only.

- the blocks a replica publishes after serving a prompt are exactly the keys we compute
  for it (tokenized with the model's chat template, hashed as vLLM hashes), adapter
  requests included;
- the token ids we compute for a request equal the replica's own `/tokenize` of it: chats
  (a long system prompt, several turns with text parts and non-ASCII text, a final
  message left open, a special token's text inside a message) and plain prompts;
- a gateway started after a replica cached a long system prompt routes the next request
  with that prompt there (its subscriber caught up from the replay), though prefix
  affinity would have sent it to the other one; the TTFT difference is printed.

Both servers start in parallel, once for this module (~30 s on 2 cores). These tests
never skip: if vLLM cannot start, they error with the server's log tail.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from tokenizers import Tokenizer

from gateway.canonical import CanonicalRequest, Deployment, Operation, Target
from policies.kv_index import KvIndex
from policies.routing.prefix_affinity import PrefixAffinity
from policies.scoreboard import Scoreboard
from selfhost import vllm_cpu
from selfhost.kv_blocks import BlockHasher, lora_extra
from selfhost.kv_events import KvEventsMonitor, KvEventsSpec
from selfhost.kv_tokens import HfTokenizer
from selfhost.vllm_cpu import VllmServer
from tests.support.polling import until
from tests.support.procs import Gateway

pytestmark = pytest.mark.vllm

MODEL = vllm_cpu.DEFAULT_SERVED_NAME
ADAPTER = "tiny-sql"
BLOCK = 128  # the CPU backend's KV block size (what its events report)
STARTUP_TIMEOUT_S = 300.0


class Replica:
    def __init__(self, server: VllmServer, events: int, replay: int) -> None:
        self.server, self.events, self.replay = server, events, replay
        self.url = server.url
        self.id = "vllm/" + server.url.split("://", 1)[1]


class Fleet:
    def __init__(self, a: Replica, b: Replica, model_dir: Path, lora_dir: Path) -> None:
        self.a, self.b = a, b
        self.model_dir, self.lora_dir = model_dir, lora_dir
        self.tokenizer = HfTokenizer(model_dir)

    @property
    def replicas(self) -> list[Replica]:
        return [self.a, self.b]

    def monitor(self, index: KvIndex) -> KvEventsMonitor:
        ports = {r.url: (r.events, r.replay) for r in self.replicas}
        by_url = {r.url: r.id for r in self.replicas}
        return KvEventsMonitor("vllm", KvEventsSpec(heartbeat_s=0.5), index,
                               members=lambda: list(by_url), replica_id=by_url.__getitem__,
                               ports=ports)

    def keys(self, messages: list[dict[str, str]], adapter: bool = False) -> list[int | bytes]:
        tokens = self.tokenizer.tokens(CanonicalRequest("chat", MODEL, {"messages": messages}))
        assert tokens is not None
        extra = lora_extra(ADAPTER, str(self.lora_dir)) if adapter else None
        return BlockHasher(BLOCK).keys(tokens, extra)


def _launch(port: int, events: int, replay: int, model_dir: Path, lora: Path | None,
            venv: Path) -> VllmServer:
    config = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": f"tcp://*:{events}", "replay_endpoint": f"tcp://*:{replay}"}
    args = ["--enable-prefix-caching", "--kv-events-config", json.dumps(config),
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    if lora is not None:
        args += ["--lora-modules", f"{ADAPTER}={lora}"]
    return vllm_cpu.launch(model_dir, port=port, venv=venv, extra_args=args,
                           extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    try:
        venv = vllm_cpu.ensure_venv()
        model_dir = vllm_cpu.ensure_tiny_model(venv=venv)
        lora_dir = vllm_cpu.ensure_tiny_lora(model_dir=model_dir, venv=venv)
    except vllm_cpu.VllmError as exc:
        pytest.fail(f"building the vLLM venv, tiny model or adapter failed:\n{exc}",
                    pytrace=False)
    ports = [vllm_cpu.free_port() for _ in range(6)]
    servers = [_launch(ports[0], ports[1], ports[2], model_dir, lora_dir, venv),
               _launch(ports[3], ports[4], ports[5], model_dir, None, venv)]
    try:
        for s in servers:
            print(f"\nvLLM ready at {s.url} after {s.wait_ready(STARTUP_TIMEOUT_S):.1f}s")
    except vllm_cpu.VllmError as exc:
        for s in servers:
            s.stop()
        pytest.fail(str(exc), pytrace=False)
    a = Replica(servers[0], ports[1], ports[2])
    b = Replica(servers[1], ports[4], ports[5])
    yield Fleet(a, b, model_dir, lora_dir)
    for s in servers:
        s.stop()


def _chat(url: str, messages: list[dict[str, str]], model: str = MODEL) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": messages, "max_tokens": 2}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _system(tag: str, words: int) -> str:
    return " ".join(f"{tag}{i % 97}" for i in range(words))


async def test_the_index_holds_exactly_the_blocks_we_compute(fleet: Fleet) -> None:
    index = KvIndex()
    monitor = fleet.monitor(index)
    await monitor.start()
    try:
        await until(lambda: all((e := index.get(r.id)) is not None and e.known
                                for r in fleet.replicas), 10)
        before_a = set(index.get(fleet.a.id).blocks)  # type: ignore[union-attr]
        before_b = set(index.get(fleet.b.id).blocks)  # type: ignore[union-attr]
        messages = [{"role": "system", "content": _system("alpha", 300)},
                    {"role": "user", "content": "What is the capital of France?"}]
        keys = fleet.keys(messages)
        assert len(keys) >= 4
        answer = await asyncio.to_thread(_chat, fleet.a.url, messages)
        assert answer["usage"]["prompt_tokens"] // BLOCK == len(keys)
        await until(lambda: set(keys) <= index.get(fleet.a.id).blocks, 10)  # type: ignore[union-attr]
        assert index.get(fleet.a.id).blocks - before_a == set(keys)  # type: ignore[union-attr]
        assert index.matched(fleet.a.id, keys) == len(keys)
        assert index.get(fleet.b.id).blocks == before_b  # type: ignore[union-attr]
        # A request for the adapter: its blocks are keyed with the adapter's name and path.
        lora_messages = [{"role": "system", "content": _system("beta", 300)},
                         {"role": "user", "content": "Hello!"}]
        lora_keys = fleet.keys(lora_messages, adapter=True)
        base_keys = fleet.keys(lora_messages)
        await asyncio.to_thread(_chat, fleet.a.url, lora_messages, ADAPTER)
        await until(lambda: set(lora_keys) <= index.get(fleet.a.id).blocks, 10)  # type: ignore[union-attr]
        assert not set(base_keys) & index.get(fleet.a.id).blocks  # type: ignore[union-attr]
        print(f"\nvLLM published the {len(keys)} block keys we computed for a "
              f"{answer['usage']['prompt_tokens']}-token chat, and the {len(lora_keys)} of"
              " an adapter request")
    finally:
        await monitor.stop()


def _tokenize(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The replica's own tokenization of a request (vLLM's `/tokenize`: a chat body or a
    completion body, with the token strings)."""
    data = json.dumps({**body, "model": MODEL, "return_token_strs": True}).encode()
    req = urllib.request.Request(url + "/tokenize", data=data,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _difference(ours: list[int], theirs: list[int], their_strs: list[str],
                vocab: Tokenizer) -> str:
    """Where two token lists first differ, with the tokens' strings on both sides."""
    at = next((i for i, (x, y) in enumerate(zip(ours, theirs, strict=False)) if x != y),
              min(len(ours), len(theirs)))
    mine = [vocab.id_to_token(t) for t in ours[at:at + 5]]
    return (f"{len(ours)} tokens ours, {len(theirs)} vLLM's; first difference at index "
            f"{at}: ours {ours[at:at + 5]} {mine}, vLLM's {theirs[at:at + 5]} "
            f"{their_strs[at:at + 5]}")


def test_our_tokens_equal_the_replicas_tokenize(fleet: Fleet) -> None:
    chats: list[dict[str, Any]] = [
        # The chat whose blocks the index test checks.
        {"messages": [{"role": "system", "content": _system("alpha", 300)},
                      {"role": "user", "content": "What is the capital of France?"}]},
        # Several turns; text parts (joined with newlines); non-ASCII, spaces, newlines.
        {"messages": [
            {"role": "system", "content": "  You answer in French.\n\nBe brief.  "},
            {"role": "user", "content": [{"type": "text", "text": "Café, naïve, 日本語 🙂"},
                                         {"type": "text", "text": "second part\t end"}]},
            {"role": "assistant", "content": "Oui.\n"},
            {"role": "user", "content": "And\r\nagain?"}]},
        # The final message left open, for the model to continue.
        {"messages": [{"role": "user", "content": "Count to three."},
                      {"role": "assistant", "content": "One, two,"}],
         "continue_final_message": True, "add_generation_prompt": False},
        # A special token's text inside a message: the tokenizer reads it as that token.
        {"messages": [{"role": "user", "content": "quote <|end|> and <|assistant|>x"}]},
    ]
    prompts = ["The capital of France is", " leading space, <|bos|> inside, ünïcode 🙂\n"]
    vocab = Tokenizer.from_file(str(fleet.model_dir / "tokenizer.json"))
    cases: list[tuple[Operation, dict[str, Any]]] = (
        [("chat", body) for body in chats] + [("completions", {"prompt": p}) for p in prompts])
    for operation, body in cases:
        ours = fleet.tokenizer.tokens(CanonicalRequest(operation, MODEL, body))
        assert ours is not None, body
        theirs = _tokenize(fleet.a.url, body)
        assert theirs["count"] == len(theirs["tokens"])
        assert ours == theirs["tokens"], _difference(ours, theirs["tokens"],
                                                     theirs["token_strs"], vocab)
    print(f"\nour token ids equal vLLM's /tokenize for {len(chats)} chats and "
          f"{len(prompts)} plain prompts")


def _ring_home(fleet: Fleet, messages: list[dict[str, str]]) -> str:
    deps = [Deployment(r.id, "m", "openai", Target(r.url + "/v1", MODEL), pool="vllm")
            for r in fleet.replicas]
    req = CanonicalRequest("chat", "m", {"model": "m", "messages": messages})
    return PrefixAffinity(Scoreboard()).order(req, deps)[0][0].id


def _streamed_ttft(client: OpenAI, messages: list[dict[str, str]]) -> tuple[float, str, str]:
    started = time.perf_counter()
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=messages, stream=True, max_tokens=2) as resp:  # type: ignore[arg-type]
        ttft = 0.0
        for line in resp.iter_lines():
            if line.startswith("data:") and not ttft:
                ttft = time.perf_counter() - started
        return ttft, resp.headers["x-turnout-deployment"], resp.headers["x-turnout-route"]


def test_a_gateway_routes_to_the_replica_holding_the_prefix(fleet: Fleet,
                                                             tmp_path: Path) -> None:
    # A long system prompt whose prefix-affinity home is A, cached on B only.
    tag = next(t for t in (f"gamma{k}x" for k in range(100))
               if _ring_home(fleet, [{"role": "system", "content": _system(t, 350)}])
               == fleet.a.id)
    system = {"role": "system", "content": _system(tag, 350)}
    first = [system, {"role": "user", "content": "First question."}]
    cold = _chat(fleet.b.url, first)
    assert cold["usage"]["prompt_tokens"] > 8 * BLOCK
    index = KvIndex()  # until B's events are out, so the gateway's replay will hold them

    async def published() -> None:
        monitor = fleet.monitor(index)
        await monitor.start()
        try:
            await until(lambda: set(fleet.keys(first)) <= index.get(fleet.b.id).blocks, 10)  # type: ignore[union-attr]
        finally:
            await monitor.stop()

    asyncio.run(published())
    config = {
        "pools": [{"name": "vllm", "endpoints": [r.url for r in fleet.replicas],
                   "kv_events": {"tokenizer": str(fleet.model_dir), "replicas": {
                       r.url: {"port": r.events, "replay_port": r.replay}
                       for r in fleet.replicas}}}],
        "models": {"m": {"deployments": [{"target": "vllm", "model": MODEL}],
                         "routing": {"policy": "kv-aware"}}},
    }
    gw = Gateway(config, tmp_path)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        second = [system, {"role": "user", "content": "Second question."}]
        shared = sum(1 for x, y in zip(fleet.keys(first), fleet.keys(second), strict=False)
                     if x == y)
        warm_ttft, where, route = _streamed_ttft(client, second)
        assert where == fleet.b.id, route
        assert route == f"kv-aware; kv prefix {shared * BLOCK} tokens cached"
        # The same size of prompt, never seen: a cold prefill (on its affinity home).
        other = [{"role": "system", "content": _system(tag + "new", 350)},
                 {"role": "user", "content": "Second question."}]
        cold_ttft, _, cold_route = _streamed_ttft(client, other)
        assert cold_route.startswith("kv-aware; kv prefix none cached"), cold_route
        print(f"\nTTFT through the gateway, {cold['usage']['prompt_tokens']}-token prompts: "
              f"{shared * BLOCK} tokens cached {warm_ttft * 1000:.0f} ms, none cached "
              f"{cold_ttft * 1000:.0f} ms")
    finally:
        gw.stop()


def test_adapter_requests_land_where_the_adapter_is_loaded(fleet: Fleet,
                                                           tmp_path: Path) -> None:
    config = {
        "pools": [{"name": "vllm", "endpoints": [r.url for r in fleet.replicas],
                   "lora": {"dynamic_loading": True}}],
        "models": {
            "sql": {"deployments": [{"target": "vllm", "model": ADAPTER,
                                     "adapter": str(fleet.lora_dir)}]},
            # The same weights under a name no replica has: loaded on demand.
            "sql-2": {"deployments": [{"target": "vllm", "model": "tiny-sql-2",
                                       "adapter": str(fleet.lora_dir)}]},
        },
    }
    gw = Gateway(config, tmp_path)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        hi = [{"role": "user", "content": "Hello!"}]
        seen = set()
        for _ in range(6):
            raw = client.chat.completions.with_raw_response.create(
                model="sql", messages=hi, max_tokens=2)  # type: ignore[arg-type]
            seen.add(raw.headers["x-turnout-deployment"])
        assert seen == {fleet.a.id}
        raw = client.chat.completions.with_raw_response.create(
            model="sql-2", messages=hi, max_tokens=2)  # type: ignore[arg-type]
        where = raw.headers["x-turnout-deployment"]
        assert raw.headers["x-turnout-route"].endswith(f"; loaded adapter tiny-sql-2 on {where}")
        root = next(r.url for r in fleet.replicas if r.id == where)
        with urllib.request.urlopen(root + "/v1/models", timeout=10) as resp:
            cards = json.loads(resp.read())["data"]
        assert any(c["id"] == "tiny-sql-2" and c["parent"] == MODEL for c in cards)
        print(f"\nadapter {ADAPTER}: 6/6 requests on {fleet.a.id}; tiny-sql-2 loaded on "
              f"demand on {where}")
    finally:
        gw.stop()
