"""`turnout batch-worker --config FILE`: a process that runs only the batch lane, with the
same config as the gateways (its store, pools and models; `batch.run_in_serve: false`
keeps the lane out of `turnout serve`). It needs Redis: the batches are in the store that
the gateways write. SIGTERM or SIGINT: lines under way are given back, then it exits."""

from __future__ import annotations

import asyncio
import logging
import signal

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.config import Config
from gateway.http.ops import MetricsEndpoint, OpsListener, healthz
from gateway.services import Services

log = logging.getLogger("turnout.batch")


async def serve_worker(cfg: Config, metrics_port: int | None) -> None:
    services = Services(cfg, batch_worker=True)
    await services.start()
    listener = None
    try:
        if metrics_port is not None and services.telemetry.metrics is not None:
            app = Starlette(routes=[Route("/healthz", healthz, methods=["GET"]),
                                    Route("/metrics", MetricsEndpoint(services),
                                          methods=["GET"])])
            listener = OpsListener(app)
            port = await listener.start(cfg.server.host, metrics_port, reuse_port=False)
            log.info("batch worker metrics on port %d", port)
        print("batch worker running", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if listener is not None:
            await listener.stop()
        await services.stop()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # as `turnout serve` runs
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(cfg: Config, metrics_port: int | None) -> int:
    if cfg.redis is None:
        print("turnout batch-worker: needs `redis:` (batches live in the store the gateways"
              " share; with the in-memory store the lane runs inside `turnout serve`)")
        return 2
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(serve_worker(cfg, metrics_port))
    return 0
