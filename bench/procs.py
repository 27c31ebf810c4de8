"""Child processes of the harness: start pinned, wait until ready, account CPU, stop.

CPU is read from /proc (utime + stime of every process in the child's process group,
threads included), so a run can report how busy the system under test, the mock and
the load generator were, and how much of the machine something else was using.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`taskset -c CORE argv…` (taskset execs, so the pid is the program's own)."""
    if core is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Proc:
    """A long-running child in its own session (so stop() reaches its whole group)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, core: int | None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(pinned(argv, core), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, **(env or {})}, cwd=cwd,
                                          start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pid)

    def wait_http(self, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail fast with the log tail if the child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n"
                                   f"{tail(self.log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {url} not ready after {timeout:g}s:\n{tail(self.log)}")

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2:].split()


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in process group `pgid`."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        f = _stat_fields(pid)
        # After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12)
        if f is not None and len(f) > 12 and f[2] == str(pgid):
            total += int(f[11]) + int(f[12])
    return total / _TICK


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every live process in process group `pgid`."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        f = _stat_fields(pid)
        # After the name: … rss(21), in pages
        if f is not None and len(f) > 21 and f[2] == str(pgid):
            total += int(f[21]) * page
    return total


def core_busy() -> dict[int, dict[str, float]]:
    """Per core, seconds since boot from /proc/stat: `busy` (processes and kernel, but not
    softirq), `softirq` (mostly loopback TCP processing, which no process is charged for),
    `steal` (time the hypervisor gave to other guests) and `total`."""
    out: dict[int, dict[str, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            # user nice system idle iowait irq softirq steal
            n = [int(v) / _TICK for v in vals[:8]]
            total = sum(n)
            out[int(name[3:])] = {"busy": total - n[3] - n[4] - n[6] - n[7],
                                  "softirq": n[6], "steal": n[7], "total": total}
    return out


def machine_seconds() -> dict[str, float]:
    """`busy`, `softirq` and `steal` seconds since boot, summed over all cores."""
    cores = core_busy().values()
    return {k: sum(c[k] for c in cores) for k in ("busy", "softirq", "steal")}


def children_cpu_seconds() -> float:
    """CPU of the harness's reaped children: a delta around a subprocess.run is its CPU."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
