"""Figures of the end-to-end routing experiment, from what the client saw and the ledger.

Definitions. Attainment: requests answered 200 whose first content chunk came within the
SLO of their intended send time, over all requests (an error is a miss). TTFT
percentiles: over requests that got a first chunk. Cost per 1M tokens: the ledger's cost
over its prompt and completion tokens. Timeline: per `bin_s` of intended send times,
each upstream's share of requests, attainment and cost per 1M tokens.

After each fault on a pool replica: **recovery** is the time from the replica being well
again (the fault's end; for a kill, its restarted process answering `/health`) until the
pool's share of traffic (over `RECOVERY_WINDOW_S` of arrivals) is back within
`RECOVERY_TOLERANCE` of its share in the `PRE_S` before the fault; **post cost** is the
cost per 1M tokens of requests sent in the `POST_S` after that (or until the next fault)
over that of the calm phase away from any fault, over that of the quiet part of the
phase the fault ended in (no fault nor the wake of one: the same load), and, given a run
of the same workload without faults (`--counterfactual`), over that of the same requests
there: what the fault itself left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.routing_e2e_run import Row, RunResult
from bench.routing_e2e_spec import Experiment
from bench.stats import percentile

PRE_S = 15.0
POST_S = 30.0
RECOVERY_WINDOW_S = 2.0
RECOVERY_STEP_S = 0.5
RECOVERY_TOLERANCE = 0.05
QUIET_AFTER_S = 10.0  # a fault's wake: requests this soon after its end are not "quiet"


@dataclass(slots=True)
class Incident:
    label: str
    pre_pool_share: float | None
    recovery_s: float | None  # None: not back within the time measured
    measured_s: float  # how long after the fault's end was looked at
    post_cost_ratio: float | None  # post-incident cost per token / calm cost per token
    post_cost_vs_phase: float | None  # ... / its phase's quiet cost per token
    post_cost_vs_unfaulted: float | None = None  # ... / the same window's with no fault


@dataclass(slots=True)
class Summary:
    policy: str
    seed: int
    requests: int
    attainment: float
    cost_per_1m: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int
    shares: dict[str, float]
    phases: dict[str, dict[str, float]]
    incidents: list[Incident]
    timeline: dict[str, list[float]] = field(default_factory=dict)


def _ok(r: Row, slo_s: float) -> bool:
    return r.status == 200 and r.ttft is not None and r.ttft <= slo_s and r.error is None


def _cost_per_1m(rows: Sequence[Row]) -> float | None:
    tokens = sum(r.tokens for r in rows)
    return sum(r.cost_usd for r in rows) / tokens * 1e6 if tokens else None


def _share(rows: Sequence[Row], names: set[str]) -> float | None:
    return sum(r.where in names for r in rows) / len(rows) if rows else None


def _between(rows: Sequence[Row], start: float, end: float) -> list[Row]:
    return [r for r in rows if start <= r.t < end]


def _figures(rows: Sequence[Row], slo_s: float, upstreams: Sequence[str], prefix: str = ""
             ) -> dict[str, float]:
    n = max(1, len(rows))
    out = {f"{prefix}requests": float(len(rows)),
           f"{prefix}attainment": sum(_ok(r, slo_s) for r in rows) / n,
           f"{prefix}cost_per_1m": _cost_per_1m(rows) or 0.0}
    out.update({f"{prefix}share_{u}": sum(r.where == u for r in rows) / n for u in upstreams})
    return out


def _phase(exp: Experiment, rows: Sequence[Row], slo_s: float, upstreams: Sequence[str]
           ) -> dict[str, float]:
    """The phase's figures, and the same over its quiet part (no fault, nor the wake of
    one), where a policy shows how it routes when nothing is wrong."""
    quiet = _quiet(exp, rows, QUIET_AFTER_S)
    return {**_figures(rows, slo_s, upstreams), **_figures(quiet, slo_s, upstreams, "quiet_")}


def _quiet(exp: Experiment, rows: Sequence[Row], after_s: float) -> list[Row]:
    """The requests sent neither during a fault nor within `after_s` of its end."""
    return [r for r in rows if not any(f.start <= r.t < f.end + after_s for f in exp.faults)]


def _quiet_cost(exp: Experiment, rows: Sequence[Row], t: float) -> float | None:
    """Cost per 1M tokens of the quiet part of the phase `t` falls in."""
    for _, start, end in exp.phase_spans():
        if start <= t < end:
            return _cost_per_1m(_quiet(exp, _between(rows, start, end), QUIET_AFTER_S))
    return None


def _incidents(exp: Experiment, rows: Sequence[Row], recovered: dict[str, float],
               unfaulted: Sequence[Row] | None) -> list[Incident]:
    pool = {u.name for u in exp.upstreams if u.pool}
    calm = _quiet_cost(exp, rows, 0.0)
    out = []
    for f in exp.faults:
        if f.target not in pool:
            continue
        well = recovered.get(f.label, f.end)
        pre = _share(_between(rows, f.start - PRE_S, f.start), pool)
        later = [g.start for g in exp.faults if g.start >= f.end]
        horizon = min([well + POST_S, exp.duration_s, *later])
        recovery = None
        t = well
        while pre is not None and t + RECOVERY_WINDOW_S <= horizon + 1e-9:
            got = _share(_between(rows, t, t + RECOVERY_WINDOW_S), pool)
            if got is not None and got >= pre - RECOVERY_TOLERANCE:
                recovery = t - well
                break
            t += RECOVERY_STEP_S
        post = _cost_per_1m(_between(rows, well, horizon))
        phase = _quiet_cost(exp, rows, well)
        same = _cost_per_1m(_between(unfaulted, well, horizon)) if unfaulted else None
        out.append(Incident(f.label, pre, recovery, horizon - well,
                            post / calm if post is not None and calm else None,
                            post / phase if post is not None and phase else None,
                            post / same if post is not None and same else None))
    return out


def _timeline(exp: Experiment, rows: Sequence[Row], upstreams: Sequence[str]
              ) -> dict[str, list[float]]:
    bins = int(exp.duration_s // exp.bin_s) + 1
    grouped: list[list[Row]] = [[] for _ in range(bins)]
    for r in rows:
        grouped[min(bins - 1, int(r.t // exp.bin_s))].append(r)
    slo_s = exp.slo_ttft_ms / 1000
    out: dict[str, list[float]] = {"attainment": [], "cost_per_1m": []}
    out.update({f"share_{u}": [] for u in upstreams})
    for group in grouped:
        n = max(1, len(group))
        out["attainment"].append(sum(_ok(r, slo_s) for r in group) / n if group else 1.0)
        out["cost_per_1m"].append(_cost_per_1m(group) or 0.0)
        for u in upstreams:
            out[f"share_{u}"].append(sum(r.where == u for r in group) / n)
    return out


def summarize(exp: Experiment, run: RunResult, unfaulted: RunResult | None = None) -> Summary:
    """`unfaulted`: the same policy, seed and workload without the faults."""
    rows, slo_s = run.rows, exp.slo_ttft_ms / 1000
    upstreams = [u.name for u in exp.upstreams]
    ttfts = sorted(r.ttft for r in rows if r.ttft is not None)
    n = max(1, len(rows))
    phases = {name: _phase(exp, _between(rows, start, end), slo_s, upstreams)
              for name, start, end in exp.phase_spans()}
    return Summary(
        policy=run.policy, seed=run.seed, requests=len(rows),
        attainment=sum(_ok(r, slo_s) for r in rows) / n,
        cost_per_1m=_cost_per_1m(rows) or 0.0,
        ttft_p50_ms=percentile(ttfts, 50) * 1000, ttft_p99_ms=percentile(ttfts, 99) * 1000,
        errors=sum(r.status != 200 or r.error is not None for r in rows),
        shares={u: sum(r.where == u for r in rows) / n for u in upstreams},
        phases=phases, incidents=_incidents(exp, rows, run.recovered,
                                           unfaulted.rows if unfaulted else None),
        timeline=_timeline(exp, rows, upstreams))


def pareto_better(a: Summary, b: Summary) -> bool:
    """`a` attains at least as much as `b` at no higher cost per token."""
    return a.attainment >= b.attainment and a.cost_per_1m <= b.cost_per_1m


def _recovery(inc: Incident) -> str:
    return f"{inc.recovery_s:.1f}s" if inc.recovery_s is not None else f">{inc.measured_s:.0f}s"


def table(summaries: Sequence[Summary]) -> str:
    """Markdown: one row per policy; recovery and post-incident cost per fault."""
    labels = [i.label for i in summaries[0].incidents] if summaries else []
    phases = list(summaries[0].phases) if summaries else []
    head = ["policy", "attainment", "$/1M tok", "P50 TTFT", "P99 TTFT", "errors", "on cloud",
            f"quiet on cloud ({'/'.join(phases)})",
            *(f"{lab}: back / cost vs calm, phase, no fault" for lab in labels)]
    rows = [head]
    for s in summaries:
        cells = [s.policy, f"{s.attainment:.1%}", f"{s.cost_per_1m:.4f}",
                 f"{s.ttft_p50_ms:.0f}ms", f"{s.ttft_p99_ms:.0f}ms", str(s.errors),
                 f"{s.shares.get('cloud', 0.0):.1%}",
                 " / ".join(f"{p.get('quiet_share_cloud', 0.0):.1%}" for p in s.phases.values())]
        for inc in s.incidents:
            ratios = [f"{r:.2f}x" if r is not None else "-"
                      for r in (inc.post_cost_ratio, inc.post_cost_vs_phase,
                                inc.post_cost_vs_unfaulted)]
            cells.append(f"{_recovery(inc)} / {', '.join(ratios)}")
        rows.append(cells)
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:])])


def plot(exp: Experiment, summaries: Sequence[Summary], out: Path, title: str) -> None:
    """Per policy (rows): traffic share per upstream over time, attainment, cost per 1M
    tokens; faults shaded, phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    upstreams = [u.name for u in exp.upstreams]
    fig, axes = plt.subplots(len(summaries), 3, figsize=(17, 3.1 * len(summaries)),
                             squeeze=False)
    fig.suptitle(title, fontsize=11)
    for row, s in zip(axes, summaries, strict=True):
        tl = s.timeline
        xs = [i * exp.bin_s for i in range(len(tl["attainment"]))]
        row[0].stackplot(xs, *[tl[f"share_{u}"] for u in upstreams], labels=upstreams,
                         step="post", alpha=0.8)
        row[0].set_ylabel(f"{s.policy}\nshare of requests")
        row[1].step(xs, tl["attainment"], where="post", lw=1)
        row[1].set_ylim(0, 1.05)
        row[1].set_ylabel(f"TTFT attainment\n(all: {s.attainment:.1%})")
        row[2].step(xs, tl["cost_per_1m"], where="post", lw=1, color="tab:red")
        row[2].set_ylabel(f"$ per 1M tokens\n(all: {s.cost_per_1m:.3f})")
        for ax in row:
            for f in exp.faults:
                ax.axvspan(f.start, f.end, color="grey", alpha=0.18)
            for _, start, _end in exp.phase_spans()[1:]:
                ax.axvline(start, color="black", lw=0.6, ls=":")
            ax.set_xlim(0, exp.duration_s)
    axes[0][0].legend(fontsize=7, loc="lower left")
    for ax in axes[-1]:
        ax.set_xlabel("intended send time (s)")
    faults = "; ".join(f.label for f in exp.faults)
    phases = ", ".join(f"{p.name} {p.rps:g} req/s for {p.seconds:g}s" for p in exp.phases)
    fig.text(0.5, 0.005, f"shaded: {faults}. phases: {phases}", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def to_json(exp: Experiment, summaries: Sequence[Summary]) -> dict[str, Any]:
    return {"experiment": asdict(exp), "summaries": [asdict(s) for s in summaries]}
