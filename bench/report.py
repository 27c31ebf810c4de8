"""Derived figures (added latency vs direct, throughput vs the floor), the issue's targets,
and the terminal tables. Everything reads and extends the results dict that becomes the
JSON file, so the table, the JSON and the plot always agree.
"""

from __future__ import annotations

from typing import Any

from bench import goals

Results = dict[str, Any]
Scenario = dict[str, Any]

DIRECT = "direct"
FLOOR = "floor"


def _ok(res: dict[str, Any] | None) -> bool:
    return res is not None and "error" not in res


def _latency_key(scenario: Scenario) -> str:
    return {"closed": "latency_ms", "open": "latency_ms", "stream": "ttft_ms"}[scenario["kind"]]


def derive(results: Results) -> None:
    """Add `added_ms` (vs direct) and `vs_floor` (throughput ratio) to every result."""
    for sc in results["scenarios"]:
        if sc["kind"] == "memory":
            continue
        res = sc["results"]
        base = res.get(DIRECT)
        floor = res.get(FLOOR)
        key = _latency_key(sc)
        for r in res.values():
            if not _ok(r):
                continue
            if _ok(base):
                r["added_ms"] = {q: round(r[key][q] - base[key][q], 4)
                                 for q in ("p50", "p90", "p99")}
                if sc["kind"] == "stream":
                    r["added_jitter_p99_ms"] = round(r["jitter_ms"]["p99"]
                                                     - base["jitter_ms"]["p99"], 4)
            rate = "achieved_rps" if sc["kind"] == "open" else "rps"
            if sc["kind"] != "stream" and _ok(floor) and floor[rate]:
                r["vs_floor"] = round(r[rate] / floor[rate], 3)


def peak_rps(results: Results, system: str) -> float | None:
    vals = [sc["results"][system]["rps"] for sc in results["scenarios"]
            if sc["kind"] == "closed" and _ok(sc["results"].get(system))]
    return max(vals) if vals else None


def _cpu_ratio(results: Results, system: str, other: str = FLOOR) -> float | None:
    """Throughput each would reach with the core to itself, relative: a ratio of CPU cost."""
    sc = _find(results, "closed", concurrency=16) or next(
        (s for s in reversed(results["scenarios"]) if s["kind"] == "closed"), None)
    if sc is None:
        return None
    mine, floor = sc["results"].get(system), sc["results"].get(other)
    if not (_ok(mine) and _ok(floor)) or not mine or not floor:
        return None
    a, b = mine.get("sut_cpu_us_per_req"), floor.get("sut_cpu_us_per_req")
    return float(b / a) if a and b else None


def _find(results: Results, kind: str, **params: Any) -> Scenario | None:
    for sc in results["scenarios"]:
        if sc["kind"] == kind and all(sc.get(k) == v for k, v in params.items()):
            return sc
    return None


def targets(results: Results) -> list[dict[str, Any]]:
    """The issue's targets for every Turnout system, plus the harness's own sanity checks."""
    out: list[dict[str, Any]] = []

    def add(name: str, system: str, value: float | None, op: str, threshold: float,
            unit: str = "") -> None:
        if value is None:
            out.append({"target": name, "system": system, "value": None, "threshold": threshold,
                        "op": op, "unit": unit, "pass": None})
            return
        ok = value >= threshold if op == ">=" else value <= threshold
        out.append({"target": name, "system": system, "value": round(value, 3),
                    "threshold": threshold, "op": op, "unit": unit, "pass": ok})

    turnouts = [s["name"] for s in results["systems"] if s["kind"] == "turnout"
                and s["status"] == "ok"]
    floor = peak_rps(results, FLOOR)
    litellm_name = next((s["name"] for s in results["systems"]
                         if s["kind"] == "litellm" and s["status"] == "ok"), None)
    litellm = peak_rps(results, litellm_name) if litellm_name else None
    direct = peak_rps(results, DIRECT)
    c1 = _find(results, "closed", concurrency=1)
    # Streams one at a time show what the gateway adds to TTFT; N started at once (they stay
    # in step: every stream lasts as long) add the queueing of a burst on one core, which
    # the floor proxy pays too: that one is judged against the floor's.
    single = _find(results, "stream", concurrency=1)
    stream = next((sc for sc in results["scenarios"] if sc["kind"] == "stream"
                   and sc["concurrency"] > 1), single)
    floor_burst = stream["results"].get(FLOOR) if stream else None
    for name in turnouts:
        peak = peak_rps(results, name)
        add("peak throughput / floor's", name,
            peak / floor if peak and floor else None, ">=", 0.6, "x")
        add("same, from CPU per request at c=16 (floor's µs/req ÷ this; steady under noise)",
            name, _cpu_ratio(results, name), ">=", 0.6, "x")
        if litellm_name is not None:
            add("peak throughput / LiteLLM's", name,
                peak / litellm if peak and litellm else None, ">=", 30, "x")
            add("same, from CPU per request at c=16", name,
                _cpu_ratio(results, name, litellm_name), ">=", 30, "x")
        r = c1["results"].get(name) if c1 else None
        add("added P50 at c=1", name, r["added_ms"]["p50"] if _ok(r) and r and "added_ms" in r
            else None, "<=", 1.0, "ms")
        one = single["results"].get(name) if single else None
        add("stream added TTFT P50, one stream at a time", name,
            one["added_ms"]["p50"] if _ok(one) and one and "added_ms" in one else None,
            "<=", 1.0, "ms")
        s = stream["results"].get(name) if stream else None
        have = _ok(s) and s is not None and "added_ms" in s
        burst = f"{stream['concurrency']} started at once" if stream else ""
        add(f"stream added TTFT P50, {burst}, beyond the floor's", name,
            s["added_ms"]["p50"] - floor_burst["added_ms"]["p50"]
            if have and s and _ok(floor_burst) and floor_burst and "added_ms" in floor_burst
            else None, "<=", 1.0, "ms")
        add("stream added gap jitter P99", name,
            s["added_jitter_p99_ms"] if have and s else None, "<=", 1.0, "ms")
        base = stream["results"].get(DIRECT) if stream else None
        add("stream coalesced gaps beyond direct's", name,
            s["coalesced"] - base["coalesced"] if have and s and _ok(base) and base else None,
            "<=", 0, "")
        add("harness: direct peak / this peak (mock never the bottleneck)", name,
            direct / peak if direct and peak else None, ">=", 4, "x")
    return out


