"""One run of the end-to-end routing experiment: simulator processes, a real gateway with
the policy under test, the seeded open-loop streaming workload, the faults on schedule,
and the ledger read back at the end.

Time to first token is measured at the client from each request's *intended* send time
(open loop: a client that falls behind is charged for it), to its first content chunk;
where each request went comes from the `x-turnout-deployment` response header, and its
cost and tokens from the gateway's own ledger (`GET /admin/events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.procs import Proc, free_port
from bench.routing_e2e_spec import (
    MODEL,
    POOL,
    TEAM,
    Experiment,
    Fault,
    Request,
    gateway_config,
    prompt_text,
    workload,
)

REPO = Path(__file__).resolve().parents[1]
_START_DELAY_S = 1.0  # between the gateway being ready and the first intended send


@dataclass(slots=True)
class Row:
    """What the client saw of one request, and the ledger's word on it."""

    t: float  # intended send time, seconds from the start
    prompt_tokens: int  # as generated (the ledger's count is in `tokens`)
    output_tokens: int
    status: int = 0  # 0: no HTTP answer (a connection error or the client's timeout)
    where: str = "-"  # the upstream's name (fast, slow, cloud), from the response header
    route: str = ""  # the x-turnout-route header: the policy's reason, and any failover
    ttft: float | None = None  # seconds from `t` to the first content chunk
    e2e: float | None = None
    error: str | None = None
    cost_usd: float = 0.0  # from the ledger
    tokens: int = 0  # prompt + completion tokens, from the ledger


@dataclass(slots=True)
class RunResult:
    policy: str
    seed: int
    rows: list[Row]
    events: int  # usage events found in the ledger
    wall_s: float
    gateway_log: str
    # Fault label → when its upstream was well again, seconds from the start: the fault's
    # end, or for a kill, when the restarted process first answered /health.
    recovered: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "seed": self.seed, "events": self.events,
                "wall_s": self.wall_s, "recovered": self.recovered,
                "rows": [asdict(r) for r in self.rows]}


