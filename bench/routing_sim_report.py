"""Per-policy figures from a routing simulation's outcomes: the summary, a terminal table,
the JSON document and the PNG.

Definitions. Attainment counts every request of the trace, so an error is a miss. TTFT
percentiles are over the requests that got a first token (errors are counted apart).
Goodput: requests meeting both SLOs per second of the trace. Cost per 1M tokens: total
cost over the prompt and output tokens of completed requests. Prefix-cache hit rate:
cached prompt tokens over prompt tokens at the pool's replicas (vLLM's definition).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.routing_sim_model import Outcome, RunOutput, Slo
from bench.routing_sim_trace import TraceRecord
from bench.stats import percentile

BIN_S = 10.0  # width of a timeline bin


@dataclass(slots=True)
class Summary:
    policy: str
    requests: int
    ttft_attainment: float
    e2e_attainment: float
    goodput_rps: float
    cost_per_1m_tokens: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int
    prefix_hit_rate: float | None
    pool_share: float
    attempts: int
    by_deployment: dict[str, int]
    errors_by_reason: dict[str, int]
    teams: dict[str, dict[str, float]]
    timeline: list[float]  # TTFT attainment per BIN_S of arrivals


def _meets(o: Outcome, slo: Slo) -> tuple[bool, bool]:
    ttft_ok = o.ttft is not None and o.ttft <= slo.ttft_s
    e2e_ok = o.e2e is not None and o.e2e <= slo.e2e_s(o.rec.output_tokens)
    return ttft_ok, e2e_ok


def summarize(policy: str, run: RunOutput, slo: Slo, span_s: float, pool: str) -> Summary:
    outs = run.outcomes
    n = max(1, len(outs))
    met = [_meets(o, slo) for o in outs]
    good = sum(t and e for t, e in met)
    ttfts = sorted(o.ttft for o in outs if o.ttft is not None)
    done = [o for o in outs if o.error is None]
    tokens = sum(o.rec.prompt_tokens + o.rec.output_tokens for o in done)
    hits = sum(r.prefix_hits for r in run.replicas.values())
    queries = sum(r.prefix_queries for r in run.replicas.values())
    where = Counter(o.deployment or "-" for o in outs)
    return Summary(
        policy=policy, requests=len(outs),
        ttft_attainment=sum(t for t, _ in met) / n,
        e2e_attainment=sum(e for _, e in met) / n,
        goodput_rps=good / span_s,
        cost_per_1m_tokens=sum(o.cost_usd for o in done) / tokens * 1e6 if tokens else 0.0,
        ttft_p50_ms=percentile(ttfts, 50) * 1000, ttft_p99_ms=percentile(ttfts, 99) * 1000,
        errors=len(outs) - len(done),
        prefix_hit_rate=hits / queries if queries and any(o.rec.prefix_id for o in outs)
        else None,
        pool_share=sum(c for d, c in where.items() if d.startswith(f"{pool}/")) / n,
        attempts=sum(o.attempts for o in outs),
        by_deployment=dict(sorted(where.items())),
        errors_by_reason=dict(Counter(o.error for o in outs if o.error is not None)),
        teams=_teams(outs, met), timeline=_timeline(outs, met, span_s))


def _teams(outs: Sequence[Outcome], met: Sequence[tuple[bool, bool]]
           ) -> dict[str, dict[str, float]]:
    teams: dict[str, dict[str, float]] = {}
    for o, (ttft_ok, _) in zip(outs, met, strict=True):
        t = teams.setdefault(o.rec.team, {"requests": 0, "ttft_met": 0, "cost_usd": 0.0})
        t["requests"] += 1
        t["ttft_met"] += ttft_ok
        t["cost_usd"] += o.cost_usd
    for t in teams.values():
        t["ttft_attainment"] = t.pop("ttft_met") / t["requests"]
    return dict(sorted(teams.items()))


def _bins(span_s: float) -> int:
    return int(span_s // BIN_S) + 1


def _bin(t: float, bins: int) -> int:
    return min(bins - 1, int(t // BIN_S))


def _timeline(outs: Sequence[Outcome], met: Sequence[tuple[bool, bool]], span_s: float
              ) -> list[float]:
    bins = _bins(span_s)
    total, ok = [0] * bins, [0] * bins
    for o, (ttft_ok, _) in zip(outs, met, strict=True):
        b = _bin(o.rec.t, bins)
        total[b] += 1
        ok[b] += ttft_ok
    return [round(k / t, 4) if t else 1.0 for k, t in zip(ok, total, strict=True)]


def offered_rps(trace: Sequence[TraceRecord], span_s: float) -> list[float]:
    counts = [0] * _bins(span_s)
    for r in trace:
        counts[_bin(r.t, len(counts))] += 1
    return [c / BIN_S for c in counts]


# ---------------------------------------------------------------------------------------------
# Output


_COLUMNS = (
    ("policy", "policy", "{}"),
    ("TTFT att", "ttft_attainment", "{:.1%}"),
    ("e2e att", "e2e_attainment", "{:.1%}"),
    ("goodput/s", "goodput_rps", "{:.2f}"),
    ("$/1M tok", "cost_per_1m_tokens", "{:.4f}"),
    ("P50 TTFT", "ttft_p50_ms", "{:.0f}ms"),
    ("P99 TTFT", "ttft_p99_ms", "{:.0f}ms"),
    ("errors", "errors", "{}"),
    ("prefix hit", "prefix_hit_rate", "{:.1%}"),
    ("on pool", "pool_share", "{:.1%}"),
)


def table(summaries: Sequence[Summary]) -> str:
    """A Markdown table (it reads fine on a terminal too)."""
    rows = [[head for head, _, _ in _COLUMNS]]
    for s in summaries:
        values = asdict(s)
        rows.append(["-" if values[key] is None else fmt.format(values[key])
                     for _, key, fmt in _COLUMNS])
    widths = [max(len(r[c]) for r in rows) for c in range(len(_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:])])


def dominates(a: Summary, b: Summary) -> bool:
    """`a` is at least as good as `b` on TTFT and e2e attainment and on cost per token."""
    return (a.ttft_attainment >= b.ttft_attainment and a.e2e_attainment >= b.e2e_attainment
            and a.cost_per_1m_tokens <= b.cost_per_1m_tokens)


def to_json(meta: dict[str, Any], summaries: Sequence[Summary], offered: Sequence[float]
            ) -> dict[str, Any]:
    return {"meta": meta, "bin_s": BIN_S, "offered_rps": list(offered),
            "policies": [asdict(s) for s in summaries]}


def plot(doc: dict[str, Any], out: Path) -> None:
    """Attainment over time against the offered load, attainment vs cost, TTFT
    percentiles and where traffic went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = doc["policies"]
    names = [p["policy"] for p in pols]
    meta = doc["meta"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    fig.suptitle(f"Turnout routing simulation · {meta['scenario']} · seed {meta['seed']}"
                 f" · TTFT SLO {meta['slo_ttft_ms']:.0f}ms", fontsize=11)

    ax = axes[0][0]
    xs = [i * doc["bin_s"] for i in range(len(doc["offered_rps"]))]
    for p in pols:
        ax.plot(xs, p["timeline"], label=p["policy"], lw=1.2)
    ax.set_ylabel("TTFT attainment")
    ax.set_xlabel("arrival time (s)")
    ax2 = ax.twinx()
    ax2.fill_between(xs, doc["offered_rps"], color="grey", alpha=0.15, step="post")
    ax2.set_ylabel("offered load (req/s)")
    title = "TTFT attainment over time"
    if meta.get("incident"):
        inc = meta["incident"]
        ax.axvspan(inc["slow_from"], inc["error_from"], color="orange", alpha=0.15)
        ax.axvspan(inc["error_from"], inc["until"], color="red", alpha=0.15)
        title += f" (orange: {inc['provider']} {inc['slow_factor']:g}x slower, red: 503s)"
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[0][1]
    for p in pols:
        ax.scatter(p["cost_per_1m_tokens"], p["ttft_attainment"], s=40)
        ax.annotate(p["policy"], (p["cost_per_1m_tokens"], p["ttft_attainment"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("cost per 1M tokens (USD)")
    ax.set_ylabel("TTFT attainment")
    ax.set_title("Attainment vs cost (up and left is better)")

    ax = axes[1][0]
    idx = range(len(pols))
    ax.bar([i - 0.2 for i in idx], [p["ttft_p50_ms"] for p in pols], 0.4, label="P50")
    ax.bar([i + 0.2 for i in idx], [p["ttft_p99_ms"] for p in pols], 0.4, label="P99")
    ax.axhline(meta["slo_ttft_ms"], color="red", lw=0.8, ls="--", label="SLO")
    ax.set_yscale("log")
    ax.set_xticks(list(idx), names, fontsize=8, rotation=20)
    ax.set_ylabel("TTFT (ms, log)")
    ax.set_title("TTFT percentiles (requests that got a first token)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    deps = sorted({d for p in pols for d in p["by_deployment"]})
    bottom = [0.0] * len(pols)
    for d in deps:
        share = [p["by_deployment"].get(d, 0) / max(1, p["requests"]) for p in pols]
        ax.bar(list(idx), share, 0.6, bottom=bottom, label=d)
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    for i, p in enumerate(pols):
        if p["prefix_hit_rate"] is not None:
            ax.annotate(f"hit {p['prefix_hit_rate']:.0%}", (i, 1.0), ha="center", fontsize=7,
                        xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(idx), names, fontsize=8, rotation=20)
    ax.set_ylabel("share of requests")
    ax.set_title("Where requests went (and the pool's prefix-cache hit rate)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
