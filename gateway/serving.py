"""Running the server: uvicorn with our HTTP protocol and limits, and a stop that loses
nothing (issue #17): on SIGTERM the listening socket closes (new connections are refused
at once, not queued to be reset), requests and streams in flight get
`server.drain_timeout_s` (the pipeline cuts what outlasts it cleanly), and a drained
gateway exits 0.

uvicorn.run's own path, but for the worker supervisor (its listening socket stays open
while workers drain) and the single process's exit code (-15: uvicorn re-raises the
SIGTERM it handled)."""

from __future__ import annotations

import contextlib
import functools
import resource
import signal
import sys

import uvicorn
from uvicorn.main import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from gateway.config.server import ServerConfig
from gateway.wire.limits import ServerLimits
from gateway.wire.server import HttpProtocol

APP = "gateway.app:app_from_env"  # a factory of the app, by name: workers are spawned


def run(server: ServerConfig, host: str, port: int, workers: int, log_level: str) -> None:
    limits = _limits(server)
    ours = server.http == "turnout"
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # A partial, not a subclass: workers are spawned and their config pickled.
        http=(functools.partial(HttpProtocol, limits=limits)  # type: ignore[arg-type]
              if ours else "httptools"),
        # uvicorn's own protocol has only this of our limits (a 503 per request over it).
        limit_concurrency=None if ours else limits.max_connections,
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-* rewriting: off unless asked, a µs a request
        log_level=log_level,
        timeout_keep_alive=server.keep_alive_s,
        timeout_graceful_shutdown=server.drain_timeout_s,
    )
    if workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return
    # uvicorn raises the SIGTERM it handled again once drained: the handler it finds then
    # makes a drained gateway's exit a success (a rollout's), not death by a signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    process = uvicorn.Server(config)
    process.run()
    if not process.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but the listening socket is closed before the workers
    are told to drain: with the parent's copy open, the kernel would go on accepting
    connections that no worker answers, to reset them when the parent exits."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def _limits(server: ServerConfig) -> ServerLimits:
    """The server's limits, `max_connections` kept under the open-file limit (raised to
    its hard limit first, as Go's runtime does): a client connection may hold an upstream
    one too, and a clean 503 beats accept() failing for want of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    limits = server.limits
    cap = limits.max_connections
    if soft != resource.RLIM_INFINITY and cap > (soft - 64) // 2:
        cap = max((soft - 64) // 2, 16)  # room for an upstream connection each, and more
        print(f"server.limits.max_connections: {cap} per process (the open-file limit is "
              f"{soft})", flush=True)
    return ServerLimits(cap, limits.max_head_bytes, limits.header_timeout_s,
                        limits.request_timeout_s)