class Fleet:
    """One simulator process per upstream, each in its own session so it can be stopped,
    killed and restarted on its port."""

    def __init__(self, exp: Experiment, workdir: Path, seed: int) -> None:
        self.exp, self.workdir, self.seed = exp, workdir, seed
        self.ports = {u.name: free_port() for u in exp.upstreams}
        self.procs: dict[str, Proc] = {}
        self.starts = 0
        try:
            for u in exp.upstreams:
                self.start(u.name)
            for name, proc in self.procs.items():
                proc.wait_http(self.url(name) + "/health", timeout=30)
        except BaseException:
            self.stop()
            raise

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def urls(self) -> dict[str, str]:
        return {name: self.url(name) for name in self.ports}

    def start(self, name: str) -> None:
        spec = self.exp.upstream(name)
        self.starts += 1
        argv = [sys.executable, "-m", "gateway.cli",
                *spec.sim_args(self.ports[name], self.seed * 100 + self.starts)]
        log = self.workdir / f"sim-{name}-{self.starts}.log"
        self.procs[name] = Proc(f"sim {name}", argv, log, core=None, cwd=REPO)

    def signal(self, name: str, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.procs[name].popen.wait()

    def stop(self) -> None:
        for name in self.procs:
            self.signal(name, signal.SIGCONT)  # a stopped process cannot take its SIGTERM
            self.procs[name].stop()

    def deployment_names(self) -> dict[str, str]:
        """x-turnout-deployment value → upstream name."""
        out = {f"{POOL}/127.0.0.1:{port}": name for name, port in self.ports.items()
               if self.exp.upstream(name).pool}
        out.update({f"{name}/{MODEL}": name for name in self.ports
                    if not self.exp.upstream(name).pool})
        return out


class Gateway:
    def __init__(self, cfg: dict[str, Any], workdir: Path, label: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = workdir / f"turnout-{label}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = workdir / f"gateway-{label}.log"
        self.proc = Proc("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                     str(path), "--port", str(self.port), "--workers", "1"],
                         self.log, core=None, cwd=REPO)
        try:
            self.proc.wait_http(self.url + "/healthz", timeout=60)
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()


async def _answers(http: aiohttp.ClientSession, url: str, limit_s: float = 30.0) -> None:
    """Until `url` answers 200 (a restarted simulator is up)."""
    async with asyncio.timeout(limit_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)


async def _inject(fleet: Fleet, http: aiohttp.ClientSession, fault: Fault, begin: bool) -> None:
    name = fault.target
    if fault.kind == "stop":
        fleet.signal(name, signal.SIGSTOP if begin else signal.SIGCONT)
    elif fault.kind == "kill":
        if begin:
            fleet.kill(name)
        else:
            fleet.start(name)  # the gateway's probes find it once it listens
            await _answers(http, fleet.url(name) + "/health")
    else:
        faults: dict[str, Any] = {}
        if begin and fault.kind == "slow":
            faults = {"extra_ttft_ms": fault.extra_ttft_ms}
        elif begin:
            faults = {"rate_429": 1.0, "retry_after_s": 1.0}
        async with http.post(fleet.url(name) + "/sim/faults", json=faults) as resp:
            resp.raise_for_status()


async def _faults(fleet: Fleet, http: aiohttp.ClientSession, exp: Experiment,
                  t0: float) -> dict[str, float]:
    """Inject each fault on schedule; when each one's upstream was well again."""
    loop = asyncio.get_running_loop()
    steps = sorted([(f.start, f, True) for f in exp.faults]
                   + [(f.end, f, False) for f in exp.faults], key=lambda s: s[0])
    recovered = {}
    for at, fault, begin in steps:
        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
        await _inject(fleet, http, fault, begin)
        if not begin:
            recovered[fault.label] = round(loop.time() - t0, 3)
    return recovered


async def _one(http: aiohttp.ClientSession, url: str, headers: dict[str, str], req: Request,
               seed: int, row: Row, names: dict[str, str], t0: float, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    body = orjson.dumps({
        "model": MODEL, "stream": True, "max_tokens": req.output_tokens,
        "messages": [{"role": "user", "content": prompt_text(req, seed)}]})
    intended = t0 + req.t
    await asyncio.sleep(max(0.0, intended - loop.time()))
    try:
        async with asyncio.timeout(limit_s), http.post(
                url, data=body, headers={**headers, "x-request-id": req.request_id}) as resp:
            row.status = resp.status
            row.where = names.get(resp.headers.get("x-turnout-deployment", ""), "-")
            row.route = resp.headers.get("x-turnout-route", "")
            if resp.status != 200:
                await resp.read()
                return
            async for line in resp.content:
                if row.ttft is None and line.startswith(b"data: {") and _has_content(line):
                    row.ttft = loop.time() - intended
            row.e2e = loop.time() - intended
    except (TimeoutError, aiohttp.ClientError) as err:
        row.error = type(err).__name__


def _has_content(line: bytes) -> bool:
    event = orjson.loads(line[6:])
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or ())


async def _ledger(http: aiohttp.ClientSession, url: str, admin_key: str, answered: int
                  ) -> list[dict[str, Any]]:
    """Usage events, once every answered request's is in (settlement is batched)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(f"{url}/admin/events", params={"team": TEAM, "format": "jsonl"},
                            headers={"authorization": f"Bearer {admin_key}"}) as resp:
            resp.raise_for_status()
            events = [orjson.loads(line) for line in (await resp.read()).splitlines() if line]
        if sum(e.get("status") == 200 for e in events) >= answered:
            break
        await asyncio.sleep(0.5)
    return events


async def _drive(exp: Experiment, seed: int, fleet: Fleet, gw_url: str, key: str,
                 admin_key: str) -> tuple[list[Row], int, dict[str, float]]:
    reqs = workload(exp, seed)
    rows = [Row(r.t, r.prompt_tokens, r.output_tokens) for r in reqs]
    names = fleet.deployment_names()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    # Idle connections closed after 2 s, under the gateway's keep-alive timeout, so a
    # request never lands on a connection the server is closing (a client-side setting).
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)
    limit_s = exp.first_token_s * 3 + 30
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = asyncio.get_running_loop().time() + _START_DELAY_S
        url = gw_url + "/v1/chat/completions"
        faults = asyncio.create_task(_faults(fleet, http, exp, t0))
        await asyncio.gather(*(_one(http, url, headers, r, seed, row, names, t0, limit_s)
                               for r, row in zip(reqs, rows, strict=True)))
        recovered = await faults
        events = await _ledger(http, gw_url, admin_key, sum(r.status == 200 for r in rows))
    by_id = {e["request_id"]: e for e in events}
    for r, row in zip(reqs, rows, strict=True):
        e = by_id.get(r.request_id)
        if e is not None and e.get("status") == 200:
            row.cost_usd = float(e["cost_usd"])
            row.tokens = int(e["prompt_tokens"]) + int(e["completion_tokens"])
    return rows, len(events), recovered


def run_policy(exp: Experiment, policy: str, seed: int, workdir: Path) -> RunResult:
    """Fresh simulators and a fresh gateway for one policy; the same workload and fault
    schedule as every other policy of this seed."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fleet = Fleet(exp, workdir, seed)
    try:
        key, admin_key = "tk-e2e-" + secrets.token_hex(16), secrets.token_hex(24)
        gw = Gateway(gateway_config(exp, fleet.urls(), policy, admin_key, key), workdir,
                     f"{policy}-{seed}")
        try:
            rows, events, recovered = asyncio.run(
                _drive(exp, seed, fleet, gw.url, key, admin_key))
        finally:
            gw.stop()
    finally:
        fleet.stop()
    return RunResult(policy, seed, rows, events, time.monotonic() - started, str(gw.log),
                     recovered)
