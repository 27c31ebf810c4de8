"""Sample running proxies with py-spy under the c=16 load, and summarise where time goes.

py-spy attaches from outside, so the gateway runs unmodified. It pauses the target for
each sample (250 Hz; a few % slower while profiled: `--nonblocking` failed on ~20% of
its samples here, reading stacks while they changed), which is why profiling is a
separate step after the measurements. Profiling the floor proxy the same way shows which costs are
Turnout's own. The raw collapsed stacks stay in the run directory (for flamegraph.pl or
speedscope); the summary has self time by package and by frame, and our own modules'
frames by inclusive time.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench import install, loadgen
from bench.plan import Plan
from bench.procs import pinned
from bench.progress import Progress
from bench.runner import Calm
from bench.systems import Running, Stack

OURS = ("gateway/", "adapters/", "policies/", "selfhost/")
ENTRY = ("gateway/cli.py",)  # on every stack: says nothing about cost
_LOCATION = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def start(py_spy: str, pid: int, seconds: float, out: Path, core: int | None,
          rate: int = 250) -> subprocess.Popen[bytes]:
    argv = [py_spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate),
            "-F", "-f", "raw", "-o", str(out)]
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen(pinned(argv, core), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    """Top frames by self and by inclusive time, as % of the (non-idle) samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_time[frames[-1]] += n
        packages[package(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0, "self_by_package": [], "top_self": [], "top_inclusive": [],
                "top_ours": []}

    def pct(items: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"frame": f, "pct": round(100 * n / total, 2), "samples": n} for f, n in items]

    ours = [(f, n) for f, n in inclusive.most_common()
            if any(m in f for m in OURS) and not any(e in f for e in ENTRY)]
    return {
        "samples": total,
        "self_by_package": pct(packages.most_common(top)),
        "top_self": pct(self_time.most_common(top)),
        "top_inclusive": pct(inclusive.most_common(top)),
        "top_ours": pct(ours[:top]),
    }


def package(frame: str) -> str:
    """`f (aiohttp/client.py:558)` → aiohttp; asyncio's frames are mostly the C event loop."""
    m = _LOCATION.search(frame)
    if not m:
        return "(native / unknown)"
    # py-spy prints paths relative to their sys.path entry: the first part is the package.
    name = m.group(1).split("/site-packages/")[-1].lstrip("/").split("/")[0].removesuffix(".py")
    return "event loop (uvloop, in C)" if name == "asyncio" else name


def run(plan: Plan, stack: Stack, systems: list[Running], wrk_exe: str,
        progress: Progress) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    calm = Calm(stack, systems, budget=0)
    for name in plan.profile_systems:
        target = next((s for s in systems if s.name == name), None)
        if target is None or target.proc is None:
            continue
        entry: dict[str, Any] = {"system": name, "concurrency": plan.profile_concurrency}
        out.append(entry)
        with progress.step(f"profile · {name} (py-spy)"):
            try:
                spy = install.py_spy(stack.run_dir / "install.log")
            except install.InstallError as err:
                entry["error"] = str(err)
                progress.finish(f"error: {err}")
                continue
            calm.wait()
            raw = stack.run_dir / f"profile-{name}.txt"
            sampler = start(spy, target.proc.pid, plan.profile_seconds, raw, stack.aux_core)
            load = loadgen.wrk(wrk_exe, target.url, target.body(False), target.headers,
                               concurrency=plan.profile_concurrency,
                               duration=plan.profile_seconds, core=stack.aux_core)
            try:
                sampler.wait(timeout=plan.profile_seconds + 30)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
            if not raw.exists():
                entry["error"] = f"py-spy wrote nothing; see {raw.with_suffix('.log')}"
                progress.finish("error: " + entry["error"])
                continue
            entry.update(summarise(raw))
            entry["rps_while_profiled"] = load["rps"]
            entry["raw"] = str(raw)
            progress.finish(f"{entry['samples']} samples at {load['rps']:,.0f} req/s")
    return out
