"""The end-to-end routing experiment's short mode (`python -m bench.routing_e2e
--experiment short`): slo-cost and round-robin through a real gateway, in front of
simulator processes (a fast and a slow replica, a cloud provider at ten times the price),
on the same seeded open-loop streaming workload with the fast replica stopped (SIGSTOP)
for 5 s. About a minute.

What it holds to is behaviour with margins that a loaded 2-core machine keeps: every
request answered, the ledger's one event per answer, slo-cost attaining at least as much
as round-robin at a lower cost per token, and the pool back to its share of traffic
within 5 s of the stopped replica's return (it takes about one recheck, 0.25 s).
"""

from __future__ import annotations

from pathlib import Path

from bench.routing_e2e import run_seed
from bench.routing_e2e_spec import SHORT


def test_short_experiment(tmp_path: Path) -> None:
    summaries, runs = run_seed(SHORT, 1, tmp_path)
    by = {s.policy: s for s in summaries}
    slo, rr = by["slo-cost"], by["round-robin"]
    for run in runs:
        answered = [r for r in run.rows if r.status == 200]
        assert run.events == len(answered), run.policy  # one usage event per answer
        assert all(r.tokens > 0 and r.cost_usd > 0 for r in answered), run.policy
    assert slo.errors == 0  # what reached the stopped replica failed over or waited
    assert slo.cost_per_1m < rr.cost_per_1m
    assert slo.attainment >= rr.attainment
    [stop] = slo.incidents
    assert stop.recovery_s is not None and stop.recovery_s <= 5.0, stop
