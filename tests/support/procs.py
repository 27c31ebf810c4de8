"""Start real servers for tests: a gateway subprocess and a private redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trustme
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 30) -> None:
    """Poll `ready` until it holds, failing fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{tail(log)}")


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Poll a readiness URL until it answers 200, failing fast if the process died."""
    wait_until(lambda: answers_200(url), url, proc, log, timeout)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Gateway:
    """`turnout serve` in a subprocess on a free port, with the given config."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"turnout-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"gateway-{self.port}.log"
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
               "--port", str(self.port), "--workers", str(workers)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, **(env or {})},
                                         start_new_session=True)
        wait_http(self.url + "/healthz", self.proc, self.log)
        # /healthz answers once one worker listens; tests that count on all of them wait.
        wait_until(lambda: self.logs().count("Application startup complete") >= workers,
                   f"{workers} workers", self.proc, self.log)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS redis-server: its certificate and key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def make_tls_files(workdir: Path) -> TlsFiles:
    """A throwaway CA and a certificate it signed for 127.0.0.1 and localhost."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(workdir / "server.pem", workdir / "server.key", workdir / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


class RedisServer:
    """A private redis-server on a free port: never the machine's shared 6379."""

    def __init__(self, workdir: Path, *, port: int | None = None, persist: bool = False,
                 password: str | None = None, unix_socket: bool = False,
                 tls: TlsFiles | None = None) -> None:
        """`port`: restart on a known port; `persist`: an append-only file fsynced on every
        write, so a restart (even after SIGKILL) comes back with the same data;
        `password`: requirepass; `unix_socket`: also listen on `self.socket`;
        `tls`: TLS only, on `self.port` (`self.url` is rediss:// trusting its CA)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (the test command installs it)")
        self.port = port or free_port()
        self.password, self.tls = password, tls
        auth = f":{quote(password, safe='')}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.log = workdir / f"redis-{self.port}.log"
        self.socket = workdir / f"redis-{self.port}.sock"
        aof = ["yes", "--appendfsync", "always"] if persist else ["no"]
        listen = ["--port", str(self.port)]
        if tls:
            self.url = (f"rediss://{auth}127.0.0.1:{self.port}/0"
                        f"?ssl_ca_certs={quote(str(tls.ca))}")
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                      str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file",
                      str(tls.ca), "--tls-auth-clients", "no"]
        if password:
            listen += ["--requirepass", password]
        if unix_socket:
            listen += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            [exe, *listen, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", *aof, "--dir", str(workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._answers_ping():
                return
            time.sleep(0.05)
        stop(self.proc)
        raise RuntimeError(f"redis-server did not start:\n{tail(self.log)}")

    def _answers_ping(self) -> bool:
        hello = b""
        if self.password:
            pw = self.password.encode()
            hello = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
            try:
                if self.tls:
                    ctx = ssl.create_default_context(cafile=str(self.tls.ca))
                    s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
                s.sendall(hello + b"PING\r\n")
                got = b""
                while got.count(b"\r\n") < (2 if hello else 1):
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    got += chunk
                return got.endswith(b"+PONG\r\n")
            finally:
                s.close()
        except OSError:  # ssl.SSLError included
            return False

    def stop(self) -> None:
        stop(self.proc)

    def kill(self) -> None:
        """SIGKILL: an outage with no goodbye to the clients."""
        self.proc.kill()
        self.proc.wait()
