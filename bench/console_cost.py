"""What the console costs, measured in-process: `python -m bench.console_cost`.

On the request path, per settled request: the recorder's hook while nobody watches
(an attribute test) and while a console is open (sums added to, a few requests a second
kept for the sample), the recorder drained every quarter second of `--rate`; then, with
every request built afresh as the server builds it, the garbage collections meanwhile
and the time they take: what a hook keeps alive until a drain is walked by the
collector, and the server pays for that wherever it next allocates. Off the path: the
drain per request (the sampled decisions made, four times a second), one process's
snapshot a second, the merge of several processes' snapshots a second in the process
serving consoles, and the JSON sizes that travel through the store and to the browser.
Best of `--repeat` runs each (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence

import orjson

from gateway.accounting.metering import Outcome, RequestContext, settlement
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.console.merge import merge
from gateway.console.recorder import Recorder
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from gateway.store import SettleArgs
from policies.keys import Principal
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard

Hook = Callable[[RequestContext, Outcome, SettleArgs, Plan | None], None]


def best_ns(work: Callable[[], object], n: int, repeat: int) -> float:
    """Nanoseconds per call of the fastest of `repeat` runs of `n` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            work()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


class Collections:
    """Garbage collections per generation, and the time spent in them, while `on`
    (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.on = False
        self.counts = [0, 0, 0]
        self.ns = 0
        self._started = 0
        gc.callbacks.append(self._callback)

    def start(self) -> None:
        self.counts, self.ns, self.on = [0, 0, 0], 0, True

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.counts[info["generation"]] += 1
            self.ns += time.perf_counter_ns() - self._started


# Resolved once per key and kept, as the gateway's accounts keep them.
PRINCIPALS = [Principal(team=f"team{i % 5}", key_id=f"k{i}") for i in range(20)]


def entry(dep: Deployment, i: int) -> tuple[RequestContext, Outcome, SettleArgs, Plan]:
    """One settled request, built afresh as the server builds it."""
    req = CanonicalRequest("chat", "chat", {"messages": [{"role": "user", "content": "hi"}]},
                           request_id=f"r{i}")
    ctx = RequestContext(PRINCIPALS[i % len(PRINCIPALS)], req, f"a{i}", 5, 16, 0, ())
    out = Outcome(time.monotonic())
    out.status, out.deployment, out.usage = 200, dep, Usage(5, 16)
    out.first_byte = time.monotonic()
    plan = Plan([dep], "slo-cost", "cheapest meeting ttft<=500ms, p99~38ms", {dep.id: 0.038})
    return ctx, out, settlement(ctx, out), plan


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--rate", type=int, default=1000,
                   help="requests a second one watched process settles")
    p.add_argument("--deployments", type=int, default=10, help="per process snapshot")
    p.add_argument("--processes", type=int, default=8, help="snapshots merged per frame")
    a = p.parse_args(argv)

    deps = [Deployment(f"gpu/10.0.0.{i}:8000", "chat", "openai",
                       Target("http://x/v1", "m"), 0.1, 0.2, pool="gpu")
            for i in range(a.deployments)]
    recorder = Recorder("bench", sample_per_s=10)
    batch = max(1, a.rate // 4)  # settled between two drains (a quarter second)
    batches = max(1, 20_000 // batch)  # a run: about 20,000 requests
    n = batch * batches
    same = [entry(deps[i % len(deps)], i) for i in range(batch)]
    collections = Collections()
    # What was built so far lives on, as the gateway's start-up does: frozen likewise
    # (gateway/services.py), so that full collections walk only what came after.
    gc.freeze()

    def hook_ns(hook: Hook) -> tuple[float, float]:
        """The fastest run's ns per request in the hook and in the drains, the same
        requests over and over (nothing allocated: the hook's own cost)."""
        best, drained = float("inf"), 0.0
        for _ in range(a.repeat):
            in_drains = 0
            t0 = time.perf_counter_ns()
            for _ in range(batches):
                for e in same:
                    hook(*e)
                t1 = time.perf_counter_ns()
                recorder.drain(0.25)
                in_drains += time.perf_counter_ns() - t1
            elapsed = time.perf_counter_ns() - t0 - in_drains
            if elapsed / n < best:
                best, drained = elapsed / n, in_drains / n
        return best, drained

    def collector(hook: Hook) -> tuple[float, list[float]]:
        """With every request built afresh: the least ns per request any run spent in
        garbage collections, and that run's collections per 1,000 requests."""
        best, counts = float("inf"), [0.0, 0.0, 0.0]
        for _ in range(a.repeat):
            gc.collect()
            collections.start()
            for b in range(batches):
                for i in range(b * batch, (b + 1) * batch):
                    hook(*entry(deps[i % len(deps)], i))
                recorder.drain(0.25)
            collections.on = False
            if collections.ns / n < best:
                best, counts = collections.ns / n, [c * 1000 / n for c in collections.counts]
        return best, counts

    def noop(ctx: RequestContext, out: Outcome, args: SettleArgs, plan: Plan | None) -> None:
        return None

    # The same loop with a hook that does nothing: what the measurement itself costs,
    # taken off the figures below.
    base, _ = hook_ns(noop)
    gc_base, counts_base = collector(noop)
    idle, _ = hook_ns(recorder.settled)
    recorder.watching = True
    t_open, t_drain = hook_ns(recorder.settled)
    gc_open, counts_open = collector(recorder.settled)

    board = Scoreboard()
    now = board.clock()
    for dep in deps:  # full latency windows: what a busy process holds
        s = board.stats(dep)
        for j in range(512):
            s.ttft.add(0.02 + j * 1e-4, now)
            s.first_byte.add(0.02 + j * 1e-4, now)
            s.itl.add(0.01, now)
    builder = SnapshotBuilder("bench", lambda: {"chat": deps}, board, None, recorder,
                              CircuitWatch("bench"))
    t_snap = best_ns(builder.build, 50, a.repeat)
    snap = builder.build()
    raw = orjson.dumps(snap)
    snaps = [{**orjson.loads(raw), "proc": f"p{i}"} for i in range(a.processes)]
    t_merge = best_ns(lambda: merge(snaps, time.time()), 20, a.repeat)
    frame = orjson.dumps(merge(snaps, time.time()))

    def gcs(counts: list[float]) -> str:
        return "/".join(f"{c:.1f}" for c in counts)

    print(f"{a.rate:,} requests a second: drained every {batch:,}")
    print(f"request path, console off or nobody watching: {idle - base:8.0f} ns per request")
    print(f"request path, a console open (sums, sample):  {t_open - base:8.0f} ns per request")
    print(f"  garbage collection meanwhile:               {gc_open:8.0f} ns per request"
          f" (gen0/1/2 per 1,000 requests: {gcs(counts_open)}; with no hook:"
          f" {gc_base:.0f} ns, {gcs(counts_base)})")
    print(f"background drain (the sampled decisions):     {t_drain:8.0f} ns per request")
    print(f"(the measuring loop's own cost, {base:.0f} ns a call, is taken off)")
    print(f"background snapshot, {a.deployments} deployments:          "
          f"{t_snap / 1000:8.0f} µs a second ({len(raw):,} bytes to the store)")
    print(f"background merge of {a.processes} processes:               "
          f"{t_merge / 1000:8.0f} µs a second ({len(frame):,} bytes a frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