# ---------------------------------------------------------------- rendering


def _num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


NOISY_PCT = 20.0  # other load or steal (% of a core) above which a figure is marked disturbed


def _disturbed(cpu: dict[str, Any]) -> bool:
    """Other work on our cores, or the hypervisor not running them (steal), over the mark."""
    return float(cpu.get("other") or 0) + float(cpu.get("steal") or 0) >= NOISY_PCT


def _pct(cpu: dict[str, Any] | None, key: str) -> str:
    if not cpu or cpu.get(key) is None:
        return "—"
    if key != "other":
        return f"{cpu[key]:.0f}%"
    steal = float(cpu.get("steal") or 0)
    return (f"{cpu[key]:.0f}%" + (f"+{steal:.0f}st" if steal >= 1 else "")
            + ("*" if _disturbed(cpu) else ""))


def noisy_runs(results: Results) -> int:
    return sum(1 for sc in results["scenarios"] for r in sc["results"].values()
               if _ok(r) and _disturbed(r.get("cpu", {})))


def _table(header: list[str], rows: list[list[str]]) -> str:
    rows = [r + [""] * (len(header) - len(r)) for r in rows]  # error rows are short
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in
                       enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def _closed_rows(sc: Scenario) -> list[list[str]]:
    rows = []
    for name, r in sc["results"].items():
        if not _ok(r):
            rows.append([name, "error: " + str(r.get("error", "?"))[:60]] + [""] * 12)
            continue
        lat, add, cpu = r["latency_ms"], r.get("added_ms", {}), r.get("cpu", {})
        rows.append([name, _num(r["rps"], 0), _num(r.get("vs_floor"), 2),
                     _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]),
                     _num(add.get("p50")), _num(add.get("p99")), str(r["errors"]),
                     _pct(cpu, "sut"), _num(r.get("sut_cpu_us_per_req"), 0),
                     _pct(cpu, "mock"), _pct(cpu, "loadgen"), _pct(cpu, "other")])
    return rows


_CLOSED_HEAD = ["system", "req/s", "÷floor", "P50 ms", "P90 ms", "P99 ms", "+P50", "+P99",
                "errors", "SUT cpu", "µs/req", "mock cpu", "gen cpu", "other cpu"]


def _open_rows(sc: Scenario) -> list[list[str]]:
    rows = []
    for name, r in sc["results"].items():
        if not _ok(r):
            rows.append([name, "error: " + str(r.get("error", "?"))[:60]] + [""] * 10)
            continue
        lat, add, cpu = r["latency_ms"], r.get("added_ms", {}), r.get("cpu", {})
        rows.append([name, _num(r["offered_rps"], 0), _num(r["achieved_rps"], 0),
                     _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]),
                     _num(add.get("p50")), _num(add.get("p99")),
                     f"{r['status_errors']}/{r['conn_errors']}/{r['unfinished']}",
                     _pct(cpu, "sut"), _pct(cpu, "mock"), _pct(cpu, "loadgen"),
                     _pct(cpu, "other")])
    return rows


_OPEN_HEAD = ["system", "offered", "achieved", "P50 ms", "P90 ms", "P99 ms", "+P50", "+P99",
              "err st/conn/unfin", "SUT cpu", "mock cpu", "gen cpu", "other cpu"]


def _stream_rows(sc: Scenario) -> list[list[str]]:
    rows = []
    for name, r in sc["results"].items():
        if not _ok(r):
            rows.append([name, "error: " + str(r.get("error", "?"))[:60]] + [""] * 11)
            continue
        t, g, j, add = r["ttft_ms"], r["gap_ms"], r["jitter_ms"], r.get("added_ms", {})
        rows.append([name, f"{r['ok']}/{r['streams']}", _num(t["p50"]), _num(t["p99"]),
                     _num(add.get("p50")), _num(add.get("p99")),
                     _num(g["p50"]), _num(g["p99"]), _num(j["p99"]),
                     _num(r.get("added_jitter_p99_ms")), str(r["coalesced"]),
                     _num(r.get("sut_cpu_us_per_chunk"), 1), str(r["errors"]),
                     _pct(r.get("cpu"), "other")])
    return rows


