"""Run one measurement against one system: wrk (closed loop), bench.openloop (fixed
rate) or bench.streamclient (TTFT and gaps), each as a child pinned to the auxiliary core.

Each returns its client's figures plus `loadgen_cpu_s`, the generator's own CPU time
(from the harness's reaped-children rusage), which the report turns into a utilisation
to show the generator had headroom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.install import REPO
from bench.procs import children_cpu_seconds, pinned

LUA = Path(__file__).resolve().parent / "wrk_post.lua"


class LoadError(RuntimeError):
    pass


def _header_lines(headers: dict[str, str]) -> list[str]:
    return [f"{k}: {v}" for k, v in headers.items()]


def _run(argv: list[str], core: int | None, timeout: float,
         env: dict[str, str] | None = None) -> tuple[str, float]:
    before = children_cpu_seconds()
    try:
        proc = subprocess.run(pinned(argv, core), capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, **(env or {})}, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as err:
        raise LoadError(f"{argv[0]} ran past {timeout:g}s") from err
    cpu = children_cpu_seconds() - before
    if proc.returncode != 0:
        raise LoadError(f"{' '.join(argv[:3])}… exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout)[-400:]}")
    return proc.stdout, cpu


def wrk(wrk_exe: str, url: str, body: bytes, headers: dict[str, str], *, concurrency: int,
        duration: float, core: int | None, timeout_s: float = 10) -> dict[str, Any]:
    """Closed loop: `concurrency` connections, each sending its next request on a reply."""
    argv = [wrk_exe, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s:g}s", "-s", str(LUA), url]
    env = {"BENCH_BODY": body.decode(), "BENCH_HEADERS": "\n".join(_header_lines(headers)),
           "BENCH_SALT": os.urandom(3).hex()}
    out, cpu = _run(argv, core, duration + timeout_s + 30, env)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise LoadError(f"wrk printed no result: {out[-400:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors"]
    lat = {k: round(v / 1000, 4) for k, v in raw["latency_us"].items()}
    non_2xx = errors["status"]
    return {
        "requests": raw["requests"],
        "ok": raw["requests"] - non_2xx,
        "rps": round((raw["requests"] - non_2xx) / seconds, 1),
        "errors": sum(errors.values()),
        "error_detail": errors,
        "latency_ms": lat,
        "duration_s": round(seconds, 3),
        "loadgen_cpu_s": round(cpu, 3),
    }


def openloop(url: str, body: bytes, headers: dict[str, str], *, rate: float, duration: float,
             core: int | None, max_conns: int = 256, drain: float = 5.0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.openloop", "--url", url, "--rate", str(rate),
            "--duration", str(duration), "--body", body.decode(), "--max-conns", str(max_conns),
            "--drain", str(drain)]
    for h in _header_lines(headers):
        argv += ["--header", h]
    out, cpu = _run(argv, core, duration + drain + 60)
    res: dict[str, Any] = json.loads(out)
    res["errors"] = res["status_errors"] + res["conn_errors"] + res["unfinished"]
    res["loadgen_cpu_s"] = round(cpu, 3)
    return res


def streams(url: str, body: bytes, headers: dict[str, str], *, concurrency: int, count: int,
            gap_ms: float, core: int | None, expected_chunks: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.streamclient", "--url", url, "--body", body.decode(),
            "--concurrency", str(concurrency), "--streams", str(count), "--gap-ms", str(gap_ms),
            "--expect-chunks", str(expected_chunks)]
    for h in _header_lines(headers):
        argv += ["--header", h]
    budget = (count / max(1, concurrency) + 1) * (expected_chunks * gap_ms / 1000 + 30)
    out, cpu = _run(argv, core, budget)
    res: dict[str, Any] = json.loads(out)
    res["error_detail"] = res.pop("errors")
    res["errors"] = sum(res["error_detail"].values())
    res["loadgen_cpu_s"] = round(cpu, 3)
    return res


def memprobe(url: str, body: bytes, stream_body: bytes, headers: dict[str, str], *, pgid: int,
             conns: int, streams: int, core: int | None) -> dict[str, Any]:
    """RSS per idle keep-alive connection and per in-flight stream (bench/memprobe.py)."""
    argv = [sys.executable, "-m", "bench.memprobe", "--url", url, "--pgid", str(pgid),
            "--body", body.decode(), "--stream-body", stream_body.decode(),
            "--conns", str(conns), "--streams", str(streams)]
    for h in _header_lines(headers):
        argv += ["--header", h]
    out, cpu = _run(argv, core, 120)
    res: dict[str, Any] = json.loads(out)
    res["errors"] = 0
    res["loadgen_cpu_s"] = round(cpu, 3)
    return res
