"""The end-to-end routing experiment's pure parts (bench/routing_e2e_spec.py and
_report.py): the seeded workload, the gateway config it runs under, and how recovery and
post-incident cost are read from what the client saw. The experiment itself runs in
tests/e2e/test_routing_e2e_experiment.py."""

from __future__ import annotations

from dataclasses import replace

from bench.routing_e2e_report import summarize, table
from bench.routing_e2e_run import Row, RunResult
from bench.routing_e2e_spec import (
    FULL,
    SHORT,
    Experiment,
    Fault,
    Phase,
    gateway_config,
    prompt_text,
    workload,
)
from gateway.config import parse_config
from policies.pricing import prompt_tokens


def test_the_workload_is_the_seeds() -> None:
    assert workload(FULL, 1) == workload(FULL, 1) != workload(FULL, 2)
    reqs = workload(SHORT, 1)
    calm, burst, medium = SHORT.phase_spans()
    for (_, start, end), phase in zip((calm, burst, medium), SHORT.phases, strict=True):
        n = sum(start <= r.t < end for r in reqs)
        assert 0.6 * phase.rps * phase.seconds < n < 1.4 * phase.rps * phase.seconds
    assert all(1 <= r.output_tokens <= SHORT.output_max for r in reqs)


def test_a_prompt_is_about_its_size_to_the_simulator_and_the_gateway() -> None:
    req = workload(SHORT, 1)[0]
    text = prompt_text(req, 1)
    assert len(text.split()) == req.prompt_tokens  # the simulator counts words
    body = {"messages": [{"role": "user", "content": text}]}
    assert abs(prompt_tokens("chat", body) - req.prompt_tokens) <= 0.1 * req.prompt_tokens + 8
    assert prompt_text(req, 2) != text  # nothing shared across seeds or requests


def test_the_config_is_valid_and_names_the_policy() -> None:
    urls = {u.name: f"http://127.0.0.1:{9000 + i}" for i, u in enumerate(FULL.upstreams)}
    cfg = parse_config(gateway_config(FULL, urls, "least-loaded", "0123456789abcdef" * 3,
                                      "tk-" + "c" * 40))
    assert cfg.routing.policy == "least-loaded" and cfg.routing.slo_ttft_ms == 500
    assert cfg.pools[0].max_num_seqs == 16
    assert cfg.pools[0].endpoints == [urls["fast"], urls["slow"]]
    assert [p.name for p in cfg.providers] == ["cloud"]


EXP = Experiment("t", phases=(Phase("calm", 40.0, 10.0), Phase("medium", 20.0, 10.0)),
                 faults=(Fault("stop", "fast", 10.0, 20.0),), bin_s=1.0)


def _rows(cloud_until: float) -> list[Row]:
    """A request every 0.1 s of 1,000 tokens: on the pool but from the fault until
    `cloud_until`; the pool costs 0.05 per 1M tokens, the cloud 0.5."""
    rows = []
    for i in range(600):
        t = i / 10
        cloud = 10.0 <= t < cloud_until
        rows.append(Row(t, 900, 100, 200, "cloud" if cloud else "fast", ttft=0.2, e2e=1.0,
                        cost_usd=(5e-4 if cloud else 5e-5), tokens=1000))
    return rows


def test_recovery_and_post_incident_cost() -> None:
    run = RunResult("slo-cost", 1, _rows(21.5), 600, 1.0, "", {"stop fast 10-20s": 20.0})
    s = summarize(EXP, run)
    [inc] = s.incidents
    assert inc.pre_pool_share == 1.0 and inc.recovery_s == 1.5
    # 15 of the 300 requests in the 30 s after it went at ten times the price
    assert inc.post_cost_ratio is not None and abs(inc.post_cost_ratio - 1.45) < 1e-9
    assert s.phases["calm"]["quiet_share_cloud"] == 0.0
    assert "1.5s / 1.45x" in table([s])
    late = summarize(EXP, replace(run, rows=_rows(60.0)))
    assert late.incidents[0].recovery_s is None and "stop fast 10-20s" in table([late])
    restarted = summarize(EXP, replace(run, recovered={"stop fast 10-20s": 21.5}))
    assert restarted.incidents[0].recovery_s == 0.0  # measured from when it was well again


def test_post_incident_cost_against_the_same_requests_unfaulted() -> None:
    # Without the fault the same window sends 5 of its 300 requests to the cloud (the
    # load's own spill): the fault's run, 15 there, costs 1.45x calm but 1.45 / 1.15 of
    # the same requests unfaulted.
    run = RunResult("slo-cost", 1, _rows(21.5), 600, 1.0, "", {"stop fast 10-20s": 20.0})
    unfaulted = replace(run, rows=[replace(r, where="cloud", cost_usd=5e-4)
                                   if 20.0 <= r.t < 20.5 else r for r in _rows(0.0)])
    [inc] = summarize(EXP, run, unfaulted).incidents
    assert inc.post_cost_vs_unfaulted is not None
    assert abs(inc.post_cost_vs_unfaulted - 1.45 / 1.15) < 1e-9
    assert summarize(EXP, run).incidents[0].post_cost_vs_unfaulted is None
