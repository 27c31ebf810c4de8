"""Our server protocol (gateway/wire/server.py) under a real uvicorn in this process
(uvloop, as `turnout serve` runs it) with a small ASGI app whose behaviour is chosen by
path, and a raw socket client that sends exactly the bytes a test chooses. `protocol`
picks the protocol: ours (`Probe`, optionally with `ServerLimits`) or uvicorn's own
(`"httptools"`), for the differential suite."""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gateway.wire.limits import ServerLimits
from gateway.wire.server import HttpProtocol

WAIT = 10.0  # guards against hangs only: every wait below is on an event, not a clock

Scope = dict[str, Any]


class Probe(HttpProtocol):
    """The protocol, recording instances and when uvicorn asks for a graceful stop."""

    live: list[Probe] = []
    shutdown_called = threading.Event()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        Probe.live.append(self)

    def shutdown(self) -> None:
        Probe.shutdown_called.set()
        super().shutdown()


class App:
    """Behaviour by path; tells the test what it saw through thread-safe objects."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.seen: queue.Queue[Any] = queue.Queue()
        self.order: list[str] = []
        self.buffer_peak = 0

    def gate(self, name: str) -> threading.Event:
        return self.gates.setdefault(name, threading.Event())

    async def wait(self, name: str) -> None:
        assert await asyncio.to_thread(self.gate(name).wait, WAIT), f"gate {name} never opened"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                scope["state"]["answer"] = 42
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        self.order.append(f"start {path}")
        if path == "/parts":  # each body message as it comes
            while True:
                msg = await receive()
                self.seen.put((msg["body"], msg["more_body"]))
                if not msg["more_body"]:
                    break
            await respond(send, b"done")
        elif path == "/stream":  # chunk i+1 only once the client has chunk i
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(3):
                await send({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                            "more_body": True})
                await self.wait(f"read-{i}")
            await send({"type": "http.response.body", "body": b""})
        elif path == "/watch":  # body read: the next receive() waits for the client to go
            await receive()
            self.gate("watching").set()
            self.seen.put((await receive())["type"])
        elif path == "/slow":
            self.gate("slow-started").set()
            await self.wait("release")
            await respond(send, b"slow")
            self.order.append("done")
        elif path == "/nolength":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part1,", "more_body": True})
            await send({"type": "http.response.body", "body": b"part2"})
        elif path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/error":
            raise RuntimeError("secret detail")
        elif path == "/error-after-start":  # head held back, so a 500 can still go out
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"5")]})
            raise RuntimeError("secret detail")
        elif path == "/silent":
            return
        elif path == "/bad-header":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-injected", b"a\r\nset-cookie: evil=1")]})
        elif path == "/big":  # far more than socket buffers hold: send must wait to drain
            proto = next(p for p in Probe.live if p.active and p.active.scope is scope)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % (32 << 20))]})
            for i in range(32):
                await send({"type": "http.response.body", "body": bytes([65 + i]) * (1 << 20),
                            "more_body": i < 31})
                self.buffer_peak = max(self.buffer_peak,
                                       proto.transport.get_write_buffer_size())
        else:  # echo the request
            body = b""
            while True:
                msg = await receive()
                body += msg["body"]
                if not msg["more_body"]:
                    break
            info = {k: scope[k] for k in ("type", "http_version", "method", "scheme", "path",
                                          "root_path", "client", "server", "asgi")}
            info |= {"raw_path": scope["raw_path"].decode(), "body": body.decode(),
                     "query_string": scope["query_string"].decode(),
                     "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                     "state": scope["state"].get("answer")}
            await respond(send, json.dumps(info).encode(), b"application/json")
            self.seen.put((await receive())["type"])  # response done: disconnect at once


async def respond(send: Any, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class Server:
    def __init__(self, app: App, limits: ServerLimits | None = None,
                 protocol: Any = None, **options: Any) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)  # clients may connect at once: uvicorn accepts once started
        self.port = self.sock.getsockname()[1]
        if protocol is None:
            protocol = Probe if limits is None else functools.partial(Probe, limits=limits)
        options.setdefault("loop", "uvloop")  # as `turnout serve` runs it
        config = uvicorn.Config(app, http=protocol, lifespan="on", log_config=None,
                                timeout_graceful_shutdown=WAIT, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],))
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        state = self.server.server_state  # every request's task and connection accounted for
        assert not state.tasks and not state.connections


@contextmanager
def serving(limits: ServerLimits | None = None, **options: Any) -> Iterator[Server]:
    server = Server(App(), limits, **options)
    try:
        yield server
    finally:
        server.stop()


class Client:
    """A raw HTTP/1.1 client on one socket: exactly the bytes we choose."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        data = self.sock.recv(1 << 20)
        self.buf += data
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._more(), "connection closed mid-line"
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._more(), "connection closed mid-body"
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> tuple[int, dict[str, str]]:
        status = int(self.line().split()[1])
        headers: dict[str, str] = {}
        while line := self.line():
            name, value = line.decode().split(":", 1)
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
        return status, headers

    def chunk(self) -> bytes:
        """One chunk of a chunked body; b"" for the last (no trailers)."""
        size = int(self.line(), 16)
        data = self.exactly(size)
        assert self.exactly(2) == b"\r\n"
        return data

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if head_only or status in (204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self.exactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while part := self.chunk():
                body += part
            return status, headers, body
        return status, headers, self.rest()

    def rest(self) -> bytes:
        while self._more():
            pass
        data, self.buf = self.buf, b""
        return data

    def closed(self) -> bool:
        return self.rest() == b""

    def close(self) -> None:
        self.sock.close()


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


