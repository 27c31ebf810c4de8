"""`python -m bench.routing_sim`: every routing policy on the same arrival trace, in a
discrete-event simulation driving the real policies and the real scoreboard.

The fleet: a self-hosted pool of two fast and two slow simulated vLLM replicas (cheap,
internal price) and two priced providers (a cheap one and a fast, dear one). Scenarios:

- `standard`: a load ramp from a third of the pool's capacity to about 1.6x of it and
  back, with an incident mid-run: the cheap provider turns 5x slower, then answers 503,
  then recovers.
- `shared-prefix`: steady load below the pool's capacity, each request's system prompt
  drawn from a small set, so a replica's prefix cache can serve it; it shows how much of
  the prompt the pool finds cached under each policy. Requests are a system prompt plus
  one question.
- `shared-prefix-fewshot`: the same, with a shared example exchange after the system
  prompt (a longer shared prefix).

Output: a table per scenario on the terminal, and `routing-<time>-<scenario>.json` and
`.png` under `--out` (default bench/results). `--failover` retries a failed attempt on
the plan's next candidate (dispatch makes one attempt today; failover lands later).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.routing_sim_model import (
    DispatchRules,
    Fleet,
    Incident,
    ProviderSpec,
    ReplicaSpec,
    simulate,
)
from bench.routing_sim_report import (
    Summary,
    dominates,
    offered_rps,
    plot,
    summarize,
    table,
    to_json,
)
from bench.routing_sim_trace import TraceRecord, Workload, generate, write_jsonl
from policies.routing import RoutingPolicy, make_policy
from policies.routing.latency import Latency
from policies.scoreboard import Scoreboard
from selfhost.sim_state import SimProfile

RESULTS = Path(__file__).resolve().parent / "results"

FAST = SimProfile("sim-fast-gpu", max_num_seqs=32, base_ttft_ms=30.0,
                  prefill_ms_per_token=0.1, itl_ms=12.0, jitter=0.1)
SLOW = SimProfile("sim-slow-gpu", max_num_seqs=16, base_ttft_ms=50.0,
                  prefill_ms_per_token=0.25, itl_ms=30.0, jitter=0.1)

# Weights are what an operator would configure for the weighted policy: roughly each
# deployment's share of capacity.
FLEET = Fleet(
    pool="local-gpu", pool_price_input=0.05, pool_price_output=0.10,
    replicas=(ReplicaSpec("fast-0", FAST, weight=5), ReplicaSpec("fast-1", FAST, weight=5),
              ReplicaSpec("slow-0", SLOW, weight=1), ReplicaSpec("slow-1", SLOW, weight=1)),
    providers=(
        ProviderSpec("cheap-api", ttft_median_ms=200, ttft_sigma=0.25,
                     prefill_ms_per_token=0.02, itl_ms=15, price_input=0.15,
                     price_output=0.60, weight=2),
        ProviderSpec("fast-api", ttft_median_ms=150, ttft_sigma=0.2, prefill_ms_per_token=0.01,
                     itl_ms=8, price_input=0.40, price_output=1.60, weight=2),
    ))


@dataclass(frozen=True, slots=True)
class PolicySpec:
    label: str
    name: str
    within_pool: str = "least-loaded"


POLICIES = (
    PolicySpec("slo-cost", "slo-cost"),
    PolicySpec("slo-cost+prefix", "slo-cost", "prefix-affinity"),
    PolicySpec("latency", "latency"),
    PolicySpec("least-loaded", "least-loaded"),
    PolicySpec("prefix-affinity", "prefix-affinity"),
    PolicySpec("weighted", "weighted"),
    PolicySpec("round-robin", "round-robin"),
)


@dataclass(frozen=True, slots=True)
class IncidentPlan:
    """An incident placed at fractions of the trace's span, so it fits any trace."""

    provider: str = "cheap-api"
    slow_from: float = 0.40
    error_from: float = 0.55
    until: float = 0.65
    slow_factor: float = 5.0

    def at(self, span_s: float) -> Incident:
        return Incident(self.provider, self.slow_from * span_s, self.error_from * span_s,
                        self.until * span_s, self.slow_factor)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A trace source, the fleet and its incident, dispatch's rules and the policies."""

    name: str
    workload: Workload | None  # None: the trace comes from elsewhere (a replay)
    incident: IncidentPlan | None
    rules: DispatchRules = field(default_factory=DispatchRules)
    fleet: Fleet = FLEET
    policies: tuple[PolicySpec, ...] = POLICIES


# Twelve 1500-token system prompts, while a replica's cache keeps six: only routing that
# keeps each prefix on one replica finds most of them cached.
_SHARED = Workload(base_rps=22.0, peak_rps=22.0, prompt_median=300.0, prefixes=12,
                   prefix_tokens=1500)
SCENARIOS = {
    "standard": Scenario("standard", Workload(), IncidentPlan()),
    "shared-prefix": Scenario("shared-prefix", _SHARED, None),
    "shared-prefix-fewshot": Scenario("shared-prefix-fewshot", _SHARED, None,
                                      DispatchRules(few_shot=True)),
}


