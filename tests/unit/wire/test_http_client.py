"""The upstream HTTP client (gateway/wire/http_client.py) against real servers on loopback whose
bytes on the wire each test controls: keep-alive reuse, stale connections, framing,
compression, deadlines, back-pressure, header injection and TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
import trustme

from gateway.canonical import FailureKind, UpstreamFailure
from gateway.wire.http_client import CUT_OFF, UpstreamClient
from tests.support.raw_http import OK, Server, first_then_ok, post, serve_forever


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(connect_timeout=2.0)
    await c.start()
    yield c
    await c.close()


async def test_keep_alive_reuses_one_connection(client: UpstreamClient) -> None:
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start()
    for _ in range(5):
        resp = await client.send(post(url))
        assert (resp.status, await resp.read()) == (200, b'{"ok":true}')
        assert resp.headers["content-type"] == "application/json"
        resp.release()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert f"host: {url.removeprefix('http://')}".encode() in first
    assert b"content-length: 2\r\n" in first and b"x-api-key: k\r\n" in first
    assert first.endswith(b"\r\n\r\n{}")
    await server.stop()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
        client: UpstreamClient) -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(OK)  # says keep-alive (HTTP/1.1's default), then closes anyway
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        gone.set()

    server = Server(handler)
    url = await server.start()
    resp = await client.send(post(url))
    assert await resp.read() == b'{"ok":true}'
    conn = resp._conn
    resp.release()
    await gone.wait()

    async def noticed() -> None:  # the client has seen the close (a loop turn or two)
        while not conn.closed:  # noqa: ASYNC110 (a protocol's flag: no event to await)
            await asyncio.sleep(0)

    await asyncio.wait_for(noticed(), 5)
    resp = await client.send(post(url))  # a fresh connection, no error
    assert await resp.read() == b'{"ok":true}'
    resp.release()
    assert server.connections == 2 and len(server.requests) == 2
    await server.stop()


async def test_a_request_lost_with_its_connection_is_never_resent(
        client: UpstreamClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)  # takes the second request, then drops it

    server = Server(handler)
    url = await server.start()
    resp = await client.send(post(url))
    await resp.read()
    resp.release()
    with pytest.raises(UpstreamFailure) as err:  # the server may have acted on it
        await client.send(post(url))
    assert err.value.kind is FailureKind.SERVER
    assert server.connections == 1 and len(server.requests) == 2
    await server.stop()


async def test_interim_1xx_heads_are_skipped(client: UpstreamClient) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    for _ in range(2):
        resp = await client.send(post(url))
        assert (resp.status, await resp.read()) == (200, b'{"ok":true}')
        assert "link" not in resp.headers
        resp.release()
    assert server.connections == 1
    await server.stop()


async def test_a_connection_that_answers_twice_is_dropped(client: UpstreamClient) -> None:
    def answer(n: int) -> bytes:
        body = b'{"for":%d}' % n
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        while await server.read_request(reader) is not None:
            count = len(server.requests)
            writer.write(answer(count) + (answer(99) if count == 1 else b""))
            await writer.drain()

    server = Server(handler)
    url = await server.start()
    bodies = []
    for _ in range(2):
        resp = await client.send(post(url))
        bodies.append(await resp.read())
        resp.release()
    assert bodies == [b'{"for":1}', b'{"for":2}']  # never the stray answer
    assert server.connections == 2
    await server.stop()


async def test_chunked_body_whole_and_by_line(client: UpstreamClient) -> None:
    events = [b"data: one\n\n", b"data: two\n", b"\ndata: [DONE]\n\n"]
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" \
             b"transfer-encoding: chunked\r\n\r\n"
    answer += b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    assert await resp.read() == b"".join(events)
    resp.release()
    resp = await client.send(post(url))
    lines = []
    while line := await resp.readline():
        lines.append(line)
    assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"data: [DONE]\n", b"\n"]
    resp.release()
    assert server.connections == 1
    await server.stop()


PAYLOAD = b'{"text":"' + b"abc" * 1000 + b'"}'


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(wbits=-15)
    return z.compress(data) + z.flush()


@pytest.mark.parametrize(("coding", "packed"), [
    ("gzip", gzip.compress(PAYLOAD)),
    ("GZIP", gzip.compress(PAYLOAD)),
    ("deflate", zlib.compress(PAYLOAD)),
    ("deflate", _raw_deflate(PAYLOAD)),
])
async def test_compressed_bodies_are_decoded(client: UpstreamClient, coding: str,
                                             packed: bytes) -> None:
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n"
              % (coding.encode(), len(packed))) + packed
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    assert await resp.read() == PAYLOAD
    resp.release()
    assert b"accept-encoding: gzip, deflate\r\n" in server.requests[0]
    await server.stop()


@pytest.mark.parametrize("packed", [
    gzip.compress(PAYLOAD)[:40],  # truncated
    gzip.compress(PAYLOAD)[:20] + b"\xff" * 40 + gzip.compress(PAYLOAD)[60:],  # corrupt
])
async def test_a_bad_compressed_body_is_a_protocol_failure(client: UpstreamClient,
                                                            packed: bytes) -> None:
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
              % len(packed)) + packed
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    with pytest.raises(UpstreamFailure) as err:
        await resp.read()
    assert err.value.kind is FailureKind.PROTOCOL and "compressed" in err.value.message
    resp.release()
    resp = await client.send(post(url))  # not reused after the broken body
    with pytest.raises(UpstreamFailure):
        await resp.read()
    resp.release()
    assert server.connections == 2
    await server.stop()


async def test_an_unsupported_content_encoding_is_a_protocol_failure(
        client: UpstreamClient) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 3\r\n\r\nabc"
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    with pytest.raises(UpstreamFailure) as err:
        await client.send(post(url))
    assert err.value.kind is FailureKind.PROTOCOL and "br" in err.value.message
    await server.stop()


async def test_a_body_delimited_by_close_is_read_whole(client: UpstreamClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    server = Server(handler)
    url = await server.start()
    for _ in range(2):
        resp = await client.send(post(url))
        assert await resp.read() == b"all of it"
        resp.release()
    assert server.connections == 2  # not kept: the server said close
    await server.stop()


@pytest.mark.parametrize(("answer", "reset"), [
    # framed by its length, ended early by an orderly close
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", False),
    # delimited by the connection's end, which comes as a reset: not the end of the body
    (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"choices\": [", True),
])
async def test_a_body_cut_short_is_a_protocol_failure(client: UpstreamClient, answer: bytes,
                                                      reset: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(answer)
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # linger 0: a reset, not an orderly end

    server = Server(handler)
    url = await server.start()
    resp = await client.send(post(url))
    with pytest.raises(UpstreamFailure) as err:
        await resp.read()
    assert err.value.kind is FailureKind.PROTOCOL and err.value.message == CUT_OFF
    resp.close()
    await server.stop()


async def test_garbage_from_the_server_is_a_protocol_failure(client: UpstreamClient) -> None:
    server = Server(lambda r, w, n: serve_forever(server, r, w, b"SSH-2.0-OpenSSH\r\n\r\n"))
    url = await server.start()
    with pytest.raises(UpstreamFailure) as err:
        await client.send(post(url))
    assert err.value.kind is FailureKind.PROTOCOL
    await server.stop()


async def test_deadlines_raise_timeout_and_drop_the_connection(
        client: UpstreamClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        if n == 2:  # the head at once, then a stalled body
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"6\r\ndata: \r\n")
            await writer.drain()
        await server.read_request(reader)  # returns None once the client hung up

    server = Server(handler)
    url = await server.start()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await client.send(post(url), loop.time() + 0.2)
    await asyncio.wait_for(server.closed.wait(), 5)  # the client dropped the connection
    server.closed.clear()
    resp = await client.send(post(url), loop.time() + 5)
    with pytest.raises(TimeoutError):
        await resp.readline(loop.time() + 0.2)  # "data: " has no line end yet
    resp.close()
    await asyncio.wait_for(server.closed.wait(), 5)
    await server.stop()


async def test_connect_refused_is_a_connect_failure(client: UpstreamClient) -> None:
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start()
    await server.stop()
    assert server._server is not None
    await server._server.wait_closed()
    with pytest.raises(UpstreamFailure) as err:
        await client.send(post(url))
    assert err.value.kind is FailureKind.CONNECT


async def test_a_line_break_in_a_header_is_refused_before_sending(
        client: UpstreamClient) -> None:
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start()
    for bad in ({"x-a": "1\r\nx-injected: 2"}, {"x-a\nb": "1"}, {"x-a": "\u2603"}):
        with pytest.raises(UpstreamFailure) as err:
            await client.send(post(url, bad))
        assert err.value.kind is FailureKind.PROTOCOL
    assert server.requests == []
    await server.stop()


async def test_a_large_body_read_whole_leaves_the_connection_usable(
        client: UpstreamClient) -> None:
    big = b"x" * 300_000  # past the point where readline() would stop reading
    server = first_then_ok(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big))
    url = await server.start()
    resp = await client.send(post(url))
    assert await resp.read() == big
    resp.release()
    resp = await client.send(post(url), asyncio.get_running_loop().time() + 5)
    assert await resp.read() == b'{"ok":true}'
    resp.release()
    assert server.connections == 1
    await server.stop()


async def test_a_large_streamed_body_is_read_line_by_line(client: UpstreamClient) -> None:
    line = b"data: " + b"x" * 1000 + b"\n\n"
    count = 2000  # ~2 MB: well past the point where the client stops reading

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(line) * count))
        for _ in range(count):
            writer.write(line)
        await writer.drain()
        await serve_forever(server, reader, writer, OK)

    server = Server(handler)
    url = await server.start()
    resp = await client.send(post(url))
    seen = 0
    while got := await resp.readline():
        seen += got == line[:-1]
    assert seen == count
    resp.release()
    resp = await client.send(post(url))  # the connection was kept and is in step
    assert await resp.read() == b'{"ok":true}'
    resp.release()
    assert server.connections == 1
    await server.stop()


async def test_closing_the_client_closes_connections_in_use_when_they_come_back() -> None:
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start()
    client = UpstreamClient(connect_timeout=2.0)
    await client.start()
    resp = await client.send(post(url))
    await client.close()
    assert await resp.read() == b'{"ok":true}'
    resp.release()  # comes back after the close: closed, not pooled
    await asyncio.wait_for(server.closed.wait(), 5)
    with pytest.raises(UpstreamFailure) as err:
        await client.send(post(url))
    assert err.value.kind is FailureKind.CONNECT
    await server.stop()


async def test_a_bad_url_never_echoes_it(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await client.send(post("http://user:sk-secret@host:notaport"))
    assert "sk-secret" not in str(err.value)


async def test_https_with_the_callers_trust_store() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start(server_tls)
    client = UpstreamClient(connect_timeout=2.0, ssl_context=client_tls)
    await client.start()
    for _ in range(2):
        resp = await client.send(post(url))
        assert await resp.read() == b'{"ok":true}'
        resp.release()
    assert server.connections == 1
    await client.close()
    untrusting = UpstreamClient(connect_timeout=2.0)  # the system's store: not our CA
    await untrusting.start()
    with pytest.raises(UpstreamFailure) as err:
        await untrusting.send(post(url))
    assert err.value.kind is FailureKind.CONNECT
    await untrusting.close()
    await server.stop()
