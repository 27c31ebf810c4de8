"""The upstream client's caps (gateway/wire/limits.py `ClientLimits`) against hostile
upstreams on loopback: a header repeated 32,000 times, an endless header, a 256 MiB body,
error body, SSE line or event, a gzip bomb, a redirect. Each fails at once as a protocol
error, the connection dropped, and the process's peak memory stays near its caps."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import pytest

from gateway.canonical import FailureKind, UpstreamFailure
from gateway.wire.http_client import UpstreamClient
from gateway.wire.limits import ClientLimits
from tests.support.raw_http import Server, first_then_ok, post, serve_forever
from tests.support.rss import MIB, peak, reset_peak

LIMITS = ClientLimits(max_body_bytes=1 * MIB, max_error_body_bytes=4096,
                      max_sse_event_bytes=64 * 1024)
ATTACK = 256 * MIB  # what a hostile upstream offers to send


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(connect_timeout=2.0, limits=LIMITS)
    await c.start()
    yield c
    await c.close()


@pytest.fixture
async def default_client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(connect_timeout=2.0)
    await c.start()
    yield c
    await c.close()


def flooding(head: bytes, part: bytes, total: int = ATTACK, *, chunked: bool = False
             ) -> Server:
    """Answers the first request with `head`, then `part` again and again (as chunks when
    `chunked`) until `total` bytes or the client hangs up; counts what it got out."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await server.read_request(reader)
        writer.write(head)
        piece = b"%x\r\n%s\r\n" % (len(part), part) if chunked else part
        sent = 0
        try:
            while sent < total and not writer.is_closing():
                writer.write(piece)
                sent += len(part)
                await writer.drain()  # raises once the client has gone
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        finally:
            server.sent = sent  # type: ignore[attr-defined]

    server = Server(handler)
    return server


async def fails(awaitable: object, *words: str) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as err:
        await awaitable  # type: ignore[misc]
    assert err.value.kind is FailureKind.PROTOCOL, err.value.message
    for word in words:
        assert word in err.value.message
    return err.value


async def test_a_header_repeated_32000_times_fails_at_once(
        default_client: UpstreamClient) -> None:
    # 3.2 MB of one header repeated: ~28 s of a frozen loop when repeats were joined by
    # concatenation; now the 129th header ends it.
    head = b"HTTP/1.1 200 OK\r\n" + (b"x-repeat: " + b"v" * 90 + b"\r\n") * 32_000
    server = Server(lambda r, w, n: serve_forever(server, r, w, head + b"content-length: 0"
                                                  b"\r\n\r\n"))
    url = await server.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await fails(default_client.send(post(url)), "more than 128 headers")
    assert loop.time() - started < 2.0
    await asyncio.wait_for(server.ended.wait(), 5)  # dropped, not kept
    await server.stop()


@pytest.mark.parametrize("count", [1, 127])
async def test_repeated_headers_are_joined_in_order(default_client: UpstreamClient,
                                                    count: int) -> None:
    lines = b"".join(b"x-r: %d\r\n" % i for i in range(count))
    answer = b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\nok"
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await default_client.send(post(url))
    assert resp.headers["x-r"] == ", ".join(str(i) for i in range(count))
    assert await resp.read() == b"ok"
    resp.release()
    await server.stop()


@pytest.mark.parametrize(("value", "ok"), [(8190 - 5, True), (8190 - 4, False)])
async def test_one_header_is_held_to_8190_bytes(default_client: UpstreamClient,
                                                value: int, ok: bool) -> None:
    answer = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * value + b"\r\ncontent-length: 0\r\n\r\n"
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    if ok:
        (await default_client.send(post(url))).release()
    else:
        await fails(default_client.send(post(url)), "header over the limit of 8190 bytes")
    await server.stop()


async def test_an_endless_header_is_cut_off(default_client: UpstreamClient) -> None:
    server = flooding(b"HTTP/1.1 200 OK\r\nx-endless: ", b"a" * 65536)
    url = await server.start()
    await fails(default_client.send(post(url)), "response head is over the limit")
    await asyncio.wait_for(_sent(server), 5)
    assert server.sent < 8 * MIB  # type: ignore[attr-defined]
    await server.stop()


async def _sent(server: Server) -> None:
    while not hasattr(server, "sent"):  # noqa: ASYNC110 (the handler sets it as it ends)
        await asyncio.sleep(0.01)


async def test_a_body_over_the_cap_fails_and_memory_stays_flat(client: UpstreamClient) -> None:
    server = flooding(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                      b"transfer-encoding: chunked\r\n\r\n", b'{"x": "' + b"y" * 65526 + b'"}',
                      chunked=True)
    url = await server.start()
    reset_peak()
    before = peak()
    resp = await client.send(post(url))
    await fails(resp.read(), "over the limit of 1048576 bytes")
    resp.release()
    await asyncio.wait_for(_sent(server), 5)
    assert server.sent < 16 * MIB  # type: ignore[attr-defined]
    assert peak() - before < 32 * MIB  # was: the whole 256 MiB, and more
    await server.stop()


