"""The batch lane under interactive load: does a big batch on the self-hosted pool hurt
interactive SLOs, and does it fill the troughs?

A pool of simulated vLLM replicas (a `turnout sim` process each: FIFO slots, vLLM's
/metrics) behind `turnout serve`, the lane in a `turnout batch-worker` beside it (Redis
between them: the production shape, and the lane's CPU off the serving loop), an
open-loop interactive load that follows a diurnal curve (Poisson arrivals, rate
low → high → low over one `--day-s`, streamed chat, TTFT timed from the intended send),
run twice on the same schedule: without a batch, then with a `--lines` batch created at
the start of the day. Reported: interactive P50/P99 TTFT
and SLO attainment (TTFT <= `--slo-ms`) for each run, the batch's completion time, and the
pool's utilisation (running sequences / slots, sampled from the replicas) overall and in
the troughs (the hours whose rate is in the lowest quarter of the range), and how often
a replica had requests queued for a slot (sampled too): the simulated TTFT does not grow
with load, so a queue is the one way the lane can slow interactive requests there, and
a TTFT tail without queues is the host's CPU.

    python -m bench.batch_lane                 # ~6 minutes: 2 x a 150 s day, 5,000 lines
    python -m bench.batch_lane --short         # ~1 minute: the same, scaled down

Prints a table and writes bench/results/batch_lane-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.procs import Proc, free_port

RESULTS = Path(__file__).with_name("results")
SLOTS = 32  # max_num_seqs of each simulated replica


@dataclass
class Plan:
    day_s: float = 150.0
    low_rps: float = 6.0
    high_rps: float = 60.0
    lines: int = 5000
    replicas: int = 2
    slo_ms: float = 200.0
    output_tokens: int = 24
    itl_ms: float = 25.0
    fill: float = 0.75  # batch.fill
    reserve: float = 0.15  # batch.reserve
    seed: int = 1

    def rate(self, t: float) -> float:
        """Requests per second at `t`: a trough at the start and end of the day."""
        phase = (1 - math.cos(2 * math.pi * t / self.day_s)) / 2
        return self.low_rps + (self.high_rps - self.low_rps) * phase

    def trough(self, t: float) -> bool:
        return self.rate(t) <= self.low_rps + 0.25 * (self.high_rps - self.low_rps)

    def arrivals(self) -> list[float]:
        """Poisson arrivals at rate(t), by thinning: the same schedule for both runs."""
        rng, t = random.Random(self.seed), 0.0
        out: list[float] = []
        while True:
            t += rng.expovariate(self.high_rps)
            if t >= self.day_s:
                return out
            if rng.random() * self.high_rps <= self.rate(t):
                out.append(t)


@dataclass
class Run:
    batch: bool
    ttft_s: list[tuple[float, float]] = field(default_factory=list)  # (sent at, ttft)
    errors: int = 0
    # (t, running, waiting, lane's lines): waiting is interactive requests (or lines)
    # queued for a slot, the one way the simulated pool slows a request down; a TTFT tail
    # without queues is the host's CPU (the simulated TTFT does not grow with load).
    samples: list[tuple[float, float, float, float]] = field(default_factory=list)
    batch_done_s: float | None = None
    batch_status: str = ""
    preempted: float = 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def config(plan: Plan, urls: list[str], files: str, redis: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis},
        "pools": [{"name": "gpu", "endpoints": urls, "scrape_interval_s": 0.5,
                   "probe_interval_s": 1}],
        "models": {"chat": {"deployments": [{"target": "gpu", "model": "m",
                                             "price": {"input": 0.05, "output": 0.1}}]}},
        "routing": {"slo_ttft_ms": plan.slo_ms},
        "telemetry": {"access_log": False},
        "batch": {"storage": {"path": files}, "lease_s": 30, "run_in_serve": False,
                  "fill": plan.fill, "reserve": plan.reserve},
    }


async def interactive(session: aiohttp.ClientSession, url: str, plan: Plan, run: Run,
                      start: float) -> None:
    body = json.dumps({"model": "chat", "stream": True, "max_tokens": plan.output_tokens,
                       "messages": [{"role": "user", "content": "hello there"}]}).encode()

    async def one(at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        intended = start + at
        try:
            async with session.post(url + "/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:
                if resp.status != 200:
                    run.errors += 1
                    await resp.read()
                    return
                async for line in resp.content:
                    if b'"content"' in line:
                        run.ttft_s.append((at, time.monotonic() - intended))
                        break
                await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            run.errors += 1

    await asyncio.gather(*(one(at) for at in plan.arrivals()))


async def sample(session: aiohttp.ClientSession, sims: list[str], lane: str,
                 run: Run, start: float, stop: asyncio.Event) -> None:
    """The replicas' running and waiting sequences and the lane's lines, every half
    second."""
    while not stop.is_set():
        used = waiting = 0.0
        for sim in sims:
            async with session.get(sim + "/sim/stats") as resp:
                stats = await resp.json()
            used += stats["running"]
            waiting += stats["waiting"]
        lines = await metric(session, lane, "turnout_batch_lines_running")
        run.samples.append((time.monotonic() - start, used, waiting, lines))
        await asyncio.sleep(0.5)


async def metric(session: aiohttp.ClientSession, gateway: str, name: str) -> float:
    async with session.get(gateway + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def create_batch(session: aiohttp.ClientSession, url: str, plan: Plan) -> str:
    rows = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "chat", "max_tokens": plan.output_tokens,
                      "messages": [{"role": "user", "content": f"summarise document {i}"}]}}
            for i in range(plan.lines)]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", "".join(json.dumps(r) + "\n" for r in rows).encode(),
                   filename="batch.jsonl")
    async with session.post(url + "/v1/files", data=form) as resp:
        file_id = (await resp.json())["id"]
    async with session.post(url + "/v1/batches", json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}) as resp:
        return str((await resp.json())["id"])


async def drive(plan: Plan, sims: list[str], gateway: str, lane: str, run: Run) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        warm = Plan(day_s=3, low_rps=plan.low_rps, high_rps=plan.low_rps, seed=plan.seed + 1)
        await interactive(session, gateway, warm, Run(False), time.monotonic())  # not counted
        batch_id = await create_batch(session, gateway, plan) if run.batch else None
        start = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(session, sims, lane, run, start, stop))
        await interactive(session, gateway, plan, run, start)
        while batch_id is not None and time.monotonic() - start < 3 * plan.day_s:
            async with session.get(f"{gateway}/v1/batches/{batch_id}") as resp:
                batch = await resp.json()
            run.batch_status = batch["status"]
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                run.batch_done_s = (batch["completed_at"] or time.time()) - \
                    batch["created_at"]
                break
            await asyncio.sleep(0.5)
        stop.set()
        await sampler
        run.preempted = await metric(session, lane, "turnout_batch_lines_preempted_total")


def one_run(plan: Plan, sims: list[str], work: Path, with_batch: bool) -> Run:
    port, lane_port, redis_port = free_port(), free_port(), free_port()
    redis = Proc("redis", ["redis-server", "--port", str(redis_port), "--save", "",
                           "--appendonly", "no"], work / "redis.log", core=None)
    path = work / f"gateway-{int(with_batch)}.yaml"
    path.write_text(yaml.safe_dump(config(plan, sims, str(work / "files"),
                                          f"redis://127.0.0.1:{redis_port}/0")))
    cli = [sys.executable, "-m", "gateway.cli"]
    gw = Proc("gateway", [*cli, "serve", "--config", str(path), "--port", str(port)],
              work / f"gateway-{int(with_batch)}.log", core=None)
    # Background work: at the lowest CPU priority, so on a small machine the lane's
    # process does not delay the serving gateway's (the pool itself is simulated here).
    worker = Proc("worker", ["nice", "-n", "19", *cli, "batch-worker", "--config", str(path),
                             "--metrics-port", str(lane_port)],
                  work / f"worker-{int(with_batch)}.log", core=None)
    url, lane = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{lane_port}"
    try:
        gw.wait_http(url + "/readyz", 30)
        worker.wait_http(lane + "/healthz", 30)
        time.sleep(2)  # a few scrapes: the replicas' capacity and queue known
        run = Run(with_batch)
        asyncio.run(drive(plan, sims, url, lane, run))
        return run
    finally:
        for proc in (worker, gw, redis):
            proc.stop()


def summary(plan: Plan, run: Run) -> dict[str, Any]:
    ttfts = [t for _, t in run.ttft_s]
    slots = plan.replicas * SLOTS
    util = [used / slots for _, used, _, _ in run.samples]
    trough = [used / slots for t, used, _, _ in run.samples
              if t <= plan.day_s and plan.trough(t)]
    queued = [waiting for t, _, waiting, _ in run.samples if t <= plan.day_s]
    return {
        "batch": run.batch, "requests": len(ttfts) + run.errors, "errors": run.errors,
        "ttft_p50_ms": round(quantile(ttfts, 0.5) * 1000, 1),
        "ttft_p99_ms": round(quantile(ttfts, 0.99) * 1000, 1),
        "ttft_p99_trough_ms": round(quantile([t for at, t in run.ttft_s if plan.trough(at)],
                                             0.99) * 1000, 1),
        "over_100ms": sum(t > 0.1 for t in ttfts),
        "slo_attainment_pct": round(100 * sum(t * 1000 <= plan.slo_ms for t in ttfts)
                                    / max(1, len(ttfts) + run.errors), 2),
        "utilisation_pct": round(100 * sum(util) / max(1, len(util)), 1),
        "trough_utilisation_pct": round(100 * sum(trough) / max(1, len(trough)), 1),
        # Of the samples during the day: how often a replica had a queue, how long the
        # longest was.
        "queued_samples_pct": round(100 * sum(w > 0 for w in queued) / max(1, len(queued)),
                                    1),
        "waiting_max": max(queued, default=0.0),
        "batch_status": run.batch_status or None, "batch_completion_s": run.batch_done_s,
        "lines_preempted": run.preempted,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch_lane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="a 30 s day, 400 lines")
    for name, value in asdict(Plan()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=None)
    args = p.parse_args(argv)
    plan = Plan(day_s=30, lines=400) if args.short else Plan()
    for name in asdict(plan):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    work = Path(tempfile.mkdtemp(prefix="batch-lane-"))
    ports = [free_port() for _ in range(plan.replicas)]
    procs = [Proc(f"sim{i}", [sys.executable, "-m", "gateway.cli", "sim", "--port", str(port),
                              "--max-num-seqs", str(SLOTS), "--itl-ms", str(plan.itl_ms),
                              "--base-ttft-ms", "30", "--seed", str(i),
                              "--max-tokens-default", str(plan.output_tokens)],
                  work / f"sim{i}.log", core=None) for i, port in enumerate(ports)]
    sims = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for proc, url in zip(procs, sims, strict=True):
            proc.wait_http(url + "/health", 30)
        runs = [summary(plan, one_run(plan, sims, work, b)) for b in (False, True)]
    finally:
        for proc in procs:
            proc.stop()
    report = {"plan": asdict(plan), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"batch_lane-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    cols = list(runs[0])
    print(" | ".join(cols))
    for r in runs:
        print(" | ".join(str(r[c]) for c in cols))
    base, lane = runs
    print(f"attainment {lane['slo_attainment_pct'] - base['slo_attainment_pct']:+.2f} points,"
          f" P99 TTFT {100 * (lane['ttft_p99_ms'] / base['ttft_p99_ms'] - 1):+.1f}%,"
          f" trough utilisation {base['trough_utilisation_pct']}% ->"
          f" {lane['trough_utilisation_pct']}%  ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
