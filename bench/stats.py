"""Percentiles and small summaries shared by the load clients and the report."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 when empty."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    pos = (n - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """min/mean/P50/P90/P99/max of durations given in seconds, reported in milliseconds."""
    v = sorted(values_s)
    if not v:
        return {"n": 0, "min": 0.0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ms = 1000.0
    return {
        "n": len(v),
        "min": round(v[0] * ms, 4),
        "mean": round(sum(v) / len(v) * ms, 4),
        "p50": round(percentile(v, 50) * ms, 4),
        "p90": round(percentile(v, 90) * ms, 4),
        "p99": round(percentile(v, 99) * ms, 4),
        "max": round(v[-1] * ms, 4),
    }
