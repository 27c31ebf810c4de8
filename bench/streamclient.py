"""Streaming client: time to first token and the inter-chunk gaps as the client sees them.

`--concurrency` workers each open streams back to back until `--streams` have run (a
bounded loop). For every stream: TTFT = request write → first content event; gaps =
time between consecutive content events. A proxy that buffers or coalesces events shows
up as gaps near zero followed by long ones (counted in `coalesced`: gaps under
`min(1 ms, nominal/10)`); added jitter shows as |gap - nominal| growing against the
direct run. Prints one JSON object.

Run: `python -m bench.streamclient --url … --body '{…"stream":true}' --gap-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Sequence

import aiohttp

from bench.bodies import Numbered
from bench.mock_upstream import run_fast
from bench.stats import summary_ms


class Tally:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.gaps: list[float] = []
        self.totals: list[float] = []
        self.chunks: list[int] = []
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_stream(session: aiohttp.ClientSession, url: str, body: Numbered,
                     headers: dict[str, str], tally: Tally, limit_s: float,
                     expect: int) -> None:
    started = time.perf_counter()
    last = 0.0
    count = 0
    try:
        async with asyncio.timeout(limit_s), session.post(url, data=body.next(),
                                                          headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                tally.error(f"status_{resp.status}")
                return
            done = False
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                if b"[DONE]" in line:
                    done = True
                    break
                if b'"content"' not in line:
                    continue  # role-only, usage or other bookkeeping events
                if count == 0:
                    tally.ttft.append(now - started)
                else:
                    tally.gaps.append(now - last)
                last = now
                count += 1
            if not done:
                tally.error("no_done")
                return
    except TimeoutError:
        tally.error("timeout")
        return
    except aiohttp.ClientError as err:
        tally.error(type(err).__name__)
        return
    if expect and count != expect:
        tally.error("wrong_chunk_count")  # lost, split or merged events
        return
    tally.totals.append(time.perf_counter() - started)
    tally.chunks.append(count)


async def run(url: str, body: bytes, headers: dict[str, str], concurrency: int, streams: int,
              gap_ms: float, limit_s: float, expect: int) -> dict[str, object]:
    tally = Tally()
    numbered = Numbered(body)
    remaining = streams
    connector = aiohttp.TCPConnector(limit=0)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one_stream(session, url, numbered, headers, tally, limit_s, expect)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    nominal = gap_ms / 1000
    tiny = min(0.001, nominal / 10)
    jitter = [abs(g - nominal) for g in tally.gaps]
    return {
        "streams": streams,
        "ok": len(tally.totals),
        "errors": tally.errors,
        "chunks_per_stream": {"min": min(tally.chunks, default=0),
                              "max": max(tally.chunks, default=0)},
        "ttft_ms": summary_ms(tally.ttft),
        "gap_ms": summary_ms(tally.gaps),
        "jitter_ms": summary_ms(jitter),
        "coalesced": sum(1 for g in tally.gaps if g < tiny),
        "chunks_total": sum(tally.chunks),
        "stream_ms": summary_ms(tally.totals),
        "nominal_gap_ms": gap_ms,
        "client_cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
                              3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.streamclient")
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="JSON request body with stream: true")
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--gap-ms", type=float, default=20.0, help="the upstream's nominal gap")
    p.add_argument("--timeout", type=float, default=30.0, help="per stream, seconds")
    p.add_argument("--expect-chunks", type=int, default=0,
                   help="content events each stream must carry (0: do not check)")
    args = p.parse_args(argv)
    headers = {"content-type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    out: dict[str, object] = {}

    async def go() -> None:
        out.update(await run(args.url, args.body.encode(), headers, args.concurrency,
                             args.streams, args.gap_ms, args.timeout, args.expect_chunks))

    run_fast(go())
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
