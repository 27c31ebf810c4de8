"""The lane's Prometheus metrics, on the gateway's registry (`GET /metrics`; a batch
worker serves its own with `--metrics-port`). Throughput is the rate of
`turnout_batch_lines_done_total`; a span per line comes from the pipeline's tracing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class LaneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        # Read from the store at each scan: the same in every process (livemax).
        self.pending = Gauge("turnout_batch_lines_pending",
                             "Lines of running batches not yet taken by a lane", registry=r,
                             multiprocess_mode="livemax")
        self.running = Gauge("turnout_batch_lines_running",
                             "Lines this process is running now", registry=r,
                             multiprocess_mode="livesum")
        self.done = Counter("turnout_batch_lines_done", "Line results written, by outcome",
                            ["outcome"], registry=r)
        self.preempted = Counter("turnout_batch_lines_preempted",
                                 "Lines cancelled for interactive requests (run again later)",
                                 registry=r)
        self.headroom = Gauge("turnout_batch_headroom_lines",
                              "Lines the lane may add now to the pool of a model (0: it holds"
                              " back for interactive load)", ["model"], registry=r,
                              multiprocess_mode="livemax")
        self.completed = self.done.labels("completed")
        self.failed = self.done.labels("failed")
