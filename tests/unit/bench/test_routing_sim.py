"""The routing simulation (bench/routing_sim*.py) and `python -m bench.replay`.

Behaviour assertions on a deterministic simulation: the same seed gives the same numbers,
so the headline comparisons below are facts about the policies, not timing luck.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench import replay
from bench.routing_sim import (
    SCENARIOS,
    Comparison,
    IncidentPlan,
    PolicySpec,
    Scenario,
    compare,
    policy_factory,
)
from bench.routing_sim_model import DispatchRules, simulate
from bench.routing_sim_report import Summary, dominates
from bench.routing_sim_trace import TraceRecord, Workload, generate, read_jsonl, write_jsonl
from policies.routing.slo_cost import PROBE_GAP_MAX_S

SAMPLE = Path(__file__).resolve().parents[3] / "bench" / "traces" / "sample.jsonl"
SMALL = Scenario("small", Workload(duration_s=30.0, base_rps=5.0, peak_rps=30.0),
                 IncidentPlan(), policies=(PolicySpec("slo-cost", "slo-cost"),
                                           PolicySpec("round-robin", "round-robin"),
                                           PolicySpec("latency", "latency")))


def _run(scn: Scenario, seed: int = 1) -> Comparison:
    assert scn.workload is not None
    return compare(scn, generate(scn.workload, seed), seed)


def _by(cmp: Comparison) -> dict[str, Summary]:
    return {s.policy: s for s in cmp.summaries}


def test_small_scenario_runs_end_to_end() -> None:
    cmp = _run(SMALL)
    assert [s.policy for s in cmp.summaries] == ["slo-cost", "round-robin", "latency"]
    for s in cmp.summaries:
        assert s.requests == cmp.summaries[0].requests > 100
        assert 0.0 <= s.ttft_attainment <= 1.0 and 0.0 <= s.e2e_attainment <= 1.0
        assert s.cost_per_1m_tokens > 0 and s.ttft_p50_ms <= s.ttft_p99_ms
        assert sum(s.by_deployment.values()) == s.requests
    # round-robin sends a sixth of the traffic to the provider that errors mid-run
    assert _by(cmp)["round-robin"].errors_by_reason.get("HTTP 503", 0) > 0
    assert json.dumps(cmp.to_json())  # serializable as is


def test_same_seed_same_results_other_seed_other_results() -> None:
    assert _run(SMALL).to_json() == _run(SMALL).to_json()
    assert _run(SMALL, seed=2).to_json() != _run(SMALL).to_json()


def test_every_attempt_is_reported_and_replicas_are_scraped() -> None:
    assert SMALL.workload is not None
    trace = generate(SMALL.workload, 1)
    rules = DispatchRules(failover=True)
    run = simulate(SMALL.fleet, trace, policy_factory(PolicySpec("rr", "round-robin"), 1),
                   rules, IncidentPlan().at(trace[-1].t), seed=1)
    stats = run.board.snapshot()
    assert all(s.in_flight == 0 for s in stats.values())  # started == succeeded + failed
    assert sum(s.requests for s in stats.values()) == sum(o.attempts for o in run.outcomes)
    assert stats["cheap-api"].failures > 0
    # failover: the 503s went on to the next candidate and every request was served
    assert all(o.error is None for o in run.outcomes)
    for dep_id in run.replicas:
        pool = stats[dep_id].pool
        assert not pool.stale and pool.scraped_at is not None and pool.scraped_at > 0


def test_a_written_trace_replays_the_run_it_came_from(tmp_path: Path) -> None:
    assert SMALL.workload is not None
    trace = generate(replace(SMALL.workload, prefixes=2, prefix_tokens=100), 3)
    path = tmp_path / "t.jsonl"
    write_jsonl(trace, path)
    assert read_jsonl(path) == trace
    assert compare(SMALL, read_jsonl(path), 3).to_json() == compare(SMALL, trace, 3).to_json()


def test_trace_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"t": 105, "prompt_tokens": 50, "output_tokens": 5, "prefix_id": "a"}\n'
                    '\n{"t": 100, "prompt_tokens": 80, "output_tokens": 0, "prefix_id": "a"}\n')
    assert read_jsonl(path) == [
        TraceRecord(0.0, 80, 1, "chat", "default", "a", 50),
        TraceRecord(5.0, 50, 5, "chat", "default", "a", 50),
    ]


def _replay(args: list[str]) -> int:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return replay.run_cli(parser.parse_args(args))


def test_replay_of_the_sample_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay([str(SAMPLE), "--no-plot", "--out", str(tmp_path),
                    "--policies", "slo-cost,round-robin"]) == 0
    assert "| slo-cost " in capsys.readouterr().out
    [doc_path] = tmp_path.glob("routing-*-replay-sample.json")
    doc = json.loads(doc_path.read_text())
    assert [p["policy"] for p in doc["policies"]] == ["slo-cost", "round-robin"]
    assert doc["policies"][0]["requests"] == len(read_jsonl(SAMPLE))
    assert doc["meta"]["incident"] is not None
    assert not list(tmp_path.glob("*.png"))


def test_replay_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert _replay([str(SAMPLE), "--out", str(tmp_path), "--no-incident",
                    "--policies", "slo-cost"]) == 0
    [png] = tmp_path.glob("routing-*-replay-sample.png")
    assert png.stat().st_size > 10_000


def test_replay_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "prompt_tokens": 10}\n')
    assert _replay([str(bad), "--no-plot", "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert _replay([str(SAMPLE), "--policies", "nope", "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------
# Headline results on the standard scenarios (seed 1; the Pareto claim on seeds 1-5 too)


NAIVE = ("round-robin", "least-loaded", "latency")


def _standard(seed: int) -> dict[str, Summary]:
    scn = SCENARIOS["standard"]
    keep = {"slo-cost", *NAIVE}
    return _by(_run(replace(scn, policies=tuple(p for p in scn.policies if p.label in keep)),
                    seed))


@pytest.fixture(scope="module")
def standard() -> dict[str, Summary]:
    return _standard(1)


@pytest.fixture(scope="module")
def shared_prefix() -> dict[str, dict[str, Summary]]:
    keep = ("least-loaded", "prefix-affinity", "slo-cost", "slo-cost+prefix")
    out = {}
    for name in ("shared-prefix", "shared-prefix-fewshot"):
        scn = SCENARIOS[name]
        out[name] = _by(_run(replace(scn, policies=tuple(p for p in scn.policies
                                                          if p.label in keep))))
    return out


@pytest.mark.parametrize("other", NAIVE)
def test_slo_cost_attains_more_and_rides_out_the_incident(standard: dict[str, Summary],
                                                          other: str) -> None:
    best, worse = standard["slo-cost"], standard[other]
    assert best.ttft_attainment >= worse.ttft_attainment + 0.05
    assert best.e2e_attainment >= worse.e2e_attainment
    assert best.goodput_rps > worse.goodput_rps
    # It steered clear of the erroring provider but for its probes, one every 2 s at most
    # while they fail (the simulation has no failover: each is an error here).
    inc = IncidentPlan()
    error_span = (inc.until - inc.error_from) * max(r.t for r in generate(
        SCENARIOS["standard"].workload or Workload(), 1))
    assert best.errors_by_reason.keys() <= {"HTTP 503"}
    assert best.errors <= math.ceil(error_span / PROBE_GAP_MAX_S) + 3 < worse.errors


@pytest.mark.parametrize("other", NAIVE)
def test_slo_cost_is_pareto_better(standard: dict[str, Summary], other: str) -> None:
    assert dominates(standard["slo-cost"], standard[other])


def test_slo_cost_fills_the_pool_before_paying(standard: dict[str, Summary]) -> None:
    # Round-robin's cost per token is low partly because a third of its traffic times
    # out on the slow replicas (failed requests cost nothing); slo-cost still costs less,
    # by filling the pool up to what meets the SLO instead of spilling early.
    best, rr = standard["slo-cost"], standard["round-robin"]
    assert best.ttft_attainment >= rr.ttft_attainment + 0.3
    assert best.cost_per_1m_tokens < rr.cost_per_1m_tokens
    assert best.pool_share > 0.7


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_slo_cost_is_pareto_better_on_other_seeds(seed: int) -> None:
    by = _standard(seed)
    for other in NAIVE:
        assert dominates(by["slo-cost"], by[other]), other


def test_prefix_affinity_raises_the_hit_rate_when_its_key_sees_the_prefix(
        shared_prefix: dict[str, dict[str, Summary]]) -> None:
    by = shared_prefix["shared-prefix-fewshot"]
    pa, ll = by["prefix-affinity"].prefix_hit_rate, by["least-loaded"].prefix_hit_rate
    assert pa is not None and ll is not None and pa >= ll + 0.2


def test_prefix_affinity_raises_the_hit_rate_for_a_shared_system_prompt(
        shared_prefix: dict[str, dict[str, Summary]]) -> None:
    by = shared_prefix["shared-prefix"]
    pa, ll = by["prefix-affinity"].prefix_hit_rate, by["least-loaded"].prefix_hit_rate
    assert pa is not None and ll is not None and pa >= ll + 0.2
    # ...and as slo-cost's within-pool step, where the default config uses it.
    within, plain = by["slo-cost+prefix"].prefix_hit_rate, by["slo-cost"].prefix_hit_rate
    assert within is not None and plain is not None and within >= plain + 0.15
