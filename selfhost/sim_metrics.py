"""The simulator's `/metrics`: vLLM's (V1 engine) metric names, labels and default buckets.

Hand-rolled rather than prometheus_client so each simulator has its own counters without a
registry, observing costs a bisect, and nothing is shared between simulators in one process.
"""

from __future__ import annotations

from bisect import bisect_left

# vllm/v1/metrics/buckets.py
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip

FINISH_REASONS = ("stop", "length", "abort")


class Histogram:
    """Prometheus histogram: per-bucket counts, made cumulative only when rendered."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels},le="{float(bound)!r}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        lines.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        return lines


class VllmMetrics:
    """The counters and histograms of one simulated vLLM engine (engine index 0)."""

    def __init__(self, model_name: str) -> None:
        escaped = model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.labels = f'model_name="{escaped}",engine="0"'
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)

    def render(self, running: int, waiting: int, kv_usage: float) -> bytes:
        lab, out = self.labels, list[str]()
        for name, gauge in (
            ("num_requests_running", running),
            ("num_requests_waiting", waiting),
            ("kv_cache_usage_perc", kv_usage),
        ):
            out += _head(name, "gauge")
            out.append(f"vllm:{name}{{{lab}}} {float(gauge)!r}")
        for name, total in (
            ("prefix_cache_queries_total", self.prefix_queries),
            ("prefix_cache_hits_total", self.prefix_hits),
            ("prompt_tokens_total", self.prompt_tokens),
            ("generation_tokens_total", self.generation_tokens),
        ):
            out += _head(name, "counter")
            out.append(f"vllm:{name}{{{lab}}} {float(total)!r}")
        out += _head("request_success_total", "counter")
        for reason, n in self.success.items():
            out.append(f'vllm:request_success_total{{{lab},finished_reason="{reason}"}} {n}.0')
        for name, hist in (
            ("time_to_first_token_seconds", self.ttft),
            ("inter_token_latency_seconds", self.itl),
            ("e2e_request_latency_seconds", self.e2e),
        ):
            out += _head(name, "histogram")
            out += hist.render(f"vllm:{name}", lab)
        out.append("")
        return "\n".join(out).encode()


_HELP = {
    "num_requests_running": "Number of requests in model execution batches.",
    "num_requests_waiting": "Number of requests waiting to be processed.",
    "kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "prefix_cache_queries_total": "Prefix cache queries, in terms of number of queried tokens.",
    "prefix_cache_hits_total": "Prefix cache hits, in terms of number of cached tokens.",
    "prompt_tokens_total": "Number of prefill tokens processed.",
    "generation_tokens_total": "Number of generation tokens processed.",
    "request_success_total": "Count of successfully processed requests.",
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
}


def _head(name: str, kind: str) -> list[str]:
    return [f"# HELP vllm:{name} {_HELP[name]}", f"# TYPE vllm:{name} {kind}"]