async def test_an_error_body_is_held_to_its_own_smaller_cap(client: UpstreamClient) -> None:
    server = flooding(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: %d\r\n\r\n"
                      % ATTACK, b"e" * 65536)
    url = await server.start()
    resp = await client.send(post(url))
    assert resp.status == 500
    await fails(resp.read(), "over the limit of 4096 bytes")
    resp.close()
    await server.stop()
    small = b'{"error": {"message": "overloaded"}}'
    answer = b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n%s" % (len(small), small)
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    assert (resp.status, await resp.read()) == (503, small)
    resp.release()
    await server.stop()


def _bomb(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(MIB)
    return b"".join([z.compress(zeros) for _ in range(size // MIB)] + [z.flush()])


BOMB = _bomb(64 * MIB)  # ~64 KB on the wire


async def test_a_gzip_bomb_is_refused_by_its_ratio() -> None:
    client = UpstreamClient(connect_timeout=2.0, limits=ClientLimits(max_body_bytes=ATTACK))
    await client.start()
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
              % len(BOMB)) + BOMB
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    reset_peak()
    before = peak()
    resp = await client.send(post(url))
    await fails(resp.read(), "inflates more than 100 times")
    resp.release()
    assert peak() - before < 32 * MIB  # was: all 64 MiB inflated in one call
    await client.close()
    await server.stop()


async def test_a_gzip_bomb_is_refused_by_the_body_cap(client: UpstreamClient) -> None:
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
              % len(BOMB)) + BOMB
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    await fails(resp.read(), "over the limit of 1048576 bytes")
    resp.release()
    await server.stop()


async def test_a_gzip_body_of_several_members_is_read_whole(client: UpstreamClient) -> None:
    packed = gzip.compress(b'{"a": 1, ') + gzip.compress(b'"b": 2}')
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
              % len(packed)) + packed
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    resp = await client.send(post(url))
    assert await resp.read() == b'{"a": 1, "b": 2}'
    resp.release()
    await server.stop()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: " \
           b"chunked\r\n\r\n"


@pytest.mark.parametrize(("first", "part"), [
    (b"data: ", b"x" * 65536),  # one line that never ends
    (b"", b"data: " + b"x" * 1000 + b"\n"),  # lines of one event that never ends
])
async def test_an_endless_sse_event_fails_and_memory_stays_flat(
        client: UpstreamClient, first: bytes, part: bytes) -> None:
    server = flooding(SSE_HEAD + b"%x\r\n%s\r\n" % (len(first), first) if first else SSE_HEAD,
                      part, chunked=True)
    url = await server.start()
    reset_peak()
    before = peak()
    resp = await client.send(post(url))
    with pytest.raises(UpstreamFailure) as err:
        while await resp.readline():
            pass
    assert err.value.kind is FailureKind.PROTOCOL
    assert "event over the limit of 65536 bytes" in err.value.message
    resp.close()
    await asyncio.wait_for(_sent(server), 5)
    assert server.sent < 16 * MIB  # type: ignore[attr-defined]
    assert peak() - before < 32 * MIB
    await server.stop()


async def test_a_long_stream_of_small_events_is_not_capped(client: UpstreamClient) -> None:
    event = b"data: " + b"x" * 1000 + b"\n\n"
    count = 4096  # 4 MiB in all: over the body cap, each event far under the event cap
    server = flooding(SSE_HEAD, event, total=len(event) * count, chunked=True)
    url = await server.start()
    resp = await client.send(post(url))
    lines = 0
    loop = asyncio.get_running_loop()
    while lines < 2 * count:
        assert await resp.readline(loop.time() + 5)
        lines += 1
    resp.close()
    await server.stop()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_protocol_failure(client: UpstreamClient, status: int) -> None:
    answer = (b"HTTP/1.1 %d Moved\r\nlocation: http://elsewhere.invalid/steal\r\n"
              b"content-length: 0\r\n\r\n" % status)
    server = Server(lambda r, w, n: serve_forever(server, r, w, answer))
    url = await server.start()
    error = await fails(client.send(post(url)), f"redirect ({status})")
    assert "elsewhere" not in error.message
    await asyncio.wait_for(server.ended.wait(), 5)  # the connection is dropped
    assert len(server.requests) == 1  # and nothing followed it anywhere
    await server.stop()


async def test_a_connection_over_a_cap_is_never_reused(client: UpstreamClient) -> None:
    big = b"z" * (2 * MIB)
    server = first_then_ok(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big),
                           every_connection=False)
    url = await server.start()
    resp = await client.send(post(url))
    await fails(resp.read(), "over the limit")
    resp.release()
    resp = await client.send(post(url))
    assert await resp.read() == b'{"ok":true}'
    resp.release()
    assert server.connections == 2
    await server.stop()
