"""Helpers for the batch lane's tests: input files, a pool of simulated replicas for a
gateway's config, and polling a batch to an end."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI
from openai.types import Batch

from selfhost.sim import SimProfile
from tests.support.procs import REPO, stop, wait_until

ENDED = ("completed", "failed", "expired", "cancelled")
# Quick replicas with few slots: a handful of lines fills one, as a GPU's would.
SMALL_GPU = SimProfile.named("fast-gpu", max_num_seqs=8, base_ttft_ms=5, itl_ms=2)


def chat_lines(count: int, *, model: str = "chat", max_tokens: int = 4,
               start: int = 0) -> list[dict[str, Any]]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": f"question {i}"}]}}
            for i in range(start, start + count)]


def jsonl(rows: list[dict[str, Any]]) -> io.BytesIO:
    data = io.BytesIO(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    data.name = "input.jsonl"
    return data


def pool_config(name: str, urls: list[str], *, scrape_s: float = 0.2) -> dict[str, Any]:
    return {"name": name, "endpoints": urls, "probe_interval_s": 0.5,
            "scrape_interval_s": scrape_s}


def wait_batch(client: OpenAI, batch_id: str, *, until: tuple[str, ...] = ENDED,
               timeout: float = 60.0) -> Batch:
    """Poll `retrieve` until the batch's status is one of `until` (fails at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.1)


def read_jsonl(data: bytes) -> dict[str, dict[str, Any]]:
    """A results file's lines by custom_id (each custom_id once: asserted)."""
    rows = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a custom_id has more than one line"
    return by_id


class BatchWorker:
    """`turnout batch-worker` in a subprocess, with a gateway's config file."""

    def __init__(self, config_path: Path, workdir: Path, name: str = "worker") -> None:
        self.log = workdir / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "batch-worker", "--config",
                 str(config_path)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True)
        runs = self.log_text().count("batch worker running") + 1
        wait_until(lambda: self.log_text().count("batch worker running") >= runs,
                   "batch worker", self.proc, self.log)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, with no goodbye (no line given back)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop(self.proc)
