"""Differential: our upstream client and aiohttp (the library it replaces, with its
defaults) against the same raw upstream answers; the same class of outcome is required
of both: the status and body, or a failure.

Where ours departs on purpose it is listed in `DEPARTURES` with the reason."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.canonical import UpstreamFailure
from gateway.wire.http_client import UpstreamClient
from tests.support.raw_http import Server, post


def answer(head: bytes, body: bytes = b"", length: bool = True) -> bytes:
    framing = b"content-length: %d\r\n" % len(body) if length else b""
    return b"HTTP/1.1 " + head + b"\r\n" + framing + b"\r\n" + body


def chunked(*parts: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + end)


def headers(count: int, size: int = 10) -> bytes:
    return b"".join(b"x-h%d: %s\r\n" % (i, b"v" * size) for i in range(count))


PAYLOAD = b'{"text": "' + b"abc" * 300 + b'"}'
GZIPPED = gzip.compress(PAYLOAD)

# Each answer closes the connection after it, so a failure cannot hang either client.
CASES: dict[str, bytes] = {
    "plain": answer(b"200 OK", PAYLOAD),
    "error-status": answer(b"503 Busy", b'{"error": "busy"}'),
    "no-reason-phrase": answer(b"200", b"ok"),
    "chunked": chunked(b"he", b"llo"),
    "chunk-extension": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                       b"5;x=y\r\nhello\r\n0\r\n\r\n",
    "trailers": chunked(b"hello", end=b"0\r\nx-t: 1\r\n\r\n"),
    "close-delimited": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it",
    "gzip": answer(b"200 OK\r\ncontent-encoding: gzip", GZIPPED),
    "deflate": answer(b"200 OK\r\ncontent-encoding: deflate", zlib.compress(PAYLOAD)),
    "gzip-members": answer(b"200 OK\r\ncontent-encoding: gzip",
                           gzip.compress(b"one,") + gzip.compress(b"two")),
    "interim-100": b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"200 OK", b"ok"),
    "127-headers": answer(b"200 OK\r\n" + headers(126), b"ok"),
    "repeated-header": answer(b"200 OK\r\n" + b"x-r: 1\r\nx-r: 2\r\n", b"ok"),
    "header-8000-bytes": answer(b"200 OK\r\nx-big: " + b"a" * 8000, b"ok"),
    # Failures.
    "129-headers": answer(b"200 OK\r\n" + headers(129), b"ok"),
    "32000-repeats": answer(b"200 OK\r\n" + b"x-r: vvvvvvvvvv\r\n" * 32_000, b"ok"),
    "header-10000-bytes": answer(b"200 OK\r\nx-big: " + b"a" * 10_000, b"ok"),
    "garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "bad-status-line": b"HTTP/1.1 OK 200\r\ncontent-length: 0\r\n\r\n",
    "bad-version": b"HTTP/9.x 200 OK\r\ncontent-length: 0\r\n\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    "chunk-without-crlf": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                          b"5\r\nhelloXX0\r\n\r\n",
    "cut-short-length": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
    "cut-short-chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
    "two-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
    "negative-length": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    "nul-in-header": answer(b"200 OK\r\nx-a: a\x00b", b"ok"),
    "space-before-colon": answer(b"200 OK\r\nx-a : 1", b"ok"),
    "corrupt-gzip": answer(b"200 OK\r\ncontent-encoding: gzip",
                           GZIPPED[:20] + b"\xff" * 40 + GZIPPED[60:]),
    "truncated-gzip": answer(b"200 OK\r\ncontent-encoding: gzip", GZIPPED[:40]),
    # Departures (below).
    "obs-fold": answer(b"200 OK\r\nx-a: 1\r\n 2", b"ok"),
    "redirect": answer(b"307 Temporary Redirect\r\nlocation: http://elsewhere.invalid/", b""),
    "gzip-bomb": answer(b"200 OK\r\ncontent-encoding: gzip", gzip.compress(bytes(8 << 20))),
}

DEPARTURES: dict[str, str] = {
    "redirect": "a 3xx fails (upstream_protocol_error); aiohttp, told not to follow it, "
                "hands it back",
    "gzip-bomb": "decoded bytes are held to 100 times the encoded ones past the first MiB "
                 "(upstream.max_decompression_ratio); aiohttp inflates without a cap",
    "corrupt-gzip": "a compressed body that fails its checks fails; aiohttp hands back what "
                    "it inflated, garbage included",
    "truncated-gzip": "a compressed body that ends early fails; aiohttp hands back the part",
    "obs-fold": "a folded header line (obsolete since RFC 7230) fails, as llhttp refuses it; "
                "aiohttp's parser unfolds it. No provider sends one",
}

Outcome = tuple[int, bytes] | str


@pytest.fixture
async def ours() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(connect_timeout=2.0, trust_env=False)
    await c.start()
    yield c
    await c.close()


async def with_ours(client: UpstreamClient, url: str) -> Outcome:
    try:
        resp = await client.send(post(url))
        try:
            return resp.status, await resp.read()
        finally:
            resp.release()
    except UpstreamFailure:
        return "failed"


async def with_aiohttp(url: str) -> Outcome:
    try:
        async with aiohttp.ClientSession() as session, session.post(
                url + "/v1/chat", data=b"{}", allow_redirects=False) as resp:
            return resp.status, await resp.read()
    except aiohttp.ClientError:
        return "failed"


@pytest.mark.parametrize("name", sorted(CASES))
async def test_the_same_outcome_as_aiohttp(ours: UpstreamClient, name: str) -> None:
    raw = CASES[name]

    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(r)
        w.write(raw)
        await w.drain()

    server = Server(once)
    url = await server.start()
    got, expected = await with_ours(ours, url), await with_aiohttp(url)
    await server.stop()
    if name in DEPARTURES:
        assert got != expected, f"{name} no longer departs: {DEPARTURES[name]}"
        assert got == "failed"
    else:
        assert got == expected
