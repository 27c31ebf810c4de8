"""Half-open connection drill (issue #16): a gateway under N idle half-open connections
(each sent part of a request head, then nothing, re-opened as the gateway times it out)
while ordinary clients keep asking /healthz and for chat completions. Prints the
gateway's RSS before, during and after the attack and the latencies seen meanwhile.

    .venv/bin/python scripts/half_open_drill.py --connections 5000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfhost.sim import SimProfile, Simulator, ThreadedSim
from tests.support.procs import Gateway, RedisServer
from tests.support.rss import MIB, rss

HALF = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"


class Attacker:
    """Keeps `n` half-open connections to the gateway: open, half a head (or nothing),
    then silence; each one the gateway ends (a 408 after its header timeout, or a close
    after keep-alive's) is opened again."""

    def __init__(self, port: int, n: int, head: bytes) -> None:
        self.port, self.n, self.head = port, n, head
        self.open = 0
        self.opened = self.ended = self.refused = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._hold()) for _ in range(self.n)]

    async def _hold(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.refused += 1
                await asyncio.sleep(0.1)
                continue
            self.opened += 1
            self.open += 1
            try:
                writer.write(self.head)
                stop = asyncio.create_task(self._stop.wait())
                answer = asyncio.create_task(reader.read(4096))
                await asyncio.wait({stop, answer}, return_when=asyncio.FIRST_COMPLETED)
                if answer.done():
                    self.ended += 1
                    if answer.result().startswith(b"HTTP/1.1 503"):
                        self.refused += 1
                stop.cancel()
                answer.cancel()
            except OSError:
                self.ended += 1
            finally:
                self.open -= 1
                writer.close()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def traffic(url: str, until: float, lat: dict[str, list[float]],
                  fails: dict[str, int]) -> None:
    """One ordinary client: /healthz and a chat completion, in turn, every 50 ms."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            for name, call in (("healthz", client.get(url + "/healthz")),
                               ("chat", client.post(url + "/v1/chat/completions", json=body))):
                started = time.perf_counter()
                try:
                    resp = await call
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat[name].append((time.perf_counter() - started) * 1000)
                else:
                    fails[name] += 1
            await asyncio.sleep(0.05)


def summary(ms: list[float]) -> str:
    if not ms:
        return "none answered"
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else [ms[0]] * 99
    return (f"{len(ms)} answered, p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
            f"max {max(ms):.1f} ms")


async def drill(gw: Gateway, n: int, seconds: float, clients: int, warm: float,
                rounds: int, head: bytes, linger: float) -> dict[str, object]:
    pid = gw.proc.pid
    # Warm: the gateway's caches, pools and allocator at their working size.
    await asyncio.gather(*(traffic(gw.url, time.monotonic() + warm, {"healthz": [], "chat": []},
                                   {"healthz": 0, "chat": 0}) for _ in range(clients)))
    baseline = rss(pid)
    result: dict[str, object] = {"connections": n, "seconds": seconds, "clients": clients,
                                 "head_sent": head.decode(), "rss_before_mib":
                                 round(baseline / MIB, 1)}
    for i in range(1, rounds + 1):
        result[f"round_{i}"] = await attack(gw, n, seconds, clients, baseline, head, linger)
    return result


async def attack(gw: Gateway, n: int, seconds: float, clients: int, baseline: int,
                 head: bytes, linger: float) -> dict[str, object]:
    """One attack of `seconds` under ordinary traffic, then `linger` seconds of traffic
    alone, RSS read every 10 s of it."""
    pid = gw.proc.pid
    attacker = Attacker(gw.port, n, head)
    await attacker.start()
    ramp = time.monotonic()
    while attacker.open < n and time.monotonic() - ramp < 30:  # noqa: ASYNC110 (a count)
        await asyncio.sleep(0.1)
    ramp_s = time.monotonic() - ramp
    lat: dict[str, list[float]] = {"healthz": [], "chat": []}
    fails = {"healthz": 0, "chat": 0}
    peak, held = rss(pid), []
    until = time.monotonic() + seconds
    load = [asyncio.create_task(traffic(gw.url, until, lat, fails)) for _ in range(clients)]
    while time.monotonic() < until:
        await asyncio.sleep(0.5)
        peak = max(peak, rss(pid))
        held.append(attacker.open)
    await asyncio.gather(*load)
    during = rss(pid)
    await attacker.stop()
    after_lat: dict[str, list[float]] = {"healthz": [], "chat": []}
    stopped, curve = time.monotonic(), {}
    while (waited := time.monotonic() - stopped) < linger - 0.5:
        await traffic(gw.url, time.monotonic() + min(10, linger - waited), after_lat,
                      {"healthz": 0, "chat": 0})
        curve[f"{time.monotonic() - stopped:.0f}s"] = round(rss(pid) / MIB, 1)
    after = rss(pid)
    return {
        "ramp_s": round(ramp_s, 1), "half_open_held": [min(held), max(held)],
        "opened": attacker.opened, "timed_out_or_closed": attacker.ended,
        "refused": attacker.refused,
        "rss_mib": {"during": round(during / MIB, 1), "peak": round(peak / MIB, 1),
                    "after": round(after / MIB, 1), "after_curve": curve,
                    "after_vs_before_pct": round((after - baseline) / baseline * 100, 1)},
        "healthz_during": summary(lat["healthz"]), "chat_during": summary(lat["chat"]),
        "failures_during": fails, "healthz_after": summary(after_lat["healthz"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4, help="ordinary clients")
    parser.add_argument("--warm", type=float, default=20, help="seconds of traffic first")
    parser.add_argument("--rounds", type=int, default=1, help="attacks, one after another")
    parser.add_argument("--linger", type=float, default=10,
                        help="seconds of ordinary traffic after each attack (RSS every 10 s)")
    parser.add_argument("--silent", action="store_true",
                        help="the connections send nothing (else half a request head)")
    parser.add_argument("--redis", action="store_true", help="a Redis store (else in memory)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    parser.add_argument("--header-timeout", type=float, default=None,
                        help="server.limits.header_timeout_s (default: the gateway's)")
    args = parser.parse_args()
    server: dict[str, object] = {}
    if args.header_timeout is not None:
        server["limits"] = {"header_timeout_s": args.header_timeout}
    env = dict(item.split("=", 1) for item in args.env)
    with ThreadedSim(Simulator(SimProfile.named("instant"))) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)) if args.redis else None
        config: dict[str, object] = {
            "server": server,
            "metering": {"stream_maxlen": 1000},  # a ledger that stops growing
            "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
            "models": {"m": {"deployments": [{"target": "sim", "model": "m"}]}}}
        if redis is not None:
            config["redis"] = {"url": redis.url}
        gw = Gateway(config, Path(tmp), env=env)
        try:
            result = asyncio.run(drill(gw, args.connections, args.seconds, args.clients,
                                       args.warm, args.rounds,
                                       b"" if args.silent else HALF, args.linger))
        finally:
            gw.stop()
            if redis is not None:
                redis.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
