"""The adapter directory against simulated replicas over HTTP: what /v1/models says is
loaded, and loading on demand (once, however many requests ask at the same time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.canonical import Deployment, Target
from selfhost.lora import AdapterDirectory, parse_adapters, parse_lora_info
from selfhost.sim import RunningSim, Simulator, serve
from selfhost.sim_lora import Adapters


@pytest.fixture
async def replicas() -> AsyncIterator[list[RunningSim]]:
    running = [await serve(Simulator("instant", adapters=Adapters(
        {"sql": "/a/sql"} if i == 0 else {}, runtime_updates=True))) for i in range(2)]
    yield running
    for r in running:
        await r.close()


def _dep(root: str, name: str, path: str = "/a/x") -> Deployment:
    return Deployment("p/" + root.split("://")[1], name, "openai", Target(root + "/v1", name),
                      pool="p", adapter_path=path)


async def _directory(replicas: list[RunningSim], session: aiohttp.ClientSession,
                     dynamic: bool) -> AdapterDirectory:
    async def fetch(url: str, timeout_s: float) -> tuple[int, bytes]:
        async with session.get(url) as resp:
            return resp.status, await resp.read()

    async def post(url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        async with session.post(url, data=body) as resp:
            return resp.status, await resp.read()

    loads = {r.url: float(i) for i, r in enumerate(replicas)}  # the first is least loaded
    directory = AdapterDirectory(fetch, post, members=lambda pool: [r.url for r in replicas],
                                 load=lambda d: loads[d.target.base_url[:-3]],
                                 dynamic={"p": dynamic})
    await directory.refresh([r.url for r in replicas])
    return directory


async def test_loaded_adapters_and_loading_once(replicas: list[RunningSim]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as session:
        directory = await _directory(replicas, session, dynamic=True)
        assert directory.loaded == {a.url: {"sql": "/a/sql"}, b.url: {}}
        assert directory.has(_dep(a.url, "sql")) and not directory.has(_dep(b.url, "sql"))
        assert await directory.ensure([_dep(a.url, "sql"), _dep(b.url, "sql")]) is None
        legal = [_dep(a.url, "legal"), _dep(b.url, "legal")]
        notes = await asyncio.gather(*(directory.ensure(legal) for _ in range(5)))
        assert set(notes) == {f"loaded adapter legal on {legal[0].id}"}
        assert a.sim.adapters is not None and a.sim.adapters.loads == 1
        assert directory.has(legal[0])


async def test_no_loading_unless_the_pool_allows(replicas: list[RunningSim]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as session:
        directory = await _directory(replicas, session, dynamic=False)
        assert await directory.ensure([_dep(a.url, "legal"), _dep(b.url, "legal")]) is None
        assert a.sim.adapters is not None and a.sim.adapters.loads == 0


def test_parse_adapters_takes_cards_with_a_parent() -> None:
    body = (b'{"object":"list","data":[{"id":"base","root":"/m","parent":null},'
            b'{"id":"sql","root":"/a/sql","parent":"base"}]}')
    assert parse_adapters(body) == {"sql": "/a/sql"}
    assert parse_adapters(b"not json") is None
    assert parse_adapters(b'{"data": 3}') is None


async def test_loading_prefers_a_replica_with_a_free_adapter_slot(
        replicas: list[RunningSim]) -> None:
    a, b = replicas
    assert a.sim.adapters is not None
    a.sim.adapters.max_loras = 1
    a.sim.adapters.running["sql"] = 1  # its one slot is taken: a new adapter would swap
    async with aiohttp.ClientSession() as session:
        directory = await _directory(replicas, session, dynamic=True)  # a is least loaded
        assert directory.slots[a.url] == (1, 1)
        legal = [_dep(a.url, "legal"), _dep(b.url, "legal")]
        assert await directory.ensure(legal) == f"loaded adapter legal on {legal[1].id}"


def test_parse_lora_info_takes_the_latest_sample() -> None:
    # As vLLM 0.32 on the CPU writes it (the value is the sample's time).
    text = ('# TYPE vllm:lora_requests_info gauge\n'
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",'
            'waiting_lora_adapters=""} 1.7966687657977526e+09\n'
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",'
            'waiting_lora_adapters="c"} 1.7966687697977526e+09\n')
    assert parse_lora_info(text) == (2, 3)
    assert parse_lora_info("vllm:num_requests_running 0\n") is None
