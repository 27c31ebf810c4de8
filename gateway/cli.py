"""`turnout` command line: serve, check-config, teams, keys, usage, sim.

(Comparing routing policies on a recorded trace is the benchmark's: `python -m bench.replay`.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from gateway import cli_admin
from gateway.app import configure_logging
from gateway.config import Config, ConfigError, load_config
from gateway.telemetry.metrics import multiprocess_dir
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
    from gateway import serving
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
        serving.run(cfg.server, host, port, workers, args.log_level)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def batch_worker(args: argparse.Namespace) -> int:
    from gateway.batch import worker

    cfg = _load(args.config)
    return 1 if cfg is None else worker.run(cfg, args.metrics_port)


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
