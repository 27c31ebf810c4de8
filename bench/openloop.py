"""Open-loop load: send at a fixed rate whatever the server does, and time from the
*intended* send time, so a server that falls behind is charged for the queue it causes
(no coordinated omission, unlike a closed loop or wrk's `delay()`).

Raw asyncio protocol with httptools' C parser on uvloop, prebuilt request bytes and a
keep-alive connection pool capped at `--max-conns`; when every connection is busy,
requests wait in a backlog (still timed from their intended time). The schedule is fixed
(`rate * duration` requests), and after it the run waits at most `--drain` seconds for
stragglers, so it always ends. Prints one JSON object.

Run: `python -m bench.openloop --url http://127.0.0.1:9100/v1/chat/completions --rate 1000`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools

from bench.bodies import Numbered
from bench.mock_upstream import run_fast
from bench.stats import summary_ms


class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # from the intended send time
        self.service: list[float] = []  # from the actual write: the server's share only
        self.status_errors = 0
        self.conn_errors = 0
        self.completed_in_window = 0
        self.send_lag: list[float] = []


class Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.intended = 0.0
        self.sent_at = 0.0
        self.busy = False
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._broken()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._broken()

    def _broken(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.pool.lost(self)

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.intended = intended
        self.sent_at = time.perf_counter()
        self.busy = True
        self.transport.write(self.pool.request.next())

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        # Decide on keep-alive first: done() may start the next request on this connection.
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
        self.busy = False
        self.pool.done(self, self.status)


class Pool:
    def __init__(self, url: str, request: Numbered, max_conns: int, result: Result,
                 window_end: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.request = request
        self.max_conns = max_conns
        self.result = result
        self.window_end = window_end
        self.loop = asyncio.get_running_loop()
        self.idle: list[Conn] = []
        self.conns: set[Conn] = set()
        self.opening = 0
        self.backlog: collections.deque[float] = collections.deque()
        self.outstanding = 0
        self.all_done = asyncio.Event()

    def submit(self, intended: float) -> None:
        self.outstanding += 1
        self.all_done.clear()
        self.backlog.append(intended)
        self._pump()

    def _pump(self) -> None:
        while self.backlog and self.idle:
            conn = self.idle.pop()
            if conn.transport is None:
                continue
            conn.send(self.backlog.popleft())
        room = self.max_conns - len(self.conns) - self.opening
        wanted = len(self.backlog) - self.opening
        for _ in range(max(0, min(room, wanted))):
            self.opening += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: Conn(self), self.host, self.port)
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self.opening -= 1
            if self.backlog:
                self.backlog.popleft()
                self._finish_error()
            return
        self.opening -= 1
        self.conns.add(conn)
        self.idle.append(conn)
        self._pump()

    def done(self, conn: Conn, status: int) -> None:
        now = time.perf_counter()
        if 200 <= status < 300:
            self.result.latencies.append(now - conn.intended)
            self.result.service.append(now - conn.sent_at)
            if now <= self.window_end:
                self.result.completed_in_window += 1
        else:
            self.result.status_errors += 1
        self._settle()
        if conn.transport is not None:
            self.idle.append(conn)
        self._pump()

    def lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self._finish_error()
        self._pump()

    def _finish_error(self) -> None:
        self.result.conn_errors += 1
        self._settle()

    def _settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.all_done.set()

    def close(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()


def build_request(url: str, body: bytes, headers: Sequence[str]) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(url: str, rate: float, duration: float, body: bytes, headers: Sequence[str],
              max_conns: int, drain: float) -> dict[str, object]:
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    total = max(1, int(rate * duration))
    result = Result()
    start = time.perf_counter() + 0.05
    pool = Pool(url, Numbered(build_request(url, body, headers)), max_conns, result,
                start + duration)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    i = 0
    while i < total:
        now = time.perf_counter()
        due = start + i / rate
        if due > now:
            # uvloop's timers have 1 ms resolution: a shorter sleep would busy-spin, so
            # sleep at least 1 ms and send every slot that came due meanwhile (below).
            await asyncio.sleep(max(due - now, 0.001))
            continue
        # Catch up on every slot that came due while we slept: the schedule never slips.
        while i < total and start + i / rate <= now:
            due = start + i / rate
            result.send_lag.append(now - due)
            pool.submit(due)
            i += 1
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.all_done.wait(), timeout=drain)
    unfinished = pool.outstanding
    pool.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "offered_rps": rate,
        "duration_s": duration,
        "sent": total,
        "completed": len(result.latencies),
        "achieved_rps": round(result.completed_in_window / duration, 2),
        "status_errors": result.status_errors,
        "conn_errors": result.conn_errors,
        "unfinished": unfinished,
        "connections": len(pool.conns),
        "latency_ms": summary_ms(result.latencies),
        "service_ms": summary_ms(result.service),
        "send_lag_ms": summary_ms(result.send_lag),
        "client_cpu_s": round(cpu_s, 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.openloop")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second offered")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--body", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for stragglers")
    args = p.parse_args(argv)
    out: dict[str, object] = {}

    async def go() -> None:
        out.update(await run(args.url, args.rate, args.duration, args.body.encode(),
                             args.header, args.max_conns, args.drain))

    run_fast(go())
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
