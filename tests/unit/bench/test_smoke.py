"""The benchmark harness end to end: `python -m bench --smoke` with real processes (mock
upstream, floor proxy, three Turnouts, redis, an OTLP receiver, wrk), then the JSON it
wrote. Structure and sanity only: every system answered every request; no speed is
asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import REPO

SYSTEMS = {"direct", "floor", "turnout-min", "turnout-full", "turnout-everything"}
PROXIES = SYSTEMS - {"direct"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("wrk") is None and os.geteuid() != 0:
        pytest.skip("wrk is not installed and only root can apt-get it here")
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--no-plot", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    files = list(out.glob("*/results.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _by_kind(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [sc for sc in data["scenarios"] if sc["kind"] == kind]


def test_every_system_ran(smoke: dict[str, Any]) -> None:
    systems = {s["name"]: s for s in smoke["systems"]}
    assert set(systems) == SYSTEMS  # LiteLLM stays out of the smoke run
    assert all(s["status"] == "ok" and s["error"] is None for s in systems.values())
    assert smoke["meta"]["mode"] == "smoke"
    for sc in smoke["scenarios"]:
        assert set(sc["results"]) == (PROXIES if sc["kind"] == "memory" else SYSTEMS), sc["id"]
        assert all("error" not in r for r in sc["results"].values()), sc["id"]


def test_closed_loop_figures(smoke: dict[str, Any]) -> None:
    closed = _by_kind(smoke, "closed")
    assert [sc["concurrency"] for sc in closed] == [1, 4]
    for sc in closed:
        for name, r in sc["results"].items():
            assert r["requests"] > 0 and r["ok"] == r["requests"], name
            assert r["errors"] == 0, (name, r["error_detail"])
            assert r["rps"] > 0
            lat = r["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
            assert r["cpu"]["loadgen"] >= 0 and r["cpu"]["mock"] >= 0
            if name == "direct":
                assert r["added_ms"] == {"p50": 0, "p90": 0, "p99": 0}
                assert r["cpu"]["sut"] is None
            else:
                assert set(r["added_ms"]) == {"p50", "p90", "p99"}
                assert r["cpu"]["sut"] > 0  # the proxy did the work
                assert r["vs_floor"] > 0


def test_open_loop_figures(smoke: dict[str, Any]) -> None:
    (sc,) = _by_kind(smoke, "open")
    for name, r in sc["results"].items():
        assert r["sent"] == int(sc["rate"] * sc["duration_s"]), name
        assert r["completed"] == r["sent"] and r["errors"] == 0, name
        assert 0 < r["achieved_rps"] <= r["offered_rps"] * 1.05
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]


def test_stream_figures(smoke: dict[str, Any]) -> None:
    single, burst = _by_kind(smoke, "stream")  # one at a time, then several at once
    assert single["concurrency"] == 1 and burst["concurrency"] > 1
    chunks = smoke["meta"]["mock"]["chunks"]
    for sc, (name, r) in [(scenario, item) for scenario in (single, burst)
                          for item in scenario["results"].items()]:
        assert r["ok"] == r["streams"] == sc["streams"] and r["errors"] == 0, (name, r)
        assert r["chunks_per_stream"] == {"min": chunks, "max": chunks}
        assert r["ttft_ms"]["p50"] > 0
        assert r["gap_ms"]["n"] == sc["streams"] * (chunks - 1)
        assert r["gap_ms"]["p50"] > 0 and r["jitter_ms"]["p99"] >= 0
        assert "added_jitter_p99_ms" in r


def test_targets_listed(smoke: dict[str, Any]) -> None:
    targets = smoke["targets"]
    assert {t["system"] for t in targets} == {"turnout-min", "turnout-full",
                                              "turnout-everything"}
    for t in targets:
        assert t["value"] is not None and isinstance(t["pass"], bool), t


def test_memory_probe(smoke: dict[str, Any]) -> None:
    (sc,) = _by_kind(smoke, "memory")
    for name, r in sc["results"].items():
        assert r["conns"] == sc["conns"] and r["streams"] == sc["streams"], name
        assert r["rss_base"] > 0 and r["rss_idle_conns"] > 0 and r["rss_streams"] > 0
        assert isinstance(r["bytes_per_idle_conn"], int)
        assert isinstance(r["bytes_per_stream"], int)


def test_goals_judged(smoke: dict[str, Any]) -> None:
    """Issue #22's goals for what the smoke ran (no c=16 there: those are n/a)."""
    rows = {(g["system"], g["goal"]): g for g in smoke["goals"]}
    assert rows[("turnout-everything", "c=16 ÷ floor")]["pass"] is None
    added = rows[("turnout-everything", "added P50 at c=1")]
    assert added["value"] is not None and isinstance(added["pass"], bool)
    assert added["steal_pct"] is not None
    coalesced = rows[("turnout-everything", "stream-c2: coalesced gaps")]
    assert isinstance(coalesced["pass"], bool)
    assert {s for s, g in rows if g.startswith("memory:")} == PROXIES


def test_every_request_of_the_everything_system_missed_the_cache(
        smoke: dict[str, Any]) -> None:
    """Its load numbered every prompt afresh (bench/bodies.py), so nothing was a hit: its
    access log (the run's log file) has no hit."""
    log = Path(smoke["meta"]["run_dir"]) / "logs" / "turnout-everything.log"
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    settled = [ln for ln in lines if "cache_hit" in ln]
    assert settled and not any(ln["cache_hit"] for ln in settled)


def test_systems_file_is_the_source(tmp_path: Path) -> None:
    from bench.systems import load_specs

    specs = load_specs(REPO / "bench" / "systems.yaml")
    kinds = {s.name: s.kind for s in specs}
    assert kinds["turnout-full"] == "turnout" and kinds["litellm"] == "litellm"
    bad = tmp_path / "systems.yaml"
    bad.write_text("systems:\n  - {name: x, kind: nginx}\n")
    with pytest.raises(ValueError, match="kind"):
        load_specs(bad)
