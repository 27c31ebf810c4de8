"""The floor: the least a Python proxy can do, so Turnout's overhead has a fixed reference.

aiohttp's low-level `web.Server` in front, one pooled `aiohttp.ClientSession` behind, on
uvloop: read the body, send it upstream unchanged to the same path, relay the answer
(streamed responses chunk by chunk as they arrive). No parsing, routing or validation:
whatever Turnout does beyond this is its own overhead.

Run: `python -m bench.floor_proxy --port 9200 --upstream http://127.0.0.1:9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from bench.mock_upstream import run_fast

# Hop-by-hop and framing headers are the proxy's own business on each side.
_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                   "content-encoding"})


class Floor:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        data=body, headers=headers) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _DROP}
            if not up.content_type.startswith("text/event-stream"):
                return web.Response(body=await up.read(), status=up.status, headers=out_headers)
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp


async def serve(host: str, port: int, upstream: str) -> None:
    floor = Floor(upstream)
    await floor.start()
    server = web.Server(floor.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor proxy on http://{host}:{port} → {upstream}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        assert floor.session is not None
        await floor.session.close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_proxy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="server root, e.g. http://127.0.0.1:9100")
    args = p.parse_args(argv)
    run_fast(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
