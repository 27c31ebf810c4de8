"""`python -m bench.routing_e2e`: the routing policies through the real gateway.

Each policy, in turn, gets fresh simulator processes and a fresh gateway (one worker,
the policy under test) and the same seeded open-loop streaming workload and fault
schedule: the pool's two vLLM replicas (`fast`, and `slow` at half its speed; the pool's
internal price) and a `cloud` provider at ten times the price. Phases: calm, a burst above
the pool's capacity, medium. Faults (`full`): the fast replica stopped (SIGSTOP) for 20 s
in the calm phase, a storm of 429s from the cloud during the burst, the fast replica 800
ms slower for 30 s and then killed and restarted 10 s later. TTFT is measured at the
client; cost from the gateway's ledger.

It complements `bench.routing_sim` (the real policies on simulated time, many seeds in
seconds): this proves the real system behaves the same, at the price of minutes per seed
(`full`: about 3.5 minutes per policy; `short`, what the test command runs: about a
minute for two policies).

Output: a table per seed on the terminal; `routing-e2e-<time>-<experiment>-seed<N>.json`
(summaries, and the raw rows in `...-rows.json`) and `.png` under `--out`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.routing_e2e_report import Summary, pareto_better, plot, summarize, table, to_json
from bench.routing_e2e_run import RunResult, run_policy
from bench.routing_e2e_spec import EXPERIMENTS, POLICIES, Experiment

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(exp: Experiment, seed: int, workdir: Path, counterfactual: bool = False
             ) -> tuple[list[Summary], list[RunResult]]:
    """`counterfactual`: each policy also runs the workload without the faults, which its
    post-incident cost is compared with (twice the time)."""
    runs = [run_policy(exp, policy, seed, workdir / f"{policy}-{seed}")
            for policy in exp.policies]
    calm = replace(exp, faults=())
    unfaulted = [run_policy(calm, policy, seed, workdir / f"{policy}-{seed}-unfaulted")
                 if counterfactual else None for policy in exp.policies]
    return [summarize(exp, r, u) for r, u in zip(runs, unfaulted, strict=True)], runs


def verdicts(summaries: Sequence[Summary]) -> list[str]:
    by = {s.policy: s for s in summaries}
    base = by.get("slo-cost")
    lines = []
    for other in ("latency", "least-loaded", "round-robin"):
        if base is not None and other in by:
            ok = pareto_better(base, by[other])
            lines.append(f"slo-cost is {'' if ok else 'NOT '}Pareto-better than {other}")
    return lines


def report(exp: Experiment, seed: int, summaries: Sequence[Summary], runs: Sequence[RunResult],
           out: Path | None, when: str, draw: bool) -> None:
    print(f"\n## {exp.name} (seed {seed}, {summaries[0].requests} requests over "
          f"{exp.duration_s:.0f}s, TTFT SLO {exp.slo_ttft_ms:.0f}ms)\n")
    print(table(summaries))
    for line in verdicts(summaries):
        print(f"- {line}")
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"routing-e2e-{when}-{exp.name}-seed{seed}"
    base.with_suffix(".json").write_text(json.dumps(to_json(exp, summaries), indent=1))
    Path(f"{base}-rows.json").write_text(json.dumps([r.to_json() for r in runs]))
    if draw:
        plot(exp, summaries, base.with_suffix(".png"),
             f"Turnout routing, end to end · {exp.name} · seed {seed} · "
             f"TTFT SLO {exp.slo_ttft_ms:.0f}ms")
    print(f"\nwrote {base}.json" + (" and .png" if draw else ""))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing_e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="full")
    p.add_argument("--seeds", default="1", help="comma-separated, e.g. 1,2,3")
    p.add_argument("--policies", default=None,
                   help=f"comma-separated subset of {','.join(POLICIES)}")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--counterfactual", action="store_true",
                   help="each policy also without the faults: post-incident cost against "
                        "the same requests unfaulted (twice the time)")
    args = p.parse_args(argv)
    exp = EXPERIMENTS[args.experiment]
    if args.policies:
        exp = replace(exp, policies=tuple(args.policies.split(",")))
    unknown = set(exp.policies) - set(POLICIES)
    if unknown:
        print(f"bench.routing_e2e: unknown policies {sorted(unknown)}", file=sys.stderr)
        return 2
    when = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="routing-e2e-") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            summaries, runs = run_seed(exp, seed, Path(tmp), args.counterfactual)
            report(exp, seed, summaries, runs, args.out, when, not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
