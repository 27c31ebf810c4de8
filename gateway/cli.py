"""`turnout` command line: serve, check-config, teams, keys, usage, sim.

(Comparing routing policies on a recorded trace is the benchmark's: `python -m bench.replay`.)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from gateway import cli_admin
from gateway.app import configure_logging
from gateway.config import Config, ConfigError, load_config
from gateway.telemetry.metrics import multiprocess_dir
from gateway.wire.limits import ServerLimits
from selfhost import sim as simulator

DEFAULT_CONFIG = "config/turnout.yaml"


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return None


def check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 1
    deployments = sum(len(m.deployments) for m in cfg.models.values())
    print(f"{args.file}: ok ({len(cfg.models)} models, {deployments} deployments, "
          f"{len(cfg.providers)} providers, {len(cfg.pools)} pools)")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import CONFIG_ENV

    cfg = _load(args.config)
    if cfg is None:
        return 1
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    workers = args.workers or cfg.server.workers
    os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    print(f"Turnout serving {', '.join(cfg.models)} on http://{host}:{port} "
          f"({workers} worker{'s' if workers > 1 else ''}, store: "
          f"{'redis' if cfg.redis else 'in-memory'}, config: {args.config})", flush=True)
    for team in cfg.teams:
        for key in team.keys:
            if key.show_at_startup:
                print(f"{key.id} key (team {team.name}): {key.key}", flush=True)
    # Workers are separate processes: /metrics adds up their values through shared files.
    metrics_dir = multiprocess_dir() if workers > 1 and cfg.telemetry.metrics else None
    try:
        _run(uvicorn, host, port, workers, args.log_level, cfg.server.http,
             _server_limits(cfg))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def batch_worker(args: argparse.Namespace) -> int:
    from gateway.batch import worker

    cfg = _load(args.config)
    return 1 if cfg is None else worker.run(cfg, args.metrics_port)


def _server_limits(cfg: Config) -> ServerLimits:
    """The server's limits, `max_connections` kept under the open-file limit (raised to
    its hard limit first, as Go's runtime does): a client connection may hold an upstream
    one too, and a clean 503 beats accept() failing for want of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    limits = cfg.server.limits
    cap = limits.max_connections
    if soft != resource.RLIM_INFINITY and cap > (soft - 64) // 2:
        cap = max((soft - 64) // 2, 16)  # room for an upstream connection each, and more
        print(f"server.limits.max_connections: {cap} per process (the open-file limit is "
              f"{soft})", flush=True)
    return ServerLimits(cap, limits.max_head_bytes, limits.header_timeout_s,
                        limits.request_timeout_s)


def _run(uvicorn: Any, host: str, port: int, workers: int, log_level: str, http: str,
         limits: ServerLimits) -> None:
    from gateway.wire.server import HttpProtocol

    ours = http == "turnout"
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # A partial, not a subclass: workers are spawned and their config pickled.
        http=functools.partial(HttpProtocol, limits=limits) if ours else "httptools",
        # uvicorn's own protocol has only this of our limits (a 503 per request over it).
        limit_concurrency=None if ours else limits.max_connections,
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-* rewriting: off unless asked, a µs a request
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="LLM inference gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--host", help="listen address (default: server.host from the config)")
    p.add_argument("--port", type=int, help="listen port (default: server.port from the config)")
    p.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=serve)

    p = sub.add_parser("batch-worker", help="run the batch lane only (needs redis)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on it")
    p.set_defaults(func=batch_worker)

    p = sub.add_parser("check-config", help="validate a config file and print every problem")
    p.add_argument("file")
    p.set_defaults(func=check_config)

    cli_admin.add_commands(sub, DEFAULT_CONFIG)

    p = sub.add_parser("sim", help="run simulated OpenAI/vLLM-compatible upstreams")
    simulator.add_arguments(p)
    p.set_defaults(func=simulator.run_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
