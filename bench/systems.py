"""The systems under test, as declared in bench/systems.yaml, and the running stack.

`Stack` starts the mock upstream (auxiliary core), the services the selected systems
need (a private redis-server, an OTLP receiver), then every system (system-under-test
core), checks each one answers a real request streamed and not, and stops everything at
the end.
"""

from __future__ import annotations

import shutil
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.bodies import MODES, Numbered, request_body
from bench.install import REPO, ensure_litellm, ensure_portkey
from bench.mock_upstream import MODEL
from bench.procs import Proc, free_port, pinned

BENCH = Path(__file__).resolve().parent
KINDS = ("direct", "floor", "turnout", "litellm", "portkey")
SERVICES = ("redis", "otlp")
CHAT_PATH = "/v1/chat/completions"


@dataclass
class SystemSpec:
    name: str
    kind: str
    config: str | None = None
    services: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    setup: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the system's process environment
    body: str = "plain"  # bench/bodies.py: plain | unique | repeat
    streams: bool = True  # false: left out of the streaming scenarios (it cannot stream)
    smoke: bool = True
    # turnout only: another checkout to run (e.g. a worktree at the commit before a change,
    # measured beside this one in the same run); overrides --turnout-src.
    src: str | None = None


def load_specs(path: Path) -> list[SystemSpec]:
    raw = yaml.safe_load(path.read_text()) or {}
    specs = []
    for i, item in enumerate(raw.get("systems") or []):
        spec = SystemSpec(**item)
        if spec.kind not in KINDS:
            raise ValueError(f"{path}: systems[{i}].kind must be one of {', '.join(KINDS)}")
        if spec.kind in ("turnout", "litellm") and not spec.config:
            raise ValueError(f"{path}: systems[{i}] ({spec.name}) needs a config")
        if spec.body not in MODES:
            raise ValueError(f"{path}: systems[{i}].body must be one of {', '.join(MODES)}")
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: system names must be unique")
    return specs


@dataclass
class Running:
    spec: SystemSpec
    url: str  # chat completions URL
    proc: Proc | None  # None for `direct`
    headers: dict[str, str]

    @property
    def name(self) -> str:
        return self.spec.name

    def cpu_seconds(self) -> float:
        return self.proc.cpu_seconds() if self.proc is not None else 0.0

    def body(self, stream: bool) -> bytes:
        return request_body(stream, self.spec.body)


@dataclass
class Unavailable:
    spec: SystemSpec
    error: str


def _substitute(text: str, values: dict[str, str]) -> str:
    # safe_substitute: unknown ${VAR}s stay for Turnout's own env resolution.
    return string.Template(text).safe_substitute(values)


