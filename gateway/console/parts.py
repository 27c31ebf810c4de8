"""The console's parts in one process, composed once by `Services` (gateway/services.py):
the recorder first (telemetry hands it settled requests), the rest once the store, the
scoreboard and failover exist."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from gateway.canonical import Deployment
from gateway.config import Config
from gateway.console.live import Feed, Publisher
from gateway.console.recorder import Recorder
from gateway.console.sessions import Sessions
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from gateway.dispatch.failover import Failover
from gateway.lifecycle import on_server_exit
from gateway.store import Store
from policies.lockout import Lockout
from policies.scoreboard import Scoreboard


def process_id() -> str:
    """Unique among the gateway's processes, workers and replicas alike (a restarted
    worker may reuse a pid: the random part tells them apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


def console_recorder(cfg: Config) -> Recorder | None:
    """The request path's hook, when the console is on (None: it is off, and costs
    nothing at all)."""
    if not cfg.console.on(cfg.auth.admin_key):
        return None
    return Recorder(process_id(), cfg.console.sample_per_s,
                    frozenset(cfg.telemetry.tracing.capture_content))


class Console:
    def __init__(self, cfg: Config, recorder: Recorder, store: Store, board: Scoreboard,
                 failover: Failover | None,
                 models: Callable[[], dict[str, list[Deployment]]]) -> None:
        self.config = cfg.console
        self.recorder = recorder
        lockout = cfg.auth.lockout
        self.sessions = Sessions(store, cfg.console, cfg.auth.admin_key,
                                 Lockout(lockout.failures, lockout.window_s))
        watch = CircuitWatch(recorder.proc)
        self.builder = SnapshotBuilder(recorder.proc, models, board, failover, recorder, watch)
        self.publisher = Publisher(store, self.builder, recorder, watch)
        self.feed = Feed(store)

    def start(self) -> None:
        self.publisher.start()
        on_server_exit(self.feed.close)  # its streams never end by themselves

    async def stop(self) -> None:
        await self.feed.stop()
        await self.publisher.stop()
