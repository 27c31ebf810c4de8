"""Slow and half-open clients against a running gateway (issue #16 finding 3, issue #23
defect 8), a small version of scripts/half_open_drill.py: /healthz and chat keep
answering under 1,000 half-open connections, which the gateway times out, and its memory
comes back; over server.limits.max_connections, connections are refused cleanly and
served again once the others are gone."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.procs import Gateway
from tests.support.rss import rss

HALF = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
CHAT = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator(SimProfile.named("instant"))) as s:
        yield s


def gateway(sim: ThreadedSim, workdir: Path, **limits: float) -> Gateway:
    return Gateway({"server": {"limits": {"header_timeout_s": 1.0, **limits}},
                    "metering": {"stream_maxlen": 1000},  # a ledger that stops growing
                    "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
                    "models": {"m": {"deployments": [{"target": "sim", "model": "m"}]}}},
                   workdir)


def half_open(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(HALF)
        socks.append(s)
    return socks


def ended(s: socket.socket) -> bytes:
    """What the gateway sent before it closed the connection."""
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    return got


def answered(client: httpx.Client, gw: Gateway) -> float:
    """One /healthz and one chat completion, both 200: the slower one's seconds."""
    started = time.monotonic()
    assert client.get(gw.url + "/healthz").status_code == 200
    assert client.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
    return time.monotonic() - started


def test_half_open_connections_are_timed_out_and_memory_comes_back(
        sim: ThreadedSim, tmp_path: Path) -> None:
    gw = gateway(sim, tmp_path)
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(100):  # warm
                answered(client, gw)
            before = rss(gw.proc.pid)
            socks = half_open(gw.port, 1000)
            during = [answered(client, gw) for _ in range(20)]
            assert max(during) < 3.0
            answers = {ended(s)[:12] for s in socks}  # each closed by the gateway
            assert answers == {b"HTTP/1.1 408"}
            # The memory goes back 2 s after the connections have gone (wire/trimmer.py).
            deadline = time.monotonic() + 10
            while (after := rss(gw.proc.pid)) >= before * 1.10:
                assert time.monotonic() < deadline, (before, after)
                answered(client, gw)
    finally:
        gw.stop()


def test_over_the_connection_cap_refused_cleanly_then_served(sim: ThreadedSim,
                                                            tmp_path: Path) -> None:
    gw = gateway(sim, tmp_path, max_connections=100)
    try:
        socks = half_open(gw.port, 100)
        refused = httpx.get(gw.url + "/healthz")
        assert refused.status_code == 503 and refused.text == "Too many connections."
        assert refused.headers["retry-after"] == "1"
        assert {ended(s)[:12] for s in socks} == {b"HTTP/1.1 408"}  # timed out, gone
        deadline = time.monotonic() + 10
        while httpx.get(gw.url + "/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "server.limits.max_connections" in gw.logs()
    finally:
        gw.stop()
