"""The gateway feeds the scoreboard what slo-cost predicts from: a streamed request's TTFT
lands in the window of its prompt's size, so long prompts do not make a deployment look
slow for short ones."""

from __future__ import annotations

from typing import Any

from policies.pricing import prompt_tokens
from policies.scoreboard import size_bucket
from tests.support.inproc import serving, sim_fixture

sim = sim_fixture()


async def test_stream_ttft_is_recorded_by_prompt_size(sim: Any) -> None:
    config = {"providers": [{"name": "prov", "base_url": sim.url + "/v1"}],
              "models": {"m": {"deployments": [{"target": "prov", "model": "tiny"}]}}}
    short = {"model": "m", "stream": True, "max_tokens": 4,
             "messages": [{"role": "user", "content": "hi"}]}
    long = {**short, "messages": [{"role": "user", "content": "word " * 1500}]}
    buckets = [size_bucket(prompt_tokens("chat", body)) for body in (short, long)]
    assert buckets[0] != buckets[1]
    async with serving(config) as gw:
        for body, times in ((short, 3), (long, 2)):
            for _ in range(times):
                resp = await gw.client.post("/v1/chat/completions", json=body)
                assert resp.status_code == 200, resp.text
        board = gw.services.pipeline.dispatcher.runner.board
        (stats,) = [board.stats(d) for d in gw.services.pipeline.registry.models["m"]]
        now = board.clock()
        counts = [w.count(now) for w in stats.ttft_by_size]
        assert counts[buckets[0]] == 3 and counts[buckets[1]] == 2
        assert sum(counts) == 5
