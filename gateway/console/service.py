"""The console's parts in one process, composed once by `Services` (gateway/services.py):
the recorder first (telemetry hands it settled requests), the rest once the store, the
scoreboard and failover exist."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

from gateway.canonical import Deployment
from gateway.config import Config
from gateway.console.live import Feed, Publisher
from gateway.console.recorder import Recorder
from gateway.console.sessions import Sessions
from gateway.console.snapshot import CircuitWatch, SnapshotBuilder
from gateway.dispatch.failover import Failover
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
        end_streams_on_exit(self.feed.close)

    async def stop(self) -> None:
        await self.feed.stop()
        await self.publisher.stop()


def end_streams_on_exit(close: Callable[[], None]) -> None:
    """Call `close` (in the loop) when the server is told to stop, before it waits for
    open responses to finish: a console's stream never finishes by itself, and would hold
    up the drain until the server's graceful timeout cancelled it.

    The server (uvicorn) handles SIGINT and SIGTERM in its process's main thread and has
    installed its handlers before the app starts: this one runs first, then passes the
    signal on to it. Under anything else (no handler of the server's to pass it to, or
    not the main thread) nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue

        def handler(signum: int, frame: FrameType | None,
                    previous: Callable[[int, FrameType | None], object] = previous) -> None:
            loop.call_soon_threadsafe(close)
            previous(signum, frame)

        signal.signal(sig, handler)