_STREAM_HEAD = ["system", "ok", "TTFT P50", "TTFT P99", "+TTFT P50", "+TTFT P99", "gap P50",
                "gap P99", "jitter P99", "+jitter P99", "coalesced", "µs/chunk", "errors",
                "other cpu"]


def _memory_rows(sc: Scenario) -> list[list[str]]:
    rows = []
    for name, r in sc["results"].items():
        if not _ok(r):
            rows.append([name, "error: " + str(r.get("error", "?"))[:60]] + [""] * 4)
            continue
        rows.append([name, _num(r["rss_base"] / 2**20, 1),
                     _num(r["bytes_per_idle_conn"] / 1024, 1),
                     _num(r["bytes_per_stream"] and r["bytes_per_stream"] / 1024, 1),
                     _pct(r.get("cpu"), "other")])
    return rows


_MEMORY_HEAD = ["system", "RSS MiB", "KiB/idle conn", "KiB/stream", "other cpu"]


def render(results: Results) -> str:
    meta = results["meta"]
    out = [f"Turnout bench · {meta['started']} · {meta['mode']} · {meta['machine']}",
           f"pinning: {meta['pinning']} · mock: {meta['mock']['chunks']} chunks x "
           f"{meta['mock']['gap_ms']:g} ms, delay {meta['mock']['delay_ms']:g} ms · "
           f"wall {meta.get('wall_s', 0):.0f} s",
           f"turnout: {meta.get('turnout_source', '?')}"]
    for s in results["systems"]:
        if s["status"] != "ok":
            out.append(f"  ! {s['name']} unavailable: {s['error']}")
    for sc in results["scenarios"]:
        out.append("")
        if sc["kind"] == "closed":
            out.append(f"Closed loop, c={sc['concurrency']}, non-streamed "
                       f"(wrk, {sc['duration_s']:g} s; latency in ms; +P = added vs direct)")
            out.append(_table(_CLOSED_HEAD, _closed_rows(sc)))
        elif sc["kind"] == "memory":
            out.append(f"Memory: {sc['conns']} idle keep-alive connections (one request each), "
                       f"then {sc['streams']} streams in flight (RSS of the process group)")
            out.append(_table(_MEMORY_HEAD, _memory_rows(sc)))
        elif sc["kind"] == "open":
            out.append(f"Open loop, {sc['rate']:g} req/s offered for {sc['duration_s']:g} s, "
                       "non-streamed (latency from the intended send time)")
            out.append(_table(_OPEN_HEAD, _open_rows(sc)))
        else:
            out.append(f"Streaming, {sc['concurrency']} concurrent, {sc['streams']} streams "
                       f"(TTFT and inter-chunk gaps at the client, ms; nominal gap "
                       f"{meta['mock']['gap_ms']:g} ms; jitter = |gap - nominal|)")
            out.append(_table(_STREAM_HEAD, _stream_rows(sc)))
    out.append("")
    out.append("cpu: % of one core over the run (SUT = system under test, gen = load "
               "generator, other = everything else on the machine, not ours; +N st: steal, "
               "time the hypervisor did not run our virtual cores); µs/req: the SUT's CPU "
               "time per request")
    noisy = noisy_runs(results)
    if noisy:
        out.append(f"* {noisy} measurement(s) ran while other work or steal took ≥{NOISY_PCT:g}%"
                   " of a core: treat those figures as disturbed.")
    if results.get("targets"):
        out.append("")
        out.append("Targets")
        for t in results["targets"]:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
            val = "—" if t["value"] is None else f"{t['value']:g}{t['unit']}"
            out.append(f"  {mark}  {t['system']:<13} {t['target']}: {val} "
                       f"(target {t['op']} {t['threshold']:g}{t['unit']})")
    if results.get("goals"):
        out.append("")
        out.extend(goals.render(results["goals"]))
    for prof in results.get("profiles") or []:
        out.append("")
        if "error" in prof:
            out.append(f"Profile {prof['system']}: failed: {prof['error']}")
            continue
        out.append(f"Profile: {prof['system']} under c={prof['concurrency']} "
                   f"({prof['rps_while_profiled']:,.0f} req/s, {prof['samples']} py-spy samples;"
                   " % of samples where the process was running Python)")
        out.append("  self time by package: " + ", ".join(
            f"{e['frame']} {e['pct']:.1f}%" for e in prof["self_by_package"][:7]))
        out.append("  top frames by self time:")
        out.extend(f"    {e['pct']:5.1f}%  {e['frame']}" for e in prof["top_self"][:15])
        if prof["top_ours"]:
            out.append("  Turnout's own frames by inclusive time:")
            out.extend(f"    {e['pct']:5.1f}%  {e['frame']}" for e in prof["top_ours"][:12])
    return "\n".join(out)
