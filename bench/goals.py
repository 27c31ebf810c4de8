"""Issue #22's goals, each judged from one `python -m bench` run as a ratio to the floor
(or an added latency against direct) measured side by side, with the steal and other load
of the measurements it reads, so a disturbed verdict shows as such. Goals whose systems
did not run are `n/a`; figures without a target (memory, peers) are reported as `info`.
"""

from __future__ import annotations

from typing import Any

Results = dict[str, Any]

FLOOR, DIRECT = "floor", "direct"
EVERYTHING = ("turnout-everything", "turnout-everything-1pct")
FULL, HIT = "turnout-full", "turnout-cache-hit"


def _scenario(results: Results, kind: str, **params: Any) -> dict[str, Any]:
    for sc in results["scenarios"]:
        if sc["kind"] == kind and all(sc.get(k) == v for k, v in params.items()):
            return dict(sc["results"])
    return {}


def _ok(r: dict[str, Any] | None) -> bool:
    return r is not None and "error" not in r


class Goals:
    def __init__(self, results: Results) -> None:
        self.results = results
        self.rows: list[dict[str, Any]] = []
        self.c1 = _scenario(results, "closed", concurrency=1)
        self.c16 = _scenario(results, "closed", concurrency=16)
        self.lone = _scenario(results, "stream", concurrency=1)
        burst = [sc for sc in results["scenarios"]
                 if sc["kind"] == "stream" and sc["concurrency"] > 1]
        self.burst = dict(burst[-1]["results"]) if burst else {}
        self.burst_id = burst[-1]["id"] if burst else "stream"
        self.memory = _scenario(results, "memory")

    def add(self, goal: str, system: str, value: float | None, op: str | None,
            threshold: float | None, unit: str, used: list[dict[str, Any] | None]) -> None:
        verdict: bool | None = None
        if value is not None and op is not None and threshold is not None:
            verdict = value >= threshold if op == ">=" else value <= threshold
        cpus = [r.get("cpu", {}) for r in used if _ok(r) and r is not None]
        self.rows.append({
            "goal": goal, "system": system,
            "value": None if value is None else round(value, 3), "op": op,
            "threshold": threshold, "unit": unit,
            "pass": verdict if op is not None else ("info" if value is not None else None),
            "steal_pct": max((float(c.get("steal") or 0) for c in cpus), default=None),
            "other_pct": max((float(c.get("other") or 0) for c in cpus), default=None)})

    def ratio(self, goal: str, system: str, other: str, threshold: float | None) -> None:
        mine, base = self.c16.get(system), self.c16.get(other)
        value = (mine["rps"] / base["rps"] if _ok(mine) and _ok(base) and mine and base
                 and base["rps"] else None)
        self.add(goal, system, value, ">=" if threshold is not None else None, threshold, "x",
                 [mine, base])

    def added(self, goal: str, system: str, scenario: dict[str, Any], threshold: float) -> None:
        r = scenario.get(system)
        value = r["added_ms"]["p50"] if _ok(r) and r and "added_ms" in r else None
        self.add(goal, system, value, "<=", threshold, " ms", [r, scenario.get(DIRECT)])

    def streams(self, system: str) -> None:
        mine, floor = self.burst.get(system), self.burst.get(FLOOR)
        a = mine.get("sut_cpu_us_per_chunk") if _ok(mine) and mine else None
        b = floor.get("sut_cpu_us_per_chunk") if _ok(floor) and floor else None
        self.add(f"{self.burst_id}: CPU per chunk ÷ floor's", system,
                 a / b if a and b else None, "<=", 1.0, "x", [mine, floor])
        self.add(f"{self.burst_id}: coalesced gaps", system,
                 float(mine["coalesced"]) if _ok(mine) and mine else None, "<=", 0, "",
                 [mine])

    def memory_rows(self) -> None:
        for name, r in self.memory.items():
            if not _ok(r):
                continue
            self.add("memory: RSS per idle keep-alive connection", name,
                     r["bytes_per_idle_conn"] / 1024, None, None, " KiB", [r])
            if r["bytes_per_stream"] is not None:
                self.add("memory: RSS per in-flight stream", name,
                         r["bytes_per_stream"] / 1024, None, None, " KiB", [r])

    def soak(self) -> None:
        soak = self.results.get("soak")
        if not soak or "error" in soak:
            return
        growth = soak.get("growth")
        self.add(f"soak {soak['seconds']:g} s mixed: RSS growth once warm", soak["system"],
                 None if growth is None else 100 * growth, "<=", 5.0, "%", [])


def goals(results: Results) -> list[dict[str, Any]]:
    g = Goals(results)
    ran = {s["name"] for s in results["systems"] if s["status"] == "ok"}
    peers = [s["name"] for s in results["systems"]
             if s["kind"] in ("portkey", "litellm") and s["status"] == "ok"]
    for name in EVERYTHING:
        if name in ran:
            g.ratio("c=16 ÷ floor", name, FLOOR, 0.8)
            g.added("added P50 at c=1", name, g.c1, 0.5)
    if FULL in ran:
        g.ratio("c=16 ÷ floor", FULL, FLOOR, 1.0)
    if HIT in ran:
        g.ratio("cache hits, c=16 ÷ floor", HIT, FLOOR, 2.0)
    if EVERYTHING[0] in ran:
        g.streams(EVERYTHING[0])
        g.added("lone stream: added TTFT P50", EVERYTHING[0], g.lone, 0.5)
        for peer in peers:
            g.ratio(f"c=16 ÷ {peer}", EVERYTHING[0], peer, None)
    g.memory_rows()
    g.soak()
    return g.rows


def render(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Goals (issue #22; steal/other: the most any measurement used had, % of a core)"]
    for r in rows:
        mark = {True: "PASS", False: "FAIL", None: "n/a ", "info": "info"}[r["pass"]]
        val = "—" if r["value"] is None else f"{r['value']:,.3g}{r['unit']}"
        target = f" (target {r['op']} {r['threshold']:g}{r['unit']})" if r["op"] else ""
        noise = ("" if r["steal_pct"] is None else
                 f"  [steal {r['steal_pct']:.0f}%, other {r['other_pct']:.0f}%]")
        out.append(f"  {mark}  {r['system']:<23} {r['goal']}: {val}{target}{noise}")
    return out
