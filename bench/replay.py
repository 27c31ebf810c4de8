"""`python -m bench.replay TRACE.jsonl`: the routing simulation's policy comparison on a recorded
trace instead of a generated one.

The trace (see `bench/routing_sim_trace.py`) gives each request's arrival time, prompt and
output lengths, model, team and optional shared-prefix id; every policy routes the same
arrivals over the simulated fleet of `bench/routing_sim.py` (two fast and two slow vLLM
replicas, a cheap and a fast provider), with the same provider incident placed at the
same fractions of the trace's span unless `--no-incident`. Every model in the trace is
served by that one fleet.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from bench.routing_sim import (
    POLICIES,
    IncidentPlan,
    Scenario,
    add_common,
    compare,
    report,
    stamp,
    with_rules,
)
from bench.routing_sim_model import DispatchRules, Slo
from bench.routing_sim_trace import TraceError, read_jsonl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, help="JSONL: one request per line with t, "
                        "prompt_tokens, output_tokens, model, team and optional prefix_id")
    add_common(parser)
    parser.add_argument("--no-incident", action="store_true",
                        help="leave out the provider incident")
    parser.add_argument("--speedup", type=float, default=1.0,
                        help="compress time by this factor (2: twice the request rate)")
    parser.add_argument("--slo-ttft-ms", type=float, default=Slo().ttft_s * 1000,
                        help="the TTFT every request must meet (default %(default)g)")
    parser.add_argument("--policies", default=",".join(p.label for p in POLICIES),
                        help="comma-separated subset of: %(default)s")


def _usage_error(message: str) -> int:
    print(f"bench.replay: {message}", file=sys.stderr)
    return 2


def run_cli(args: argparse.Namespace) -> int:
    try:
        trace = read_jsonl(args.trace)
    except (OSError, TraceError) as err:
        return _usage_error(str(err))
    if not trace:
        return _usage_error(f"{args.trace} holds no requests")
    if args.speedup <= 0:
        return _usage_error("--speedup must be positive")
    wanted = [name.strip() for name in args.policies.split(",") if name.strip()]
    policies = tuple(p for p in POLICIES if p.label in wanted)
    unknown = sorted(set(wanted) - {p.label for p in policies})
    if unknown or not policies:
        return _usage_error(f"unknown policies {unknown}; choose from "
                            f"{', '.join(p.label for p in POLICIES)}")
    trace = [replace(r, t=r.t / args.speedup) for r in trace]
    rules = DispatchRules(slo=Slo(ttft_s=args.slo_ttft_ms / 1000))
    scn = with_rules(Scenario(f"replay-{args.trace.stem}", None,
                              None if args.no_incident else IncidentPlan(), rules,
                              policies=policies), args)
    models = sorted({r.model for r in trace})
    print(f"{args.trace}: {len(trace)} requests over {trace[-1].t:.0f}s, models "
          f"{', '.join(models)} (all served by the simulated fleet)")
    report(compare(scn, trace, args.seed), args.out, stamp(), draw=not args.no_plot)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_cli(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
