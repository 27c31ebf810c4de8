"""Merging the processes' snapshots into one frame: latency sketches mixed by sample
count, counters summed, the worst circuit, the freshest scrape, stale processes left out."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.console.merge import STALE_S, current, merge, quantile
from gateway.console.snapshot import GRID, sketch
from policies.estimators import WindowedQuantiles

NOW = 1_000_000.0


def window(samples: list[float]) -> WindowedQuantiles:
    w = WindowedQuantiles(window_s=1e9, cap=100_000)
    for v in samples:
        w.add(v, 0.0)
    return w


def exact(samples: list[float], q: float) -> float:
    values = sorted(samples)
    return values[min(len(values) - 1, int(q * len(values)))]


def test_one_sketch_gives_back_its_own_quantiles() -> None:
    samples = [i / 1000 for i in range(1, 1001)]
    s = sketch(window(samples), 0.0)
    assert s is not None and s["n"] == 1000
    for p, v in zip(GRID, s["q"], strict=True):
        assert quantile([s], p) == pytest.approx(v)
    assert quantile([s, s], 0.5) == pytest.approx(quantile([s], 0.5))  # same shape twice


def test_mixture_tracks_the_pooled_samples() -> None:
    """A busy fast process and a quiet slow one: the merged P50 is the fast one's, the
    merged P99 comes from the slow one, as the pooled samples' own quantiles do."""
    rng = random.Random(7)
    fast = [rng.lognormvariate(-4.5, 0.3) for _ in range(2000)]  # ~11 ms
    slow = [rng.lognormvariate(-1.5, 0.3) for _ in range(100)]  # ~220 ms
    parts = [sketch(window(fast), 0.0), sketch(window(slow), 0.0)]
    assert all(parts)
    pooled = fast + slow
    for q in (0.5, 0.9, 0.99):
        merged = quantile([p for p in parts if p], q)
        assert merged == pytest.approx(exact(pooled, q), rel=0.15), q
    assert quantile([], 0.5) is None


def dep_row(**over: Any) -> dict[str, Any]:
    row = {"model": "chat", "pool": "gpu", "price": {"input": 1, "output": 2},
           "requests": 10, "failures": 1, "in_flight": 2, "rps": 5.0, "fps": 1.0,
           "error_rate": 0.1, "ttft": None, "itl": None, "tokens": 1000,
           "cost_nanos": 2_000_000, "circuit": "closed", "opened_total": 0,
           "last_error": None, "replica": {"waiting": 1, "running": 4, "kv_usage": 0.5,
                                           "prefix_hit_rate": 0.9, "healthy": True,
                                           "stale": False, "capacity": 8, "age_s": 0.8}}
    row.update(over)
    return row


def snap(proc: str, seq: int = 1, at: float = NOW, **deps: dict[str, Any]) -> dict[str, Any]:
    return {"proc": proc, "seq": seq, "at": at, "models": {"chat": sorted(deps)},
            "deployments": deps, "teams": {"research": {"requests": 3, "rps": 1.5}},
            "keys": {}, "failover": {"enabled": True, "counters": {"failovers_total": 2},
                                     "rates": {"failovers_total": 0.5},
                                     "budget": {"window_requests": 10}},
            "decisions": [{"id": f"{proc}:1", "t": at - 1}, {"id": "shared", "t": at - 2}],
            "incidents": []}


def test_processes_add_up() -> None:
    a = snap("a", d1=dep_row(), d2=dep_row(circuit="open", opened_total=1, last_error="503"))
    b = snap("b", d1=dep_row(rps=None, fps=None, requests=4,
                             replica={**dep_row()["replica"], "waiting": 7, "age_s": 0.1}),
             d2=dep_row(circuit="half_open"))
    frame = merge([a, b], NOW)
    assert frame["processes"] == 2
    model = frame["models"][0]
    d1, d2 = model["deployments"]
    assert d1["requests"] == 14 and d1["in_flight"] == 4
    assert d1["rps"] == 5.0  # a process with no rate yet adds nothing, not zero-out
    assert d1["error_rate"] == pytest.approx(0.2)
    assert d1["replica"]["waiting"] == 7  # the freshest scrape (b's, 0.1 s old)
    assert d1["cost_per_m"] == pytest.approx(2.0)  # $0.004 over 2,000 tokens
    assert d2["circuit"] == "open" and d2["opened_total"] == 1 and d2["last_error"] == "503"
    assert model["circuits_open"] == 1 and model["requests"] == 34
    assert frame["teams"]["research"] == {"requests": 6, "rps": 3.0}
    assert frame["failover"]["counters"]["failovers_total"] == 4
    assert [d["id"] for d in frame["decisions"]] == ["shared", "a:1", "b:1"]  # once each


def test_gone_and_superseded_snapshots_are_left_out() -> None:
    old = snap("gone", at=NOW - STALE_S - 1, d1=dep_row())
    first, second = snap("a", seq=1, d1=dep_row()), snap("a", seq=2, d1=dep_row(requests=99))
    assert [s["seq"] for s in current([old, second, first], NOW)] == [2]
    frame = merge([old, first, second], NOW)
    assert frame["processes"] == 1 and frame["models"][0]["requests"] == 99
    empty = merge([], NOW)
    assert empty["processes"] == 0 and empty["models"] == []
    assert empty["failover"] == {"enabled": False}