def policy_factory(spec: PolicySpec, seed: int) -> Callable[[Scoreboard], RoutingPolicy]:
    if spec.name == "latency":  # make_policy gives it an unseeded RNG: seed it for replays
        return lambda board: Latency(board, random.Random(seed))
    return lambda board: make_policy(spec.name, board, spec.within_pool)


@dataclass(slots=True)
class Comparison:
    scenario: Scenario
    seed: int
    span_s: float
    incident: Incident | None
    summaries: list[Summary]
    offered: list[float]

    def meta(self) -> dict[str, Any]:
        rules = self.scenario.rules
        return {"scenario": self.scenario.name, "seed": self.seed, "span_s": self.span_s,
                "slo_ttft_ms": rules.slo.ttft_s * 1000, "slo_tpot_ms": rules.slo.tpot_s * 1000,
                "first_token_timeout_s": rules.first_token_timeout_s,
                "failover": rules.failover, "few_shot": rules.few_shot,
                "incident": asdict(self.incident) if self.incident else None,
                "fleet": asdict(self.scenario.fleet)}

    def to_json(self) -> dict[str, Any]:
        return to_json(self.meta(), self.summaries, self.offered)


def compare(scn: Scenario, trace: Sequence[TraceRecord], seed: int) -> Comparison:
    """Each policy on the same trace, fleet, incident and backend RNG seeds."""
    span = max((r.t for r in trace), default=0.0) or 1.0
    incident = scn.incident.at(span) if scn.incident else None
    summaries = []
    for spec in scn.policies:
        run = simulate(scn.fleet, trace, policy_factory(spec, seed), scn.rules, incident, seed)
        summaries.append(summarize(spec.label, run, scn.rules.slo, span, scn.fleet.pool))
    return Comparison(scn, seed, span, incident, summaries, offered_rps(trace, span))


def verdicts(summaries: Sequence[Summary]) -> list[str]:
    """The headline claims, checked: is the default Pareto-better than the naive policies,
    and does prefix affinity find more of the prompt cached than least-loaded?"""
    by = {s.policy: s for s in summaries}
    lines = []
    base = by.get("slo-cost")
    for other in ("round-robin", "least-loaded", "latency"):
        if base and other in by:
            ok = dominates(base, by[other])
            lines.append(f"slo-cost {'dominates' if ok else 'does NOT dominate'} {other} "
                         "on TTFT and e2e attainment and cost per token")
    for a, b in (("prefix-affinity", "least-loaded"), ("slo-cost+prefix", "slo-cost")):
        ha, hb = by.get(a), by.get(b)
        if ha and hb and ha.prefix_hit_rate is not None and hb.prefix_hit_rate is not None:
            lines.append(f"prefix hit rate: {a} {ha.prefix_hit_rate:.1%} vs {b} "
                         f"{hb.prefix_hit_rate:.1%}")
    return lines


def report(cmp: Comparison, out: Path | None, when: str, draw: bool = True) -> None:
    """Print the table and verdicts; write JSON (and the PNG) under `out` when given."""
    doc = cmp.to_json()
    print(f"\n## {cmp.scenario.name} (seed {cmp.seed}, {cmp.summaries[0].requests} requests"
          f" over {cmp.span_s:.0f}s)\n")
    print(table(cmp.summaries))
    for line in verdicts(cmp.summaries):
        print(f"- {line}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        base = out / f"routing-{when}-{cmp.scenario.name}"
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        if draw:
            plot(doc, base.with_suffix(".png"))
        print(f"\nwrote {base}.json" + (" and .png" if draw else ""))


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="seed of the backends' RNGs (and of "
                   "the generated trace)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="where routing-*.json and .png go (default bench/results)")
    p.add_argument("--failover", action="store_true",
                   help="retry a failed attempt on the plan's next candidate")
    p.add_argument("--few-shot", action="store_true",
                   help="shared prefix = system prompt + an example exchange")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")


def with_rules(scn: Scenario, args: argparse.Namespace) -> Scenario:
    """The command line's switches on top of the scenario's own rules."""
    rules = replace(scn.rules, failover=scn.rules.failover or args.failover,
                    few_shot=scn.rules.few_shot or args.few_shot)
    return replace(scn, rules=rules)


def stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--write-trace", type=Path, metavar="DIR",
                   help="also write each scenario's generated trace as JSONL into DIR")
    args = p.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    when = stamp()
    for name in names:
        scn = with_rules(SCENARIOS[name], args)
        assert scn.workload is not None
        trace = generate(scn.workload, args.seed)
        if args.write_trace:
            args.write_trace.mkdir(parents=True, exist_ok=True)
            write_jsonl(trace, args.write_trace / f"{name}-seed{args.seed}.jsonl")
        t0 = time.perf_counter()
        cmp = compare(scn, trace, args.seed)
        report(cmp, args.out, when, draw=not args.no_plot)
        print(f"({time.perf_counter() - t0:.1f}s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
