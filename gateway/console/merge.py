"""Every gateway process's snapshot (`snapshot.py`) → one frame, what the console shows.

Pure functions of the snapshots, so they are tested on their own. How each number
combines across processes (workers and replicas):
- counters, rates, in-flight, tokens and cost: summed;
- latency: each process sketches its window as quantiles at fixed probabilities; the
  merged distribution is the mixture of the sketches' piecewise-linear CDFs weighted by
  their sample counts, and its quantiles are read off that (a process with 10x the
  samples counts 10x). A model's latency mixes its deployments' sketches the same way;
- a circuit: the worst state any process holds (open > half-open > closed), as the
  `turnout_circuit_state` metric reports it;
- a pool replica's scraped telemetry: from the process that scraped it last;
- decisions and circuit transitions: the union, by id, newest last.
A process whose last snapshot is older than `STALE_S` has gone (or cannot reach the
store) and is left out.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.console.snapshot import GRID, Sketch

STALE_S = 5.0
DECISIONS_SHOWN = 100
INCIDENTS_SHOWN = 100
_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


def current(snapshots: Iterable[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The live processes' latest snapshots, in a stable order."""
    latest: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        if now - snap.get("at", 0.0) > STALE_S:
            continue
        seen = latest.get(snap["proc"])
        if seen is None or snap["seq"] > seen["seq"]:
            latest[snap["proc"]] = snap
    return [latest[p] for p in sorted(latest)]


# -- latency sketches ---------------------------------------------------------------------

def _cdf(values: Sequence[float], x: float, left: bool = False) -> float:
    """A sketch's CDF at `x`: linear between its points, right-continuous (`left`: the
    limit from the left, which differs where several points share a value)."""
    j = (bisect_left(values, x) if left else bisect_right(values, x)) - 1
    if j < 0:
        return 0.0
    if j >= len(values) - 1:
        return GRID[-1]
    lo, hi = values[j], values[j + 1]
    return GRID[j] + (GRID[j + 1] - GRID[j]) * (x - lo) / (hi - lo)


def quantile(sketches: Sequence[Sketch], q: float) -> float | None:
    """The `q` quantile of the count-weighted mixture of `sketches`."""
    parts = [(s["n"], s["q"]) for s in sketches if s and s["n"] > 0]
    if not parts:
        return None
    total = sum(n for n, _ in parts)

    def mixed(x: float, left: bool = False) -> float:
        return sum(n * _cdf(values, x, left) for n, values in parts) / total

    xs = sorted({v for _, values in parts for v in values})
    for k, x in enumerate(xs):
        at = mixed(x)
        if at + 1e-12 < q:
            continue
        if k == 0:
            return x
        before, below = mixed(xs[k - 1]), mixed(x, left=True)
        if q > below + 1e-12 or below <= before:  # a jump at x covers q
            return x
        return xs[k - 1] + (x - xs[k - 1]) * (q - before) / (below - before)
    return xs[-1]


def latency(sketches: Sequence[Sketch | None]) -> dict[str, Any] | None:
    present = [s for s in sketches if s]
    if not present:
        return None
    p50, p99 = quantile(present, 0.5), quantile(present, 0.99)
    return {"n": sum(s["n"] for s in present),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2)}


# -- sums -------------------------------------------------------------------------------

def _sum(values: Iterable[float | None]) -> float | None:
    """None when no process had a value (e.g. each one's first snapshot has no rates)."""
    present = [v for v in values if v is not None]
    return round(sum(present), 4) if present else None


def _cost_per_m(cost_nanos: float, tokens: float) -> float | None:
    return round(cost_nanos / tokens / 1000, 4) if tokens else None


def _error_rate(failures_ps: float | None, rps: float | None) -> float | None:
    return round((failures_ps or 0.0) / rps, 4) if rps else None


