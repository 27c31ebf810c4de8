"""An OpenAI/vLLM-compatible simulator: a real HTTP server for tests, demos and benchmarks.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models`, `GET /health`, `GET /metrics` (vLLM's metric names), and for tests
`GET /sim/stats`, `GET|POST /sim/faults`. Text is deterministic (`sim_content`), latency
follows a `SimProfile`, `Faults` inject errors, hangs, resets and mid-stream drops
(`sim_state`), requests are handled in `sim_server`. This module runs simulators: in the
current event loop (`serve`), from a background thread (`ThreadedSim`), or from the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from selfhost.sim_lora import Adapters
from selfhost.sim_server import Simulator
from selfhost.sim_state import PROFILES, FailNext, Faults, SimProfile, SimStats

__all__ = [
    "PROFILES",
    "FailNext",
    "Faults",
    "RunningSim",
    "SimProfile",
    "SimStats",
    "Simulator",
    "ThreadedSim",
    "add_arguments",
    "run_cli",
    "serve",
    "serve_many",
]

_T = TypeVar("_T")


@dataclass
class RunningSim:
    """A simulator listening on a real port; `url` is the server root (OpenAI base: url + /v1)."""

    sim: Simulator
    host: str
    port: int
    _runner: web.ServerRunner

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and drop every connection at once, in-flight requests included."""
        server = self._runner.server
        for conn in server.connections if server is not None else ():
            conn.force_close()  # else cleanup waits out hanging handlers
        await self._runner.cleanup()
        await self.sim.close_kv()


async def serve(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    """Serve `sim` on the running event loop; port 0 picks a free port."""
    sock = _bound_socket(host, port)  # bound here, so the port is known before serving
    # handler_cancellation: a client that goes away cancels its handler wherever it waits.
    server = web.Server(sim.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
    try:
        await runner.setup()
        await web.SockSite(runner, sock, backlog=2048).start()
        await sim.open_kv(host if host not in ("", "0.0.0.0", "::") else "127.0.0.1")
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return RunningSim(sim, host, sock.getsockname()[1], runner)


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_many(
    sims: Sequence[Simulator], host: str = "127.0.0.1", port: int = 0
) -> list[RunningSim]:
    """Serve each simulator on port, port+1, … (or free ports when port is 0)."""
    running: list[RunningSim] = []
    try:
        for i, sim in enumerate(sims):
            running.append(await serve(sim, host, port + i if port else 0))
    except BaseException:
        for r in running:
            await r.close()
        raise
    return running


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # optional speed-up
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ThreadedSim:
    """Serves simulators from a background thread with its own loop, for synchronous code:

    with ThreadedSim(Simulator("instant")) as s:
        OpenAI(base_url=s.url + "/v1", api_key="x")
    """

    def __init__(self, *sims: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sims = sims or (Simulator(),)
        self.host, self.port = host, port
        self.servers: list[RunningSim] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def sim(self) -> Simulator:
        return self.sims[0]

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> ThreadedSim:
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="turnout-sim", daemon=True
        )
        self._thread.start()
        try:
            self.servers = self._call(serve_many(self.sims, self.host, self.port))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for server in self.servers:
            self._call(server.close())
        self.servers = []
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __enter__(self) -> ThreadedSim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# CLI (`turnout sim`)

# flag name -> type; each maps onto the SimProfile / Faults field of the same name
_PROFILE_FLAGS: dict[str, type[float]] = {
    f.name: int if f.name == "max_num_seqs" else float
    for f in fields(SimProfile)
    if f.name != "name"
}
_FAULT_FLAGS: dict[str, type[float]] = {
    "rate_429": float,
    "rate_500": float,
    "rate_503": float,
    "rate_hang": float,
    "rate_reset": float,
    "retry_after_s": float,
    "disconnect_after_chunks": int,
    "extra_ttft_ms": float,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=8100,
        help="first replica's port; replica i listens on port+i (0: free ports)",
    )
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast-gpu")
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument(
        "--strict-model",
        action="store_true",
        help="404 for any other model name (default: serve every name)",
    )
    parser.add_argument(
        "--max-tokens-default",
        type=int,
        default=16,
        help="completion length when a request sets no max_tokens",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds jitter and fault draws")
    group = parser.add_argument_group("profile overrides")
    for name, kind in _PROFILE_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    group = parser.add_argument_group("fault injection (also POST /sim/faults at runtime)")
    for name, kind in _FAULT_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    group.add_argument("--unhealthy", action="store_true", help="GET /health answers 503")
    group = parser.add_argument_group("KV-cache events and LoRA adapters, as vLLM serves them")
    group.add_argument("--kv-blocks", type=int, default=None,
                       help="keep a KV cache of this many blocks and publish its events")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    group.add_argument("--kv-port", type=int, default=0,
                       help="replica i publishes on port+2i, replays on port+2i+1 (0: free)")
    group.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                       help="a LoRA adapter loaded at start (repeatable)")
    group.add_argument("--runtime-lora", action="store_true",
                       help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter")
    group.add_argument("--max-loras", type=int, default=4)


def run_cli(args: argparse.Namespace) -> int:
    """Serve `args.replicas` simulators until SIGINT/SIGTERM; one `URL …` line per replica."""
    overrides = {k: getattr(args, k) for k in _PROFILE_FLAGS if getattr(args, k) is not None}
    fault_args = {k: getattr(args, k) for k in _FAULT_FLAGS if getattr(args, k) is not None}
    try:
        if args.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        profile = SimProfile.named(args.profile, **overrides)
        loras = dict(_name_path(text) for text in args.lora)
        lora_on = bool(loras) or args.runtime_lora
        sims = [
            Simulator(
                profile,
                model=args.model,
                strict_model=args.strict_model,
                max_tokens_default=args.max_tokens_default,
                seed=args.seed + i,
                faults=Faults(unhealthy=args.unhealthy, **fault_args),
                kv_blocks=args.kv_blocks,
                block_size=args.block_size,
                kv_ports=(args.kv_port + 2 * i, args.kv_port + 2 * i + 1) if args.kv_port
                else (0, 0),
                adapters=Adapters(loras, max_loras=args.max_loras,
                                  runtime_updates=args.runtime_lora) if lora_on else None,
            )
            for i in range(args.replicas)
        ]
    except ValueError as exc:
        print(f"turnout sim: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_serve_until_signal(sims, args.host, args.port))
    except OSError as exc:
        print(f"turnout sim: {exc}", file=sys.stderr)
        return 1
    return 0


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not (name and sep and path):
        raise ValueError(f"--lora {text!r}: expected NAME=PATH")
    return name, path


async def _serve_until_signal(sims: list[Simulator], host: str, port: int) -> None:
    running = await serve_many(sims, host, port)
    for i, r in enumerate(running):
        kv = r.sim.kv_publisher
        events = f" kv-events={kv.port} kv-replay={kv.replay_port}" if kv is not None else ""
        print(f"{r.url}  replica={i} profile={r.sim.profile.name} model={r.sim.model}{events}",
              flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for r in running:
            await r.close()
