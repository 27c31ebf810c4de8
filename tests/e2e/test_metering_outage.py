"""Redis killed mid-run: each outage policy does what it says, and every usage event of
every request served reaches the ledger once Redis is back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from gateway.store import layout
from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, auth, eventually, new_key
from tests.support.procs import Gateway, RedisServer

KEY = new_key()


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("instant"), Simulator(SimProfile.named("instant", itl_ms=40.0))
                     ) as s:
        yield s


def chat(gw: Gateway, model: str = "fast") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(KEY), timeout=30,
                      json={"model": model, "messages": EXACT_MESSAGES, "max_tokens": 5})


class SlowStream(threading.Thread):
    """A stream that is admitted (and has started) before the outage and ends during it."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__()
        self.gw, self.started, self.request_id, self.text = gw, threading.Event(), "", ""

    def run(self) -> None:
        body = {"model": "slow", "messages": EXACT_MESSAGES, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", f"{self.gw.url}/v1/chat/completions", json=body,
                          headers=auth(KEY), timeout=30) as r:
            self.request_id = r.headers["x-request-id"]
            for line in r.iter_lines():
                self.started.set()
                self.text += line


@pytest.mark.parametrize("policy", ["fail-closed", "fail-open"])
def test_redis_killed_mid_run(policy: str, sims: ThreadedSim, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persist=True)
    fast, slow = sims.urls
    config = {
        "redis": {"url": server.url},
        "providers": [{"name": "fast", "base_url": fast + "/v1"},
                      {"name": "slow", "base_url": slow + "/v1"}],
        "models": {name: {"deployments": [{"target": name, "model": "m",
                                           "price": {"input": 1.0, "output": 2.0}}]}
                   for name in ("fast", "slow")},
        "teams": [{"name": "ops", "key_limits": {"rpm": 1000},
                   "keys": [{"id": "ops", "key": KEY}]}],
        "admission": {"on_store_outage": policy, "fallback": {"rpm": 3}},
    }
    gw = Gateway(config, tmp_path)
    try:
        served = [chat(gw) for _ in range(3)]
        assert [r.status_code for r in served] == [200] * 3
        stream = SlowStream(gw)
        stream.start()
        assert stream.started.wait(10)

        server.kill()
        during = [chat(gw) for _ in range(5)]
        stream.join(30)
        assert "[DONE]" in stream.text  # the admitted stream was served to the end
        if policy == "fail-closed":
            assert [r.status_code for r in during] == [503] * 5
            assert {r.json()["error"]["code"] for r in during} == {"store_unavailable"}
        else:  # per-process fallback limits: 3 per minute
            assert [r.status_code for r in during] == [200] * 3 + [429] * 2
            served += during[:3]

        server = RedisServer(tmp_path, port=server.port, persist=True)
        ledger = redis.Redis.from_url(server.url)
        expected = {r.headers["x-request-id"] for r in served} | {stream.request_id}
        events = layout.events("ops")
        eventually(lambda: ledger.xlen(events) == len(expected))
        recorded = [orjson.loads(f[b"e"]) for _, f in ledger.xrange(events)]
        assert {e["request_id"] for e in recorded} == expected
        streamed = next(e for e in recorded if e["request_id"] == stream.request_id)
        assert (streamed["completion_tokens"], streamed["estimated"]) == (40, False)
        rollup = ledger.hgetall(layout.rollup("ops"))
        assert sum(int(v) for k, v in rollup.items() if k.endswith(b"|requests")) == \
            len(expected)
        ledger.close()
    finally:
        gw.stop()
        server.stop()
    assert KEY not in gw.logs()