def _summed(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counters of the same team or key from several processes, added up."""
    out: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if value is None:
                out.setdefault(name, None)
            else:
                out[name] = (out.get(name) or 0) + value
    return out


# -- the frame ----------------------------------------------------------------------------

def merge(snapshots: Sequence[dict[str, Any]], now: float) -> dict[str, Any]:
    """One frame from the live processes' snapshots (`current` first)."""
    snaps = current(snapshots, now)
    per_dep: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, list[str]] = {}
    for snap in snaps:
        for dep_id, row in snap["deployments"].items():
            per_dep.setdefault(dep_id, []).append(row)
        for model, ids in snap["models"].items():
            known = models.setdefault(model, [])
            known += [i for i in ids if i not in known]
    deployments = {dep_id: _deployment(dep_id, rows) for dep_id, rows in per_dep.items()}
    return {
        "at": now, "processes": len(snaps),
        "models": [_model(name, ids, deployments, per_dep) for name, ids in sorted(models.items())],
        "failover": _failover([s["failover"] for s in snaps]),
        "teams": _grouped(snaps, "teams"), "keys": _grouped(snaps, "keys"),
        "decisions": _union(snaps, "decisions", DECISIONS_SHOWN),
        "incidents": _union(snaps, "incidents", INCIDENTS_SHOWN),
    }


def _deployment(dep_id: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    rps, fps = _sum(r["rps"] for r in rows), _sum(r["fps"] for r in rows)
    tokens, cost = sum(r["tokens"] for r in rows), sum(r["cost_nanos"] for r in rows)
    worst = max(rows, key=lambda r: _SEVERITY.get(r["circuit"], 0))
    out: dict[str, Any] = {
        "id": dep_id, "model": first["model"], "pool": first["pool"], "price": first["price"],
        "requests": sum(r["requests"] for r in rows), "rps": rps, "fps": fps,
        "error_rate": _error_rate(fps, rps),
        "in_flight": sum(r["in_flight"] for r in rows),
        "ttft": latency([r["ttft"] for r in rows]), "itl": latency([r["itl"] for r in rows]),
        "tokens": tokens, "cost_nanos": cost, "cost_per_m": _cost_per_m(cost, tokens),
        "circuit": worst["circuit"], "opened_total": sum(r["opened_total"] for r in rows),
        "last_error": next((r["last_error"] for r in rows if r["last_error"]), None),
    }
    replicas = [r["replica"] for r in rows if r.get("replica")]
    if replicas:  # the freshest scrape any process holds
        out["replica"] = min(replicas, key=lambda p: (p["age_s"] is None, p["age_s"] or 0.0))
    return out


def _model(name: str, ids: Sequence[str], deployments: dict[str, dict[str, Any]],
           per_dep: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    deps = [deployments[i] for i in ids if i in deployments]
    rows = [r for i in ids for r in per_dep.get(i, ())]
    rps, fps = _sum(d["rps"] for d in deps), _sum(d["fps"] for d in deps)
    tokens, cost = sum(d["tokens"] for d in deps), sum(d["cost_nanos"] for d in deps)
    return {"name": name, "rps": rps, "fps": fps, "error_rate": _error_rate(fps, rps),
            "requests": sum(d["requests"] for d in deps),
            "in_flight": sum(d["in_flight"] for d in deps),
            "ttft": latency([r["ttft"] for r in rows]), "itl": latency([r["itl"] for r in rows]),
            "cost_per_m": _cost_per_m(cost, tokens),
            "circuits_open": sum(d["circuit"] != "closed" for d in deps),
            "deployments": deps}


def _failover(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    enabled = [p for p in parts if p.get("enabled")]
    if not enabled:
        return {"enabled": False}
    return {"enabled": True,
            "counters": _summed([p["counters"] for p in enabled]),
            "rates": _summed([p["rates"] for p in enabled]),
            "budget": _summed([p["budget"] for p in enabled])}


def _grouped(snaps: Sequence[dict[str, Any]], what: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for snap in snaps:
        for name, row in snap.get(what, {}).items():
            rows.setdefault(name, []).append(row)
    return {name: _summed(parts) for name, parts in sorted(rows.items())}


def _union(snaps: Sequence[dict[str, Any]], what: str, keep: int) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for snap in snaps:
        for item in snap.get(what, ()):
            seen.setdefault(item["id"], item)
    return sorted(seen.values(), key=lambda item: (item["t"], item["id"]))[-keep:]


def point(frame: dict[str, Any]) -> dict[str, Any]:
    """What the charts keep of a frame (the history sent to a console as it connects)."""
    fo = frame["failover"]
    return {"t": round(frame["at"], 3),
            "models": {m["name"]: {"rps": m["rps"], "err": m["error_rate"],
                                   "p99": (m["ttft"] or {}).get("p99_ms")}
                       for m in frame["models"]},
            "failover": fo.get("rates") or {},
            "teams": {name: {"cost_ps": t.get("cost_nanos_ps"), "rps": t.get("rps")}
                      for name, t in frame["teams"].items()}}
