"""What a connection and a stream cost a proxy in memory: RSS of its process group (from
/proc) before and after opening `--conns` keep-alive connections that each made one request
and then sit idle, and before and after `--streams` streams that have each received their
first content event (all still in flight). Prints one JSON object with the bytes per idle
connection and per in-flight stream.

Run: `python -m bench.memprobe --url … --pgid PID --body '{…}' --stream-body '{…}'`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from bench.bodies import Numbered
from bench.mock_upstream import run_fast
from bench.procs import group_rss_bytes

_OPENING = 64  # connections being opened at once


def _request(url: str, body: bytes, headers: Sequence[str]) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _settled_rss(pgid: int, wait_s: float = 1.0) -> int:
    await asyncio.sleep(wait_s)  # the proxy finishes its bookkeeping for what just happened
    return group_rss_bytes(pgid)


async def _idle(url: str, request: Numbered, headers: Sequence[str], gate: asyncio.Semaphore,
                held: list[asyncio.StreamWriter]) -> None:
    parts = urlsplit(url)
    async with gate:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(_request(url, request.next(), headers))
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        await reader.readexactly(length)
    held.append(writer)


async def _streaming(url: str, request: Numbered, headers: Sequence[str],
                     gate: asyncio.Semaphore, held: list[asyncio.StreamWriter]) -> None:
    parts = urlsplit(url)
    async with gate:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(_request(url, request.next(), headers))
        while b'"content"' not in (line := await reader.readline()):
            if not line:
                raise ConnectionError("the stream ended before its first content event")
    held.append(writer)


async def _close(held: list[asyncio.StreamWriter]) -> None:
    for w in held:
        w.close()
    held.clear()


async def run(url: str, headers: Sequence[str], body: bytes, stream_body: bytes, pgid: int,
              conns: int, streams: int) -> dict[str, object]:
    gate = asyncio.Semaphore(_OPENING)
    held: list[asyncio.StreamWriter] = []
    base = await _settled_rss(pgid)
    plain = Numbered(body)
    await asyncio.gather(*(_idle(url, plain, headers, gate, held) for _ in range(conns)))
    idle = await _settled_rss(pgid)
    await _close(held)
    after_idle = await _settled_rss(pgid)
    t0 = time.monotonic()
    streamed = Numbered(stream_body)
    await asyncio.gather(*(_streaming(url, streamed, headers, gate, held)
                           for _ in range(streams)))
    opened_s = time.monotonic() - t0
    in_flight = await _settled_rss(pgid, 0.2)  # before the first of them ends
    await _close(held)
    return {
        "conns": conns, "streams": streams, "rss_base": base, "rss_idle_conns": idle,
        "rss_after_idle": after_idle, "rss_streams": in_flight,
        "bytes_per_idle_conn": round((idle - base) / max(1, conns)),
        "bytes_per_stream": round((in_flight - after_idle) / streams) if streams else None,
        "streams_opened_s": round(opened_s, 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memprobe")
    p.add_argument("--url", required=True)
    p.add_argument("--pgid", type=int, required=True, help="the proxy's process group")
    p.add_argument("--body", required=True)
    p.add_argument("--stream-body", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--streams", type=int, default=64)
    args = p.parse_args(argv)
    out: dict[str, object] = {}

    async def go() -> None:
        out.update(await run(args.url, args.header, args.body.encode(),
                             args.stream_body.encode(), args.pgid, args.conns, args.streams))

    run_fast(go())
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
