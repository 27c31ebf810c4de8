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
from collections.abc import Callable, Sequence
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
        # Stopped at once by tests unless one sets the drain (the default's 30 s would
        # hold a stop that has a stream or console open).
        server = {"drain_timeout_s": 5, **config.get("server", {})}
        self.config_path.write_text(yaml.safe_dump({**config, "server": server}))
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
                 tls: TlsFiles | None = None, config: Path | None = None,
                 extra: Sequence[str] = ()) -> None:
        """`port`: restart on a known port; `persist`: an append-only file fsynced on every
        write, so a restart (even after SIGKILL) comes back with the same data;
        `password`: requirepass; `unix_socket`: also listen on `self.socket`;
        `tls`: TLS only, on `self.port` (`self.url` is rediss:// trusting its CA);
        `config`: a config file read first (a sentinel's); `extra`: more options."""
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
        first = [str(config)] if config is not None else []
        self.proc = subprocess.Popen(
            [exe, *first, *listen, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", *aof, "--dir", str(workdir), "--logfile", str(self.log), *extra],
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


def command(port: int, *args: str | int) -> Any:
    """One command to the redis-server on `port`, raw (hiredis' reply; an error reply is
    returned, not raised); None when it does not answer. For polling cluster and sentinel
    states: no client library's reply parsing in between."""
    import hiredis

    reader = hiredis.Reader()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(hiredis.pack_command(args))
            while (reply := reader.gets()) is False:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reader.feed(chunk)
            return reply
    except OSError:
        return None


def _info(node: RedisServer, section: str) -> dict[str, str]:
    """`INFO section` of a node as text fields (empty when it does not answer)."""
    raw = command(node.port, "INFO", section)
    if not isinstance(raw, bytes):
        return {}
    return dict(line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)


def _cluster_info(node: RedisServer) -> dict[str, str]:
    raw = command(node.port, "CLUSTER", "INFO")
    if not isinstance(raw, bytes):
        return {}
    return dict(line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)


# A replica's first sync starts at once (redis waits 5 s for more replicas by default).
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


class RedisCluster:
    """A private Redis Cluster: `masters` masters with `replicas` replicas each, every node
    a redis-server on free ports (its cluster bus too), created by `redis-cli --cluster
    create`, ready once every node says `cluster_state:ok`. `node_timeout_ms` is how long a
    silent master goes unnoticed before its replica takes over (short enough for a test
    that kills one; long enough that a busy machine's pauses start no failover)."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 5000) -> None:
        self.workdir = workdir
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
                port = free_port()
                self.nodes.append(RedisServer(workdir, port=port, extra=[
                    "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-port", str(free_port()), *_FAST_SYNC]))
            create = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, timeout=60, check=False)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n"
                                   f"{create.stdout.decode()}{create.stderr.decode()}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok, with every slot served by a master
        that knows it (a failover over, a node joined)."""
        def ok() -> bool:
            infos = [_cluster_info(n) for n in self.live()]
            return (all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                        for i in infos) and self._agree())
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                nodes = command(self.live()[0].port, "CLUSTER", "NODES")
                raise RuntimeError(f"redis cluster not ok in time:\n{nodes!r}\n"
                                   + "\n".join(tail(n.log, 8) for n in self.live()))
            time.sleep(0.05)

    def _agree(self) -> bool:
        """Every live node maps every slot to the same live master."""
        views = []
        for n in self.live():
            slots = command(n.port, "CLUSTER", "SLOTS")
            if not isinstance(slots, list):
                return False
            views.append(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots))
        live_ports = {n.port for n in self.live()}
        return bool(views) and all(v == views[0] for v in views) and all(
            port in live_ports for _, _, port in views[0])

    def node_at(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> RedisServer:
        """The master serving `key`'s slot now."""
        port = self.live()[0].port
        slot = int(command(port, "CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in command(port, "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return self.node_at(int(master[1]))
        raise LookupError(key)

    def replica_of(self, master: RedisServer) -> RedisServer:
        for n in self.live():
            info = _info(n, "replication")
            if info.get("role") == "slave" and info.get("master_port") == str(master.port):
                return n
        raise LookupError(master.port)

    def synced(self, master: RedisServer, timeout: float = 10) -> None:
        """Until its replica has every write the master took (replication is
        asynchronous: a master killed before then loses what its replica lacks)."""
        replica = self.replica_of(master)
        deadline = time.monotonic() + timeout
        while True:
            want = int(_info(master, "replication").get("master_repl_offset", -1))
            if int(_info(replica, "replication").get("slave_repl_offset", -2)) >= want >= 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("replica not in sync:\n" + tail(replica.log))
            time.sleep(0.01)

    def failover(self, replica: RedisServer) -> None:
        """A manual failover (`CLUSTER FAILOVER` on the replica): it takes over its master's
        slots once it has every write the master acknowledged; returns once all agree.
        A replica that only just became one may not be known as such everywhere yet: it
        is asked again when a try times out (Redis gives one 5 s)."""
        deadline = time.monotonic() + 30
        while _info(replica, "replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("replica not in sync:\n" + tail(replica.log))
            time.sleep(0.02)
        while _info(replica, "replication").get("role") != "master":
            if command(replica.port, "CLUSTER", "FAILOVER") != b"OK":
                raise RuntimeError("CLUSTER FAILOVER refused")
            tried = time.monotonic()
            while (_info(replica, "replication").get("role") != "master"
                   and time.monotonic() - tried < 6):
                time.sleep(0.02)
            if time.monotonic() > deadline:
                raise RuntimeError("manual failover did not happen:\n" + tail(replica.log))
        self.wait_ok()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class RedisSentinel:
    """A master, one replica and three `redis-server --sentinel` watching them (quorum 2),
    all on free ports; `down_after_ms` of silence and the sentinels fail over."""

    def __init__(self, workdir: Path, *, service: str = "mymaster",
                 down_after_ms: int = 1000) -> None:
        self.service = service
        self.sentinels: list[RedisServer] = []
        self.master = RedisServer(workdir, extra=_FAST_SYNC)
        self.replica = RedisServer(workdir, extra=["--replicaof", "127.0.0.1",
                                                   str(self.master.port), *_FAST_SYNC])
        try:
            for _ in range(3):
                port = free_port()
                conf = workdir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"sentinel monitor {service} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                    f"sentinel failover-timeout {service} {max(5000, 4 * down_after_ms)}\n"
                    f"sentinel parallel-syncs {service} 1\n")
                self.sentinels.append(RedisServer(workdir, port=port, config=conf,
                                                  extra=["--sentinel"]))
            self._wait_watching()
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{service}/0"

    def _sentinel_view(self, sentinel: RedisServer) -> dict[str, str]:
        flat = command(sentinel.port, "SENTINEL", "MASTER", self.service)
        if not isinstance(flat, list):
            return {}
        return {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)}

    def _wait_watching(self, timeout: float = 30) -> None:
        """Until every sentinel knows the other two and the replica, and the replica is
        in sync: only then can a failover be agreed on."""
        deadline = time.monotonic() + timeout
        while True:
            views = [self._sentinel_view(s) for s in self.sentinels]
            if all(v.get("num-other-sentinels") == "2" and v.get("num-slaves") == "1"
                   for v in views) and _info(self.replica, "replication").get(
                       "master_link_status") == "up":
                return
            if time.monotonic() > deadline:
                raise RuntimeError("sentinels not watching in time:\n"
                                   + tail(self.sentinels[0].log))
            time.sleep(0.05)

    def master_port(self) -> int:
        """The master's port as the sentinels see it."""
        return int(self._sentinel_view(self.sentinels[0]).get("port", 0))

    def stop(self) -> None:
        for s in [*self.sentinels, self.replica, self.master]:
            s.stop()