class Stack:
    def __init__(self, run_dir: Path, *, sut_core: int | None, aux_core: int | None,
                 mock_args: list[str], turnout_src: Path | None = None) -> None:
        self.run_dir = run_dir
        self.turnout_src = turnout_src
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sut_core = sut_core
        self.aux_core = aux_core
        self.mock_args = mock_args
        self.procs: list[Proc] = []
        self.values: dict[str, str] = {"MODEL": MODEL, "RUN_DIR": str(run_dir)}
        self.mock: Proc | None = None
        self.redis: Proc | None = None
        self.otlp: Proc | None = None

    def _proc(self, name: str, argv: list[str], *, core: int | None,
              env: dict[str, str] | None = None, cwd: Path = REPO) -> Proc:
        proc = Proc(name, argv, self.logs / f"{name}.log", core=core, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def start_mock(self) -> str:
        port = free_port()
        self.mock = self._proc("mock", [sys.executable, "-m", "bench.mock_upstream",
                                        "--port", str(port), *self.mock_args],
                               core=self.aux_core)
        root = f"http://127.0.0.1:{port}"
        self.mock.wait_http(root + "/health", 15)
        self.values.update(UPSTREAM=root, UPSTREAM_V1=root + "/v1")
        return root

    def start_services(self, specs: list[SystemSpec]) -> None:
        needed = {s for spec in specs for s in spec.services}
        unknown = needed - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
        if "redis" in needed:
            self._start_redis()
        if "otlp" in needed:
            self._start_otlp()

    def _start_otlp(self) -> None:
        """A local OTLP/HTTP receiver (bench/otlp_sink.py) on the auxiliary core: the
        gateway's exporter does its real work, the receiver only counts."""
        port = free_port()
        self.otlp = self._proc("otlp", [sys.executable, "-m", "bench.otlp_sink",
                                        "--port", str(port)], core=self.aux_core)
        root = f"http://127.0.0.1:{port}"
        self.otlp.wait_http(root + "/health", 15)
        self.values["OTLP_ENDPOINT"] = root

    def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (scripts/bootstrap.sh installs it)")
        port = free_port()
        # Private, no persistence, on the auxiliary core: in production Redis is elsewhere.
        self.redis = self._proc("redis", [exe, "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"],
                                core=self.aux_core)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _redis_ping(port):
                self.values["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 10s")

    def start_system(self, spec: SystemSpec) -> Running | Unavailable:
        try:
            running = self._start(spec)
            check_system(running)
            return running
        except Exception as err:  # one broken system must not sink the whole run
            return Unavailable(spec, f"{type(err).__name__}: {err}")

    def _config(self, spec: SystemSpec, values: dict[str, str]) -> Path:
        assert spec.config is not None
        src = BENCH / "configs" / spec.config
        out = self.run_dir / f"{spec.name}.yaml"
        out.write_text(_substitute(src.read_text(), values))
        return out

    def _start(self, spec: SystemSpec) -> Running:
        values = dict(self.values)
        headers = {k: _substitute(v, values) for k, v in spec.headers.items()}
        env = {k: _substitute(v, values) for k, v in spec.env.items()}
        if spec.kind == "direct":
            return Running(spec, self.values["UPSTREAM"] + CHAT_PATH, None, headers)
        port = free_port()
        values["PORT"] = str(port)
        root = f"http://127.0.0.1:{port}"
        config = self._config(spec, values) if spec.config else None
        values["CONFIG"] = str(config or "")
        for cmd in spec.setup:
            argv = [_substitute(a, values) for a in cmd]
            subprocess.run(pinned(argv, self.aux_core), check=True, cwd=REPO,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if spec.kind == "floor":
            proc = self._proc(spec.name, [sys.executable, "-m", "bench.floor_proxy",
                                          "--port", str(port),
                                          "--upstream", self.values["UPSTREAM"]],
                              core=self.sut_core)
            proc.wait_http(root + "/health", 15)
        elif spec.kind == "turnout":
            # Another checkout's packages shadow the editable install's.
            other = Path(spec.src) if spec.src else self.turnout_src
            src = other or REPO
            if other:
                env["PYTHONPATH"] = str(src)
            proc = self._proc(spec.name, [sys.executable, "-m", "gateway.cli", "serve",
                                          "--config", str(config), "--port", str(port),
                                          "--workers", "1", "--log-level", "warning"],
                              core=self.sut_core, cwd=src, env=env)
            proc.wait_http(root + "/healthz", 30)
        elif spec.kind == "portkey":
            # Node, one process (its event loop) like the others' one worker; headless: no
            # console UI. Where to send is per request (systems.yaml: its headers).
            script = ensure_portkey(self.logs / "install-portkey.log")
            proc = self._proc(spec.name, ["node", str(script), f"--port={port}", "--headless"],
                              core=self.sut_core, env=env)
            proc.wait_http(root + "/", 60)
        else:
            exe = ensure_litellm(self.logs / "install-litellm.log")
            # No network here: use the bundled model cost map instead of fetching it.
            env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
            proc = self._proc(spec.name, [str(exe), "--config", str(config), "--host",
                                          "127.0.0.1", "--port", str(port),
                                          "--num_workers", "1"],
                              core=self.sut_core, env=env)
            proc.wait_http(root + "/health/liveliness", 180)
        return Running(spec, root + CHAT_PATH, proc, headers)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def check_system(running: Running) -> None:
    """One real request each way, so a misconfigured system fails here, not mid-run."""
    headers = {"content-type": "application/json", **running.headers}
    for stream in (False, True)[:1 + running.spec.streams]:
        req = urllib.request.Request(running.url, data=Numbered(running.body(stream)).next(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{running.name}: HTTP {resp.status}: {body[:200]!r}")
        if stream and b"[DONE]" not in body:
            raise RuntimeError(f"{running.name}: stream did not end with [DONE]: "
                               f"{body[-200:]!r}")
        if not stream and b'"choices"' not in body:
            raise RuntimeError(f"{running.name}: no choices in {body[:200]!r}")
