"""The PNG: throughput per system and concurrency, latency percentiles per system, and the
streaming figures (added TTFT, gap jitter). matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, Any]


def _ok(r: Any) -> bool:
    return isinstance(r, dict) and "error" not in r


def _grouped(ax: Any, groups: list[str], series: dict[str, list[float]], *,
             labels: bool = False, colors: dict[str, str] | None = None) -> None:
    """Bars for each series within each group (x ticks = groups)."""
    width = 0.8 / max(1, len(series))
    for i, (name, ys) in enumerate(series.items()):
        bars = ax.bar([j + i * width for j in range(len(groups))], ys, width, label=name,
                      color=(colors or {}).get(name))
        if labels:
            ax.bar_label(bars, labels=[f"{y:,.0f}" if y else "" for y in ys], fontsize=6,
                         rotation=90, padding=2)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups,
                  fontsize=8)
    ax.legend(fontsize=7)


def _get(sc: dict[str, Any], name: str, *path: str) -> float:
    r = sc["results"].get(name)
    if not _ok(r):
        return 0.0
    for key in path:
        r = r.get(key) if isinstance(r, dict) else None
    return float(r) if isinstance(r, int | float) else 0.0


def plot(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    systems = [s["name"] for s in results["systems"] if s["status"] == "ok"]
    closed = [sc for sc in results["scenarios"] if sc["kind"] == "closed"]
    opened = next((sc for sc in results["scenarios"] if sc["kind"] == "open"), None)
    stream = next((sc for sc in results["scenarios"] if sc["kind"] == "stream"), None)
    fig, axes = plt.subplots(2, 3, figsize=(20, 10))
    fig.suptitle(f"Turnout bench · {meta['started']} · {meta['mode']} · {meta['pinning']} · "
                 f"turnout: {meta.get('turnout_source', '?')}", fontsize=9)
    conc = [f"c={sc['concurrency']}" for sc in closed]
    # One colour per system in every panel that has a bar per system.
    colors = {n: f"C{i}" for i, n in enumerate(systems)}

    ax = axes[0][0]
    _grouped(ax, conc, {n: [_get(sc, n, "rps") for sc in closed] for n in systems},
             labels=True, colors=colors)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log)")
    ax.set_title("Closed-loop throughput (wrk, non-streamed)")

    ax = axes[0][1]
    proxies = [n for n in systems if n != "direct"]
    _grouped(ax, conc, {n: [_get(sc, n, "sut_cpu_us_per_req") for sc in closed]
                        for n in proxies}, labels=True, colors=colors)
    ax.set_yscale("log")
    ax.set_ylabel("CPU µs per request (log)")
    ax.set_title("System-under-test CPU per request (steady under noise)")

    # c=1 (added latency) and c=16 (the reference load), else the highest concurrency.
    second = next((sc for sc in closed if sc["concurrency"] == 16), closed[-1] if closed else None)
    picks = [sc for sc in [*closed[:1], second] if sc is not None][:2]
    for ax, sc in zip((axes[1][0], axes[1][1]), picks, strict=False):
        _grouped(ax, systems, {q.upper(): [_get(sc, n, "latency_ms", q) for n in systems]
                               for q in ("p50", "p90", "p99")})
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.set_title(f"Closed-loop latency, c={sc['concurrency']}")

    ax = axes[0][2]
    if opened is not None:
        _grouped(ax, systems, {q.upper(): [_get(opened, n, "latency_ms", q) for n in systems]
                               for q in ("p50", "p90", "p99")})
        ax.set_yscale("log")
        ax.set_ylabel("latency ms from intended send (log)")
        ax.set_title(f"Open loop, {opened['rate']:g} req/s offered\nachieved: " + ", ".join(
            f"{n} {_get(opened, n, 'achieved_rps'):,.0f}" for n in systems), fontsize=9)

    ax = axes[1][2]
    if stream is not None:
        _grouped(ax, systems, {
            "TTFT P50": [_get(stream, n, "ttft_ms", "p50") for n in systems],
            "TTFT P99": [_get(stream, n, "ttft_ms", "p99") for n in systems],
            "gap jitter P99": [_get(stream, n, "jitter_ms", "p99") for n in systems],
        })
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"Streaming, {stream['concurrency']} concurrent (nominal gap "
                     f"{meta['mock']['gap_ms']:g} ms)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
