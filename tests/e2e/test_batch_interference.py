"""The lane yields to interactive load (the short version of `bench/batch_lane.py`): a
batch fills a small pool's spare slots; interactive streams then take most of the pool,
and the lane stops running lines (its headroom 0, its lines done or preempted) while they
hold it; once they stop, the batch runs to the end. Behaviour only: no timing thresholds
beyond generous deadlines."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.batches import chat_lines, jsonl, pool_config, wait_batch
from tests.support.procs import Gateway

LINES = 300
GPU = SimProfile.named("fast-gpu", max_num_seqs=8, base_ttft_ms=5, itl_ms=20)
STREAMS = 14  # of the pool's 16 slots: past the lane's fill (0.75)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with ThreadedSim(Simulator(GPU), Simulator(GPU, seed=1)) as sims:
        gw = Gateway({
            "pools": [pool_config("gpu", sims.urls)],
            "models": {"chat": {"deployments": [{"target": "gpu", "model": "m"}]}},
            "routing": {"slo_ttft_ms": 500, "within_pool": "least-loaded"},
            "batch": {"storage": {"path": str(tmp_path / "files")}},
        }, tmp_path)
        yield gw
        gw.stop()


def lane(gw: Gateway) -> tuple[float, float]:
    """(lines running, headroom) from the gateway's /metrics."""
    text = httpx.get(gw.url + "/metrics").text
    running = re.search(r"^turnout_batch_lines_running (\S+)$", text, re.M)
    room = re.search(r'^turnout_batch_headroom_lines\{model="chat"\} (\S+)$', text, re.M)
    return (float(running.group(1)) if running else 0.0,
            float(room.group(1)) if room else -1.0)


class Interactive:
    """STREAMS closed-loop streaming clients in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url, self.done, self.errors = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, http: httpx.AsyncClient) -> None:
        body = {"model": "chat", "stream": True, "max_tokens": 60,
                "messages": [{"role": "user", "content": "hi"}]}
        while not self._stop.is_set():
            async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                await resp.aread()
                if resp.status_code == 200:
                    self.done += 1
                else:
                    self.errors += 1

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            await asyncio.gather(*(self._client(http) for _ in range(STREAMS)))

    def __enter__(self) -> Interactive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def poll(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_batch_yields_to_interactive_load(gateway: Gateway) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    f = client.files.create(file=jsonl(chat_lines(LINES, max_tokens=10)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    poll(lambda: lane(gateway)[0] >= 4, "the lane never filled the idle pool")
    with Interactive(gateway.url) as load:
        # Interactive streams take the pool: the lane stops (headroom 0, no line running).
        poll(lambda: lane(gateway) == (0.0, 0.0), "the lane did not yield")
        during = client.batches.retrieve(batch.id).request_counts
        poll(lambda: load.done >= 2 * STREAMS, "interactive streams did not finish")
        # While they hold the pool it stays yielded (the lane takes no more lines).
        assert lane(gateway) == (0.0, 0.0)
        assert during is not None and during.completed < LINES
    assert load.errors == 0
    done = wait_batch(client, batch.id, timeout=120)  # the pool is free again: it ends
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == LINES
