"""What the bench needs beyond Turnout's own dependencies, installed on first use:

- `wrk` from Debian (apt-get; the harness runs as root here, `sudo` otherwise);
- matplotlib (the plot) and py-spy (the profile) into the running virtualenv with pip;
- LiteLLM Proxy into its own virtualenv, `.venv-litellm`, so its pins never touch ours;
- Portkey's gateway (Node) from npm into `.bench-node/portkey-<version>`, pinned the same way.

Each step is skipped when already done; pip and apt output goes to a log file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.105.3"
LITELLM_VENV = REPO / ".venv-litellm"
PORTKEY_VERSION = "1.15.2"
PORTKEY_DIR = REPO / ".bench-node" / f"portkey-{PORTKEY_VERSION}"


class InstallError(RuntimeError):
    pass


def _run(argv: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise InstallError(f"{what} failed (exit {proc.returncode}); see {log}")


def ensure_wrk(log: Path) -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env_apt = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*sudo, *env_apt, "apt-get", "update", "-qq"], log, "apt-get update")
    _run([*sudo, *env_apt, "apt-get", "install", "-y", "-qq", "wrk"], log,
         "apt-get install wrk")
    found = shutil.which("wrk")
    if not found:
        raise InstallError("wrk is still not on PATH after apt-get install")
    return found


def ensure_module(module: str, requirement: str, log: Path) -> None:
    """pip-install `requirement` into this interpreter's environment unless importable."""
    if importlib.util.find_spec(module) is not None:
        return
    _run([sys.executable, "-m", "pip", "install", "-q", requirement], log,
         f"pip install {requirement}")
    importlib.invalidate_caches()


def py_spy(log: Path) -> str:
    """The py-spy binary of this virtualenv (its wheel ships a binary, no module)."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        _run([sys.executable, "-m", "pip", "install", "-q", "py-spy>=0.4"], log,
             "pip install py-spy")
    if not exe.exists():
        raise InstallError(f"py-spy installed but {exe} is missing")
    return str(exe)


def ensure_litellm(log: Path) -> Path:
    """The `litellm` CLI of `.venv-litellm`, created and filled on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / f".installed-{LITELLM_VERSION}"
    if exe.exists() and stamp.exists():
        return exe
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        # The base interpreter (not this venv's) so the new venv is independent.
        base = Path(sys.base_prefix) / "bin" / "python3"
        _run([str(base if base.exists() else sys.executable), "-m", "venv", str(LITELLM_VENV)],
             log, "creating .venv-litellm")
    _run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], log,
         f"pip install litellm[proxy]=={LITELLM_VERSION}")
    if not exe.exists():
        raise InstallError(f"{exe} missing after install")
    stamp.touch()
    return exe


def ensure_portkey(log: Path) -> Path:
    """Portkey's start-server.js, npm-installed (that exact version) on first use."""
    script = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise InstallError("Portkey's gateway needs node and npm (apt-get install nodejs npm)")
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    _run(["npm", "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund",
          f"@portkey-ai/gateway@{PORTKEY_VERSION}"], log,
         f"npm install @portkey-ai/gateway@{PORTKEY_VERSION}")
    if not script.exists():
        raise InstallError(f"{script} missing after npm install")
    return script
