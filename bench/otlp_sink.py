"""A local OTLP/HTTP trace receiver for the bench: it accepts what an exporter sends to
`POST /v1/traces` (protobuf or JSON), answers 200 with an empty export response, and
counts requests and bytes (`GET /stats`), so a traced gateway does its whole export
(encoding, HTTP, retries) against something real without a collector's own cost.

Run: `python -m bench.otlp_sink --port 4318`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence

from aiohttp import web

from bench.mock_upstream import run_fast


class Sink:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        self.bytes += len(body)
        # An empty ExportTraceServiceResponse: no bytes in protobuf, `{}` in JSON.
        if request.content_type == "application/json":
            return web.Response(body=b"{}", content_type="application/json")
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "bytes": self.bytes})


async def serve(host: str, port: int) -> None:
    sink = Sink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.traces)
    app.router.add_get("/stats", sink.stats)
    app.router.add_get("/health", sink.stats)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"otlp_sink": f"http://{host}:{port}"}), flush=True)
    try:
        await stop.wait()
    finally:
        print(json.dumps({"requests": sink.requests, "bytes": sink.bytes}), flush=True)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    run_fast(serve(args.host, args.port))


if __name__ == "__main__":
    main()
