"""The measurement loop: every scenario, every system in turn (interleaved), `rounds` times.

Before each measurement the systems must be idle (LiteLLM may still be draining an
abandoned open-loop backlog) and, within a time budget, the rest of the machine quiet:
this box is shared, and whatever else runs lands on our two cores. Each measurement
records the CPU of every party, "other" (everything not ours) included, so a disturbed
figure can be recognised as such. With several rounds, each system's least disturbed
round (least other load, the hypervisor's steal time included: a choice independent of
the figures themselves) is reported; all rounds are kept in the JSON.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

from bench import loadgen
from bench.plan import Plan
from bench.procs import machine_seconds
from bench.progress import Progress
from bench.systems import Running, Stack

Result = dict[str, Any]

IDLE = 0.10  # of one core: a system this busy has not finished with the last run
QUIET = 0.20  # of one core: other load on the machine we are willing to measure under


def _harness_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


class Meter:
    """CPU of every party around one measurement, as % of one core over its wall time."""

    def __init__(self, stack: Stack, system: Running) -> None:
        self.stack = stack
        self.system = system

    def _snap(self) -> dict[str, float]:
        machine = machine_seconds()
        return {
            "t": time.monotonic(),
            "sut": self.system.cpu_seconds(),
            "mock": self.stack.mock.cpu_seconds() if self.stack.mock else 0.0,
            "redis": self.stack.redis.cpu_seconds() if self.stack.redis else 0.0,
            "harness": _harness_cpu(),
            "machine": machine["busy"],
            "softirq": machine["softirq"],
            "steal": machine["steal"],
        }

    def measure(self, run: Callable[[], Result]) -> Result:
        before = self._snap()
        res = run()
        after = self._snap()
        wall = max(1e-6, after["t"] - before["t"])
        d = {k: after[k] - before[k] for k in before}
        gen = float(res.get("loadgen_cpu_s", 0.0))
        ours = d["sut"] + d["mock"] + d["redis"] + d["harness"] + gen

        def pct(x: float) -> float:
            return round(100 * x / wall, 1)

        res["cpu"] = {
            "sut": pct(d["sut"]) if self.system.proc else None,
            "mock": pct(d["mock"]),
            "loadgen": pct(gen),
            "redis": pct(d["redis"]) if self.stack.redis else None,
            "other": pct(max(0.0, d["machine"] - ours)),
            "softirq": pct(d["softirq"]),
            "steal": pct(d["steal"]),
        }
        # CPU per request barely moves when other work shares the core (throughput and
        # latency do), so it is the steadiest way to compare proxies on a busy machine.
        done = res.get("ok", res.get("completed"))
        if self.system.proc is not None and done:
            res["sut_cpu_us_per_req"] = round(1e6 * d["sut"] / done, 1)
        chunks = res.get("chunks_total")
        if self.system.proc is not None and chunks:
            # A stream's cost is per chunk relayed (its setup shared out over them).
            res["sut_cpu_us_per_chunk"] = round(1e6 * d["sut"] / chunks, 2)
        return res


class Calm:
    """Waits, before each measurement, for idle systems and (within budget) a quiet box."""

    def __init__(self, stack: Stack, systems: list[Running], budget: float) -> None:
        self.stack = stack
        self.systems = systems
        self.budget = budget

    def _ours(self) -> float:
        return sum(p.cpu_seconds() for p in self.stack.procs) + _harness_cpu()

    def wait(self, window: float = 0.2, settle_limit: float = 30.0) -> dict[str, float]:
        start = time.monotonic()
        # 1. Our systems idle again (bounded: a wedged system must not stall the run).
        while time.monotonic() - start < settle_limit:
            before = sum(s.cpu_seconds() for s in self.systems)
            time.sleep(window)
            if sum(s.cpu_seconds() for s in self.systems) - before < window * IDLE:
                break
        settled = time.monotonic() - start
        # 2. Everyone else quiet, as long as the run's budget for waiting lasts.
        other = 0.0
        while True:
            t0, ours0, busy0 = time.monotonic(), self._ours(), machine_seconds()["busy"]
            time.sleep(window)
            t1, ours1, busy1 = time.monotonic(), self._ours(), machine_seconds()["busy"]
            other = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)
            if other < QUIET or self.budget <= 0:
                break
            self.budget -= t1 - t0
        return {"settle_s": round(settled, 2),
                "quiet_wait_s": round(time.monotonic() - start - settled, 2),
                "other_before_pct": round(100 * other, 1)}


def scenarios(plan: Plan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if plan.mem_conns > 0:
        # First, while each process is fresh: after a load its heap has room to spare,
        # and new connections would cost no new memory.
        out.append({"id": "memory", "kind": "memory", "stream": False,
                    "conns": plan.mem_conns, "streams": plan.mem_streams})
    out += [{"id": f"closed-c{c}", "kind": "closed", "stream": False, "concurrency": c,
             "duration_s": plan.duration} for c in plan.concurrency]
    out.append({"id": f"open-r{plan.rate:g}", "kind": "open", "stream": False,
                "rate": plan.rate, "duration_s": plan.open_duration})
    if plan.single_streams > 0:
        out.append({"id": "stream-c1", "kind": "stream", "stream": True, "concurrency": 1,
                    "streams": plan.single_streams})
    out.append({"id": f"stream-c{plan.stream_concurrency}", "kind": "stream", "stream": True,
                "concurrency": plan.stream_concurrency, "streams": plan.streams})
    for sc in out:
        sc["results"] = {}
        sc["rounds"] = {}
    return out


def summary(kind: str, res: Result) -> str:
    if "error" in res:
        return f"error: {res['error']}"
    other = res.get("cpu", {}).get("other")
    noise = f"  (other load {other:.0f}%)" if other and other >= 100 * QUIET else ""
    if kind == "closed":
        lat = res["latency_ms"]
        return (f"{res['rps']:>9,.0f} req/s  P50 {lat['p50']:.2f} ms  P99 {lat['p99']:.2f} ms"
                f"  errors {res['errors']}{noise}")
    if kind == "memory":
        per_stream = res["bytes_per_stream"]
        return (f"{res['bytes_per_idle_conn'] / 1024:,.1f} KiB per idle connection, "
                + (f"{per_stream / 1024:,.1f} KiB per stream in flight" if per_stream
                   is not None else "no streams") + noise)
    if kind == "open":
        return (f"{res['achieved_rps']:>9,.0f} of {res['offered_rps']:,.0f} req/s  "
                f"P50 {res['latency_ms']['p50']:.2f} ms  P99 {res['latency_ms']['p99']:.2f} ms"
                f"  errors {res['errors']}{noise}")
    return (f"{res['ok']}/{res['streams']} streams  TTFT P50 {res['ttft_ms']['p50']:.2f} ms  "
            f"gap P99 {res['gap_ms']['p99']:.2f} ms  errors {res['errors']}{noise}")


def measure(plan: Plan, sc: dict[str, Any], system: Running, stack: Stack,
            wrk_exe: str) -> Result:
    core = stack.aux_core
    meter = Meter(stack, system)
    plain = system.body(False)
    if sc["kind"] == "closed":
        if plan.warmup > 0:
            loadgen.wrk(wrk_exe, system.url, plain, system.headers,
                        concurrency=sc["concurrency"], duration=plan.warmup, core=core)
        return meter.measure(lambda: loadgen.wrk(
            wrk_exe, system.url, plain, system.headers, concurrency=sc["concurrency"],
            duration=plan.duration, core=core))
    if sc["kind"] == "memory":
        assert system.proc is not None
        pgid = system.proc.pid
        return meter.measure(lambda: loadgen.memprobe(
            system.url, plain, system.body(True), system.headers, pgid=pgid,
            conns=sc["conns"], streams=sc["streams"] if system.spec.streams else 0, core=core))
    if sc["kind"] == "open":
        return meter.measure(lambda: loadgen.openloop(
            system.url, plain, system.headers, rate=plan.rate, duration=plan.open_duration,
            core=core, drain=plan.drain))
    return meter.measure(lambda: loadgen.streams(
        system.url, system.body(True), system.headers, concurrency=sc["concurrency"],
        count=sc["streams"], gap_ms=plan.gap_ms, core=core, expected_chunks=plan.chunks))


def least_disturbed(rounds: list[Result]) -> Result:
    """The round with the least other load on the machine, or on the host under it (steal:
    time our virtual cores wanted and did not get), failed rounds last."""
    def disturbance(r: Result) -> tuple[int, float]:
        cpu = r.get("cpu", {})
        return 1 if "error" in r else 0, cpu.get("other", 0.0) + cpu.get("steal", 0.0)

    return min(rounds, key=disturbance)


def run_all(plan: Plan, stack: Stack, systems: list[Running], wrk_exe: str,
            progress: Progress) -> list[dict[str, Any]]:
    calm = Calm(stack, systems, plan.quiet_budget)
    scs = scenarios(plan)
    for rnd in range(plan.rounds):
        # Alternate the order each round, so no system is always measured first.
        order = systems if rnd % 2 == 0 else list(reversed(systems))
        for sc in scs:
            for system in order:
                if sc["kind"] == "memory" and system.proc is None:
                    continue  # direct: no proxy process to measure
                if sc["stream"] and not system.spec.streams:
                    continue
                tag = f" r{rnd + 1}" if plan.rounds > 1 else ""
                with progress.step(f"{sc['id']}{tag} · {system.name}"):
                    before = calm.wait()
                    try:
                        res = measure(plan, sc, system, stack, wrk_exe)
                    except loadgen.LoadError as err:
                        res = {"error": str(err)}
                    res["round"] = rnd + 1
                    res["calm"] = before
                    progress.finish(summary(sc["kind"], res))
                sc["rounds"].setdefault(system.name, []).append(res)
    for sc in scs:
        for name, rounds in sc["rounds"].items():
            sc["results"][name] = least_disturbed(rounds)
        if plan.rounds == 1:
            del sc["rounds"]  # the one round is `results`
    return scs
