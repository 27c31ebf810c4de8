"""A batch worker killed (SIGKILL) mid-batch and started again: the lines it held come back
when their leases lapse, every line has exactly one result, and the ledger holds exactly
one usage event per line, though some lines ran twice (their first run died with the
worker, its settlement never written)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.accounts import auth, new_key
from tests.support.batches import (
    BatchWorker,
    chat_lines,
    jsonl,
    pool_config,
    read_jsonl,
    wait_batch,
)
from tests.support.procs import Gateway, RedisServer

KEY, ADMIN = new_key(), new_key()
LINES = 240
# Lines of ~0.2 s on 2 x 8 slots: the batch takes seconds, time enough to kill it mid-way.
GPU = SimProfile.named("fast-gpu", max_num_seqs=8, base_ttft_ms=5, itl_ms=20)


@pytest.fixture
def setup(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Gateway, ThreadedSim]]:
    with ThreadedSim(Simulator(GPU), Simulator(GPU, seed=1)) as sims:
        team = "crash" + str(time.monotonic_ns())[-6:]
        gw = Gateway({
            "redis": {"url": redis_server.url},
            "auth": {"admin_key": ADMIN},
            "pools": [pool_config("gpu", sims.urls)],
            "models": {"chat": {"deployments": [{"target": "gpu", "model": "m",
                                                 "price": {"input": 1, "output": 1}}]}},
            "routing": {"slo_ttft_ms": 500},
            "teams": [{"name": team, "keys": [{"id": "k1", "key": KEY}]}],
            "batch": {"run_in_serve": False, "lease_s": 2,
                      "storage": {"path": str(tmp_path / "files")}},
        }, tmp_path)
        gw.team = team  # type: ignore[attr-defined]
        yield gw, sims
        gw.stop()


def events(gw: Gateway) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/events", headers=auth(ADMIN),
                  params={"team": gw.team, "format": "json"})  # type: ignore[attr-defined]
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def test_killed_worker_every_line_once(setup: tuple[Gateway, ThreadedSim],
                                       tmp_path: Path) -> None:
    gw, sims = setup
    client = OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    worker = BatchWorker(gw.config_path, tmp_path)
    f = client.files.create(file=jsonl(chat_lines(LINES, max_tokens=10)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 60
    # A quarter done, and lines under way at the replicas: their runs die with the worker.
    while (counts := client.batches.retrieve(batch.id).request_counts) is None or \
            counts.completed < LINES // 4 or not sum(s.stats.active for s in sims.sims):
        assert time.monotonic() < deadline, "the worker never got going"
        time.sleep(0.01)
    worker.kill()
    done_at_kill = client.batches.retrieve(batch.id).request_counts
    assert done_at_kill is not None and done_at_kill.completed < LINES, "killed too late"

    worker = BatchWorker(gw.config_path, tmp_path)  # the same worker, started again
    try:
        done = wait_batch(client, batch.id, timeout=90)
    finally:
        worker.stop()
    assert done.status == "completed" and done.output_file_id
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    output = read_jsonl(client.files.content(done.output_file_id).read())  # one a custom_id
    assert set(output) == {f"req-{i}" for i in range(LINES)}
    ran = sum(s.stats.requests_total for s in sims.sims)
    assert ran > LINES  # some lines did run twice
    line_ids = {row["id"] for row in output.values()}
    ledger = [e for e in events(gw) if e["request_id"] in line_ids]
    assert len(ledger) == LINES
    assert {e["request_id"] for e in ledger} == line_ids
    assert all(e["status"] == 200 for e in ledger)
    print(f"{LINES} lines, {done_at_kill.completed} done at the kill, {ran} upstream runs,"
          f" {len(output)} results, {len(ledger)} usage events")
    assert "Traceback" not in worker.log_text()
