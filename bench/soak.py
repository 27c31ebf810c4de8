"""Long mode's soak: one system under a mixed load (wrk's non-streamed closed loop at c=16
and streams at `stream_concurrency`, side by side) for `soak_seconds`, its RSS sampled
every slice. Flat means: at the end no more than `FLAT` above what it was once warm (after
the first slice), which a leak per request or per stream would not stay under.
"""

from __future__ import annotations

import threading
from typing import Any

from bench import loadgen
from bench.plan import Plan
from bench.procs import group_rss_bytes
from bench.progress import Progress
from bench.systems import Running, Stack

SLICE_S = 30.0
FLAT = 0.05  # the most RSS may grow past its warm value over the soak


def run(plan: Plan, stack: Stack, systems: list[Running], wrk_exe: str,
        progress: Progress) -> dict[str, Any]:
    target = next((s for s in systems if s.name == plan.soak_system), None)
    if target is None or target.proc is None:
        return {"system": plan.soak_system, "error": "not running"}
    pgid = target.proc.pid
    samples: list[dict[str, Any]] = []
    out: dict[str, Any] = {"system": target.name, "seconds": plan.soak_seconds,
                           "samples": samples}
    slices = max(2, round(plan.soak_seconds / SLICE_S))
    with progress.step(f"soak · {target.name} ({slices} x {SLICE_S:g} s, mixed)"):
        # Streams back to back for a slice: as many as last about as long.
        per = max(1, round(SLICE_S / (plan.chunks * plan.gap_ms / 1000)))

        def streams(into: dict[str, Any]) -> None:
            into.update(loadgen.streams(
                target.url, target.body(True), target.headers,
                concurrency=plan.stream_concurrency, count=plan.stream_concurrency * per,
                gap_ms=plan.gap_ms, core=stack.aux_core, expected_chunks=plan.chunks))

        for i in range(slices):
            streamed: dict[str, Any] = {}
            side = threading.Thread(target=streams, args=(streamed,))
            side.start()
            closed = loadgen.wrk(wrk_exe, target.url, target.body(False), target.headers,
                                 concurrency=16, duration=SLICE_S, core=stack.aux_core)
            side.join()
            samples.append({"t_s": round((i + 1) * SLICE_S), "rss": group_rss_bytes(pgid),
                            "rps": closed["rps"],
                            "errors": closed["errors"] + streamed.get("errors", 0)})
        warm, end = samples[0]["rss"], samples[-1]["rss"]
        out["growth"] = round((end - warm) / warm, 4) if warm else None
        out["flat"] = out["growth"] is not None and out["growth"] <= FLAT
        progress.finish(f"RSS {warm / 2**20:,.1f} → {end / 2**20:,.1f} MiB "
                        f"({100 * (out['growth'] or 0):+.1f}%)")
    return out
