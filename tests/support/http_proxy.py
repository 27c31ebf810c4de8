"""A real HTTP proxy on loopback, as an enterprise egress proxy behaves: CONNECT tunnels
(for https) and absolute-form requests (for http), optional Basic authentication (407
without it), and names it resolves itself (`hosts`), so a test can prove a request went
through it: the client cannot resolve those names on its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib


class HttpProxy:
    def __init__(self, *, user: str | None = None, password: str = "",
                 hosts: dict[str, str] | None = None) -> None:
        self.auth = (None if user is None
                     else "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        self.hosts = hosts or {}  # name → address: the proxy's own DNS
        self.seen: list[str] = []  # request lines, in order (CONNECT host:port, GET http://…)
        self.authorizations: list[str | None] = []  # proxy-authorization of each
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HttpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (f.partition(":") for f in fields if f)}
            self.seen.append(line)
            self.authorizations.append(headers.get("proxy-authorization"))
            if self.auth is not None and headers.get("proxy-authorization") != self.auth:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"proxy-authenticate: Basic realm=\"t\"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await self._open(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await self._pipe(reader, writer, up_reader, up_writer)
            else:  # absolute form: to the origin as it came (origins accept that form)
                rest = target.split("://", 1)[1]
                authority = rest.split("/", 1)[0]
                host, _, port = authority.rpartition(":")
                up_reader, up_writer = await self._open(host or authority, int(port or 80))
                # Proxy-Authorization is for the proxy (hop-by-hop): not passed on.
                up_writer.write(b"".join(line for line in head.splitlines(keepends=True)
                                         if not line.lower().startswith(b"proxy-auth")))
                await self._pipe(reader, writer, up_reader, up_writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _open(self, host: str, port: int
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.hosts.get(host, host), port)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            up_writer.close()
