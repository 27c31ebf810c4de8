"""Differential: the same raw bytes to our server protocol and to uvicorn's httptools
protocol (the library it replaces, `server.http: httptools`), each under uvicorn with the
same app; the same class of outcome is required of both: the statuses answered, in
order, and whether the connection was closed after them.

Where ours departs on purpose it is listed in `DEPARTURES` with the reason. (Timeouts,
which uvicorn lacks, are test_server_limits.py's.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.asgi_server import App, Client, Server

CLOSE = b"Connection: close\r\n"


def req(method: bytes = b"GET", target: bytes = b"/a", headers: bytes = b"",
        body: bytes = b"", version: bytes = b"1.1", close: bool = True) -> bytes:
    return (method + b" " + target + b" HTTP/" + version + b"\r\nHost: t\r\n" + headers
            + (CLOSE if close else b"") + b"\r\n" + body)


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# Every case ends in a close (asked for, or an error), so the outcome is known at EOF.
CASES: dict[str, bytes] = {
    "get": req(),
    "head": req(b"HEAD"),
    "post-length": req(b"POST", headers=b"Content-Length: 5\r\n", body=b"hello"),
    "post-chunked": req(b"POST", headers=CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n"),
    "chunk-extension": req(b"POST", headers=CHUNKED, body=b"5;a=b\r\nhello\r\n0\r\n\r\n"),
    "trailers": req(b"POST", headers=CHUNKED, body=b"2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n"),
    "pipelined": req(close=False) + req(b"POST", headers=b"Content-Length: 2\r\n",
                                        body=b"hi", close=False) + req(),
    "http10": b"GET /a HTTP/1.0\r\n\r\n",
    "http10-keep-alive-then-close": b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                    + b"GET /b HTTP/1.0\r\n\r\n",
    "absolute-form": req(target=b"http://t/a?x=1"),
    "asterisk-options": req(b"OPTIONS", b"*"),
    "missing-host": b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
    "expect-100": req(b"POST", headers=b"Content-Length: 2\r\nExpect: 100-continue\r\n",
                      body=b"hi"),
    "percent-path": req(target=b"/a%20b/%2F?q=%20"),
    "upgrade-websocket": req(headers=b"Connection: Upgrade, close\r\nUpgrade: websocket\r\n",
                             close=False),
    # Malformed heads: 400 and close.
    "not-http": b"NOT HTTP AT ALL\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bad-version": req(version=b"1.x"),
    "space-before-colon": req(headers=b"X-A : 1\r\n"),
    "header-without-colon": req(headers=b"X-A\r\n"),
    "empty-header-name": req(headers=b": x\r\n"),
    "nul-in-header": req(headers=b"X-A: a\x00b\r\n"),
    "cr-in-header": req(headers=b"X-A: a\rb\r\n"),
    "lf-only-lines": b"GET /a HTTP/1.1\nHost: t\nConnection: close\n\n",
    "obs-fold": req(headers=b"X-A: 1\r\n 2\r\n"),
    "control-in-target": req(target=b"/a\x01b"),
    "space-in-target": req(target=b"/a b"),
    # Framing conflicts (request smuggling): refused, never two readings.
    "length-and-chunked": req(b"POST", headers=b"Content-Length: 4\r\n" + CHUNKED,
                              body=b"0\r\n\r\n"),
    "two-lengths": req(b"POST", headers=b"Content-Length: 1\r\nContent-Length: 2\r\n",
                       body=b"hi"),
    "two-equal-lengths": req(b"POST", headers=b"Content-Length: 2\r\nContent-Length: 2\r\n",
                             body=b"hi"),
    "negative-length": req(b"POST", headers=b"Content-Length: -1\r\n"),
    "plus-length": req(b"POST", headers=b"Content-Length: +2\r\n", body=b"hi"),
    "hex-length": req(b"POST", headers=b"Content-Length: 0x2\r\n", body=b"hi"),
    "huge-length": req(b"POST", headers=b"Content-Length: 99999999999999999999999\r\n"),
    "te-xchunked": req(b"POST", headers=b"Transfer-Encoding: xchunked\r\n",
                       body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-chunked-then-identity": req(b"POST", headers=b"Transfer-Encoding: chunked, identity"
                                    b"\r\n", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-twice": req(b"POST", headers=CHUNKED + CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-space-before-colon": req(b"POST", headers=b"Transfer-Encoding : chunked\r\n",
                                 body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-in-http10": req(b"POST", headers=CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n",
                        version=b"1.0"),
    # Malformed bodies, after a good head: 400 and close.
    "bad-chunk-size": req(b"POST", headers=CHUNKED, body=b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-overflow": req(b"POST", headers=CHUNKED,
                               body=b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "bare-lf-in-chunk": req(b"POST", headers=CHUNKED, body=b"5\nhello\r\n0\r\n\r\n"),
    "no-crlf-after-chunk": req(b"POST", headers=CHUNKED, body=b"5\r\nhelloXX0\r\n\r\n"),
    "garbage-after-request": req() + b"GARBAGE\r\n\r\n",
    "garbage-after-keep-alive": req(close=False) + b"\x16\x03\x01 TLS?\r\n\r\n",

    # Limits uvicorn lacks.
    "head-over-64-kib": req(headers=b"X-Big: " + b"a" * (70 * 1024) + b"\r\n"),
}

# Cases where ours answers differently on purpose, and why.
DEPARTURES: dict[str, str] = {
    "http10-keep-alive-then-close": "an HTTP/1.0 keep-alive is honoured (uvicorn closes "
                                    "every HTTP/1.0 connection after one response)",
    "head-over-64-kib": "a head is capped (server.limits.max_head_bytes: 431)",
}


def outcome(port: int, data: bytes) -> tuple[list[int], bool]:
    """The statuses answered, in order, and whether the server closed the connection."""
    c = Client(port)
    with contextlib.suppress(OSError):  # a server may hang up before it has all of it
        c.send(data)
    statuses: list[int] = []
    try:
        while True:
            try:
                if not c.buf and not c._more():
                    return statuses, True
                status, _, _ = c.response(head_only=data.startswith(b"HEAD"))
            except AssertionError:  # closed in the middle of a response
                return statuses, True
            statuses.append(status)
    except (ConnectionResetError, TimeoutError):
        return statuses, True
    finally:
        c.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    ours = Server(App())
    theirs = Server(App(), protocol="httptools", ws="none")
    try:
        yield ours, theirs
    finally:
        ours.stop()
        theirs.stop()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_outcome_as_uvicorn_httptools(servers: tuple[Server, Server],
                                               name: str) -> None:
    ours, theirs = servers
    data = CASES[name]
    got, expected = outcome(ours.port, data), outcome(theirs.port, data)
    if name in DEPARTURES:
        assert got != expected, f"{name} no longer departs: {DEPARTURES[name]}"
    else:
        assert got == expected
    assert got[1], "every case ends with a close"
