"""What the console costs, measured in-process: `python -m bench.console_cost`.

On the request path, per settled request: the recorder's hook while nobody watches
(an attribute test) and while a console is open (an append to its ring). Off it: the
drain per request (sums and sampling, four times a second), one process's snapshot a
second, the merge of several processes' snapshots a second in the process serving
consoles, and the JSON sizes that travel through the store and to the browser.
Best of `--repeat` runs each (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import orjson

from gateway.accounting.metering import Outcome, RequestContext, settlement
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.console.merge import merge
from gateway.console.recorder import Recorder
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from policies.keys import Principal
from policies.routing.base import Plan
from policies.scoreboard import Scoreboard


def best_ns(work: Callable[[], object], n: int, repeat: int) -> float:
    """Nanoseconds per call of the fastest of `repeat` runs of `n` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            work()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def entry(dep: Deployment, i: int) -> tuple[RequestContext, Outcome, object, Plan]:
    req = CanonicalRequest("chat", "chat", {"messages": [{"role": "user", "content": "hi"}]},
                           request_id=f"r{i}")
    ctx = RequestContext(Principal(team=f"team{i % 5}", key_id=f"k{i % 20}"), req,
                         f"a{i}", 5, 16, 0, ())
    out = Outcome(time.monotonic())
    out.status, out.deployment, out.usage = 200, dep, Usage(5, 16)
    out.first_byte = time.monotonic()
    plan = Plan([dep], "slo-cost", "cheapest meeting ttft<=500ms, p99~38ms", {dep.id: 0.038})
    return ctx, out, settlement(ctx, out), plan


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--deployments", type=int, default=10, help="per process snapshot")
    p.add_argument("--processes", type=int, default=8, help="snapshots merged per frame")
    a = p.parse_args(argv)

    deps = [Deployment(f"gpu/10.0.0.{i}:8000", "chat", "openai",
                       Target("http://x/v1", "m"), 0.1, 0.2, pool="gpu")
            for i in range(a.deployments)]
    entries = [entry(deps[i % len(deps)], i) for i in range(1000)]
    recorder = Recorder("bench", sample_per_s=10)

    batch = 250  # a quarter second at 1,000 req/s: what one drain takes

    def calls(hook: Callable[..., None], drain: bool) -> Callable[[], None]:
        def run() -> None:
            for e in entries[:batch]:
                hook(*e)
            if drain:
                recorder.drain(0.25)
            else:
                recorder._ring.clear()
        return run

    def noop(ctx: object, out: object, args: object, plan: object) -> None:
        return None

    # The same loop and call with a hook that does nothing: what the measurement itself
    # costs, taken off the figures below.
    base = best_ns(calls(noop, False), 2000, a.repeat) / batch
    idle = best_ns(calls(recorder.settled, False), 2000, a.repeat) / batch - base
    recorder.watching = True
    t_append = best_ns(calls(recorder.settled, False), 2000, a.repeat) / batch - base
    t_drain = best_ns(calls(recorder.settled, True), 400, a.repeat) / batch - base - t_append

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

    print(f"request path, console off or nobody watching: {idle:8.0f} ns per request")
    print(f"request path, a console open (append):        {t_append:8.0f} ns"
          " per request")
    print(f"background drain (sums, sampling):            {t_drain:8.0f} ns per request")
    print(f"(the measuring loop's own cost, {base:.0f} ns a call, is taken off)")
    print(f"background snapshot, {a.deployments} deployments:          "
          f"{t_snap / 1000:8.0f} µs a second ({len(raw):,} bytes to the store)")
    print(f"background merge of {a.processes} processes:               "
          f"{t_merge / 1000:8.0f} µs a second ({len(frame):,} bytes a frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
