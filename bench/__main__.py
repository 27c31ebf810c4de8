"""`python -m bench`: Turnout vs direct vs the floor proxy vs LiteLLM, one run, interleaved.

Every system runs as one worker process pinned to the system-under-test core (default 1);
the mock upstream, the load generators, redis and this harness share the other core
(default 0). Per scenario each system is measured in turn (interleaved, so drift in the
machine hits them all alike): closed loops with wrk at c=1/16/64, an open loop at a
fixed rate, streams timed at the client, and the memory probe (RSS per idle connection
and per stream in flight). Then py-spy profiles Turnout and the floor under the c=16
load; `--long` adds a 10-minute mixed soak with RSS sampled throughout. Output: tables,
issue #22's goals as pass/fail, and results.json, plot.png, logs, configs and raw
profiles under bench/results/<time>/.

`--smoke`: a few seconds of tiny load through direct, floor and both Turnouts (no
LiteLLM, no profile, no installs but wrk): proves the harness works end to end.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import goals, install, profile, report, runner, soak
from bench.install import REPO
from bench.plan import Plan, make_plan, parse_args, select
from bench.procs import core_busy
from bench.progress import Progress
from bench.systems import Running, Stack, load_specs


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _meta(plan: Plan, started: dt.datetime, run_dir: Path, pin: bool,
          cores: tuple[int | None, int | None]) -> dict[str, Any]:
    sut, aux = cores
    return {
        "started": started.isoformat(timespec="seconds"),
        "mode": "smoke" if plan.smoke else "full",
        "machine": f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}",
        "pinning": (f"SUT core {sut}; mock, load generators, redis, harness core {aux}"
                    if pin else "none (scheduler's choice)"),
        "cores": {"sut": sut, "aux": aux},
        "mock": {"chunks": plan.chunks, "gap_ms": plan.gap_ms, "delay_ms": plan.delay_ms},
        "plan": plan.__dict__,
        "loadavg_at_start": os.getloadavg(),
        "run_dir": str(run_dir),
    }


def source_of(src: Path | None) -> str:
    """Which Turnout was measured: a commit, and whether the tree had local changes."""
    where = src or REPO
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "gateway",
                                "adapters", "policies", "selfhost"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(where)
    return f"{where} @ {head}" + (" + uncommitted changes" if dirty else "")


def start_systems(stack: Stack, specs: list[Any], results: dict[str, Any],
                  progress: Progress) -> list[Running]:
    running: list[Running] = []
    for spec in specs:
        with progress.step(f"start · {spec.name}"):
            r = stack.start_system(spec)
            status = {"name": spec.name, "kind": spec.kind, "config": spec.config}
            if isinstance(r, Running):
                running.append(r)
                results["systems"].append({**status, "status": "ok", "error": None})
                progress.finish(f"ready at {r.url}")
            else:
                results["systems"].append({**status, "status": "unavailable", "error": r.error})
                progress.finish(f"UNAVAILABLE: {r.error.splitlines()[0][:100]}")
    return running


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv, __doc__)
    plan = make_plan(a)
    started = dt.datetime.now()
    run_dir = a.out / (started.strftime("%Y%m%d-%H%M%S") + ("-smoke" if plan.smoke else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    pin = not a.no_pin and (os.cpu_count() or 1) > max(a.sut_core, a.aux_core)
    sut_core, aux_core = (a.sut_core, a.aux_core) if pin else (None, None)
    if aux_core is not None:
        # The harness (and anything it forks without taskset) stays off the SUT core.
        os.sched_setaffinity(0, {aux_core})
    specs = select(load_specs(a.systems), a)
    per_round = len(specs) * (len(plan.concurrency) + 2 + (plan.single_streams > 0)
                              + (plan.mem_conns > 0))
    n_profiles = len(plan.profile_systems) if plan.profile_seconds > 0 else 0
    progress = Progress(1 + len(specs) + plan.rounds * per_round + n_profiles
                        + (plan.soak_seconds > 0), quiet=a.quiet)
    results: dict[str, Any] = {"meta": _meta(plan, started, run_dir, pin, (sut_core, aux_core)),
                               "systems": [], "scenarios": []}
    mock_args = ["--chunks", str(plan.chunks), "--gap-ms", str(plan.gap_ms),
                 "--delay-ms", str(plan.delay_ms)]
    stack = Stack(run_dir, sut_core=sut_core, aux_core=aux_core, mock_args=mock_args,
                  turnout_src=a.turnout_src.resolve() if a.turnout_src else None)
    results["meta"]["turnout_source"] = source_of(a.turnout_src)
    wall0, busy0 = time.monotonic(), core_busy()
    try:
        with progress.step("setup: wrk, mock upstream, services"):
            wrk_exe = install.ensure_wrk(run_dir / "install.log")
            stack.start_mock()
            stack.start_services(specs)
            progress.finish(f"mock at {stack.values['UPSTREAM']}")
        running = start_systems(stack, specs, results, progress)
        results["scenarios"] = runner.run_all(plan, stack, running, wrk_exe, progress)
        if n_profiles:
            results["profiles"] = profile.run(plan, stack, running, wrk_exe, progress)
        if plan.soak_seconds > 0:
            results["soak"] = soak.run(plan, stack, running, wrk_exe, progress)
    finally:
        stack.stop()
    busy1 = core_busy()
    results["meta"]["core_busy_pct"] = {
        str(c): round(100 * (busy1[c]["busy"] - busy0[c]["busy"])
                      / max(1e-6, busy1[c]["total"] - busy0[c]["total"]), 1)
        for c in busy1 if c in busy0}
    results["meta"]["wall_s"] = round(time.monotonic() - wall0, 1)
    report.derive(results)
    results["targets"] = report.targets(results)
    results["goals"] = goals.goals(results)
    out_json = run_dir / "results.json"
    out_json.write_text(json.dumps(results, indent=2))
    print(report.render(results))
    print(f"\nresults: {out_json}")
    if not a.no_plot:
        _plot(results, run_dir / "plot.png", allow_install=not plan.smoke)
    return 1 if plan.smoke and not smoke_ok(results) else 0


def _plot(results: dict[str, Any], out: Path, *, allow_install: bool) -> None:
    try:
        if importlib.util.find_spec("matplotlib") is None:
            if not allow_install:
                print("plot: skipped (matplotlib is not installed; a full run installs it)")
                return
            install.ensure_module("matplotlib", "matplotlib>=3.8",
                                  Path(results["meta"]["run_dir"]) / "install.log")
        from bench.plot import plot

        plot(results, out)
        print(f"plot:    {out}")
    except Exception as err:  # the numbers are already saved; a plot failure is not fatal
        print(f"plot: failed ({type(err).__name__}: {err})")


def smoke_ok(results: dict[str, Any]) -> bool:
    if any(s["status"] != "ok" for s in results["systems"]):
        return False
    return all("error" not in r and r["errors"] == 0
               for sc in results["scenarios"] for r in sc["results"].values())


if __name__ == "__main__":
    sys.exit(main())
