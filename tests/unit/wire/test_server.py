"""gateway/wire/server.py, our HTTP/1.1 protocol for uvicorn: under uvicorn in this
process (uvloop, as `turnout serve` runs it) with a small ASGI app, spoken to over raw
sockets. (`turnout serve` draining on SIGTERM: tests/e2e/test_rollout.py.)"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.wire.limits import ServerLimits
from gateway.wire.server import keep_alive_hint
from tests.support.asgi_server import WAIT, App, Client, Probe, Server, get, post, serving


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serving() as s:
        yield s


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.close()


def test_scope_and_keep_alive(server: Server, client: Client) -> None:
    client.send(post("/a%20b/c?x=1&y=%20", b"hello", "X-Custom: Value\r\n"))
    status, headers, body = client.response()
    info = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["server"] == "uvicorn" and "date" in headers
    assert "connection" not in headers and "transfer-encoding" not in headers
    assert info["type"] == "http" and info["http_version"] == "1.1"
    assert info["method"] == "POST" and info["scheme"] == "http"
    assert info["path"] == "/a b/c" and info["raw_path"] == "/a%20b/c"
    assert info["query_string"] == "x=1&y=%20" and info["root_path"] == ""
    assert ["x-custom", "Value"] in info["headers"] and ["host", "t"] in info["headers"]
    assert info["body"] == "hello" and info["state"] == 42
    assert info["asgi"]["version"] == "3.0"
    assert tuple(info["server"]) == ("127.0.0.1", server.port)
    assert tuple(info["client"]) == client.sock.getsockname()
    assert server.app.seen.get(timeout=WAIT) == "http.disconnect"  # response complete
    client.send(get("/second"))  # the same connection again
    status, _, body = client.response()
    assert status == 200 and json.loads(body)["path"] == "/second"
    assert tuple(json.loads(body)["client"]) == client.sock.getsockname()
    server.app.seen.get(timeout=WAIT)


def test_pipelined_requests_answered_in_order(server: Server, client: Client) -> None:
    app = server.app
    app.order.clear()
    client.send(get("/slow") + get("/echo-2"))
    assert app.gate("slow-started").wait(WAIT)
    app.gate("release").set()
    status, _, body = client.response()
    assert (status, body) == (200, b"slow")
    status, _, body = client.response()
    assert json.loads(body)["path"] == "/echo-2"
    assert app.order == ["start /slow", "done", "start /echo-2"]  # one after the other
    app.seen.get(timeout=WAIT)


def test_chunked_request_body_arrives_in_parts(server: Server, client: Client) -> None:
    client.send(b"POST /parts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"6\r\nhello \r\n")
    assert server.app.seen.get(timeout=WAIT) == (b"hello ", True)
    client.send(b"5\r\nworld\r\n0\r\n\r\n")
    rest, more = b"", True
    while more:
        part, more = server.app.seen.get(timeout=WAIT)
        rest += part
    assert rest == b"world" and client.response()[2] == b"done"


def test_expect_100_continue(server: Server, client: Client) -> None:
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\n\r\n")
    assert client.line() == b"HTTP/1.1 100 Continue" and client.line() == b""
    client.send(b"body")
    assert json.loads(client.response()[2])["body"] == "body"
    server.app.seen.get(timeout=WAIT)


def test_malformed_request_gets_400_and_close(server: Server, client: Client) -> None:
    client.send(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, body = client.response()
    assert status == 400 and headers["connection"] == "close"
    assert body == b"Invalid HTTP request received."
    assert client.closed()


def test_connection_close_from_the_client(server: Server, client: Client) -> None:
    client.send(get("/bye", extra="Connection: close\r\n"))
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "close" and client.closed()
    server.app.seen.get(timeout=WAIT)


def test_websocket_upgrade_is_answered_as_plain_http(server: Server, client: Client) -> None:
    client.send(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n"))
    status, headers, body = client.response()
    assert status == 200 and json.loads(body)["type"] == "http"
    assert headers["connection"] == "close" and client.closed()  # the parser stopped
    server.app.seen.get(timeout=WAIT)


def test_http_10(server: Server) -> None:
    c = Client(server.port)  # no keep-alive asked: closed after the response
    c.send(get("/one", "1.0"))
    _, headers, body = c.response()
    assert json.loads(body)["http_version"] == "1.0" and headers["connection"] == "close"
    assert c.closed()
    c = Client(server.port)  # keep-alive asked for and given, with a length
    c.send(get("/two", "1.0", "Connection: keep-alive\r\n"))
    assert c.response()[1]["connection"] == "keep-alive"
    c.send(get("/nolength", "1.0", "Connection: keep-alive\r\n"))
    _, headers, body = c.response()  # no chunked in 1.0: the close ends the body
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    assert body == b"part1,part2" and c.closed()
    for _ in range(2):
        server.app.seen.get(timeout=WAIT)


def test_head_204_and_chunked_framing(server: Server, client: Client) -> None:
    client.send(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = client.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    client.send(get("/empty"))  # no body bytes leaked from the HEAD: the next parses
    status, headers, _ = client.response()
    assert status == 204 and "transfer-encoding" not in headers
    client.send(get("/nolength"))
    status, headers, body = client.response()
    assert headers["transfer-encoding"] == "chunked" and body == b"part1,part2"
    server.app.seen.get(timeout=WAIT)


def test_stream_chunks_go_out_one_by_one(server: Server, client: Client) -> None:
    client.send(get("/stream"))
    status, headers = client.head()  # sent with response.start, before any chunk
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    for i in range(3):
        assert client.chunk() == b"data: %d\n\n" % i  # the app waits until we have it
        server.app.gate(f"read-{i}").set()
    assert client.chunk() == b""  # the last chunk


def test_disconnect_reaches_the_app(server: Server, client: Client) -> None:
    client.send(post("/watch", b"{}"))
    assert server.app.gate("watching").wait(WAIT)
    client.close()
    assert server.app.seen.get(timeout=WAIT) == "http.disconnect"


def test_app_errors_become_500_without_details(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    for path in ("/error", "/error-after-start", "/silent", "/bad-header"):
        c = Client(server.port)
        with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
            c.send(get(path))
            status, headers, body = c.response()
        assert (status, body) == (500, b"Internal Server Error"), path
        assert headers["connection"] == "close" and c.closed()
        assert b"secret" not in body and b"Traceback" not in body
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Exception in ASGI application\n") == 3
    assert "ASGI callable returned without starting response." in messages
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


def test_send_waits_for_the_client_to_drain(server: Server, client: Client) -> None:
    client.send(get("/big"))
    status, _, body = client.response()
    assert status == 200 and len(body) == 32 << 20
    assert body[::1 << 20] == bytes(range(65, 65 + 32))
    assert 0 < server.app.buffer_peak <= 2 << 20  # not 32 MiB: send paused on the buffer


def test_idle_connection_closes_after_keep_alive_timeout() -> None:
    with serving(timeout_keep_alive=0.2) as server:
        c = Client(server.port)
        c.send(get("/x"))
        assert c.response()[0] == 200
        assert c.closed()  # the server hung up once idle
        idle = Client(server.port)  # never sends a request
        assert idle.closed()


# The idle boundary. The server closes an idle connection at the first tick of its
# sweeper (`tick_s`: a quarter of a 1 s keep-alive) at or after `idle_since +
# keep_alive_s`, never before: the tick only makes the close later. So a request that
# reaches the server before that deadline is always served, and the close is waited for
# as an event (the FIN), never guessed from a clock. What HTTP/1.1 leaves: a request the
# client sends while the server's FIN is on the wire is lost with the connection, and
# only a client retry saves it. A keep-alive longer than the client pool's expiry keeps
# that away (the pool lets the connection go first: httpx 5 s, aiohttp 15 s, undici from
# the `keep-alive: timeout=N` header, against our 75 s); a pool that keeps connections
# longer (Go's 90 s, urllib3's without expiry) drops a pooled connection whose FIN has
# arrived, so it loses only a request that crosses the FIN; for such clients
# `server.keep_alive_s` can be raised above their expiry.


def test_a_connection_reused_just_before_its_keep_alive_ends_is_served() -> None:
    """Reused again and again in the last `margin` before the server's deadline (on the
    server's own clock: its loop's time is time.monotonic()), the same connection answers
    each time; then, left idle, it ends with a FIN (EOF, not a reset), never before the
    deadline. The margin only has to cover the request's way to the server's read; it is
    more than a tick (0.25 s) all the same, so a slow machine does not fail the test."""
    keep_alive = 1.0
    with serving(timeout_keep_alive=keep_alive) as server:
        c = Client(server.port)
        me = c.sock.getsockname()
        c.send(get("/x"))
        assert c.response()[0] == 200
        assert server.app.seen.get(timeout=WAIT) == "http.disconnect"  # idle from now on
        proto = next(p for p in reversed(Probe.live) if p.client == me)
        margin = proto.tick_s + 0.05
        for _ in range(3):
            due = proto.idle_since + keep_alive  # closed at the first tick from then on
            time.sleep(max(0.0, due - margin - time.monotonic()))
            c.send(get("/x"))
            status, _, body = c.response()
            assert status == 200 and tuple(json.loads(body)["client"]) == me  # the same
            assert server.app.seen.get(timeout=WAIT) == "http.disconnect"
            # It did come just before the boundary (loop times are whole milliseconds).
            assert due - margin - 0.002 <= proto.since < due
        due = proto.idle_since + keep_alive
        assert c.closed()  # EOF: a reset would raise
        assert time.monotonic() >= due


def test_a_connection_the_server_closed_idle_is_not_reused_by_a_checking_pool() -> None:
    """httpx keeps idle connections 60 s here, longer than the server's 1 s: it would
    reuse this one. Once the server's FIN has arrived (waited for: the socket turns
    readable, at EOF), the pool's check before reuse sees it and the next request goes
    out on a new connection, with no error. (A request sent while the FIN is still on
    its way is the one HTTP/1.1 cannot save; see above.)"""
    with serving(timeout_keep_alive=1) as server, httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}", timeout=WAIT, trust_env=False,
            limits=httpx.Limits(keepalive_expiry=60)) as client:
        first = client.get("/x")
        assert first.status_code == 200 and first.headers["keep-alive"] == "timeout=1"
        stream = first.extensions["network_stream"]  # the pooled connection's socket
        sock = stream.get_extra_info("socket")
        assert select.select([sock], [], [], WAIT)[0]  # the server closed it
        assert sock.recv(1, socket.MSG_PEEK) == b""  # with a FIN: EOF, not a reset
        assert stream.get_extra_info("is_readable")  # what the pool checks before reuse
        second = client.get("/x")
        assert second.status_code == 200
        assert second.json()["client"] != first.json()["client"]  # a new connection


class _OwnHint(App):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/own-hint":
            await send({"type": "http.response.start", "status": 200,
                         "headers": [(b"Keep-Alive", b"timeout=9"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        else:
            await super().__call__(scope, receive, send)


def test_a_keep_alive_response_says_how_long_an_idle_connection_is_kept(
        server: Server, client: Client) -> None:
    """`keep-alive: timeout=N` (undici, the OpenAI Node SDK's fetch, lets its connection
    go 1-2 s before N), N the whole seconds of `server.keep_alive_s` (uvicorn's default 5 s
    here), rounded down; on a response that closes the connection, none."""
    client.send(get("/x"))
    assert client.response()[1]["keep-alive"] == "timeout=5"
    server.app.seen.get(timeout=WAIT)
    c = Client(server.port)
    c.send(get("/x", "1.0", "Connection: keep-alive\r\n"))
    headers = c.response()[1]
    assert headers["connection"] == "keep-alive" and headers["keep-alive"] == "timeout=5"
    server.app.seen.get(timeout=WAIT)
    c.close()
    for request in (get("/x", extra="Connection: close\r\n"), get("/x", "1.0"),
                    b"NOT HTTP AT ALL\r\n\r\n"):
        c = Client(server.port)
        c.send(request)
        headers = c.response()[1]
        assert headers["connection"] == "close" and "keep-alive" not in headers, request
        assert c.closed()
        if request[:1] == b"G":
            server.app.seen.get(timeout=WAIT)
    assert keep_alive_hint(75) == b"keep-alive: timeout=75\r\n"
    assert keep_alive_hint(2.9) == b"keep-alive: timeout=2\r\n"
    own = Server(_OwnHint())  # an app's own hint goes out instead (Client: never twice)
    try:
        c = Client(own.port)
        c.send(get("/own-hint"))
        assert c.response()[1]["keep-alive"] == "timeout=9"
        c.close()
    finally:
        own.stop()


def test_a_first_request_is_waited_for_header_timeout_not_keep_alive() -> None:
    # A long keep-alive (75 s by default) must not let silent connections pile up.
    with serving(ServerLimits(header_timeout_s=0.3), timeout_keep_alive=60) as server:
        silent = Client(server.port)
        opened = time.monotonic()
        assert silent.closed()
        assert time.monotonic() - opened < 30


def test_a_draining_server_answers_a_request_on_an_idle_connection_then_closes_it() -> None:
    # Closed at once, an idle connection could take a request the client had just sent
    # into the close (and lose it); a short grace answers it, saying the connection ends.
    Probe.shutdown_called.clear()
    server = Server(App())
    reused, left = Client(server.port), Client(server.port)
    for c in (reused, left):
        c.send(get("/x"))
        assert c.response()[0] == 200
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert Probe.shutdown_called.wait(WAIT)
    reused.send(get("/x"))
    status, headers, _ = reused.response()
    assert status == 200 and headers["connection"] == "close"
    assert reused.closed()
    assert left.closed()  # idle through the grace: closed cleanly (EOF, not a reset)
    stopper.join(WAIT)
    assert not server.thread.is_alive()


def test_graceful_shutdown_finishes_the_request_in_flight() -> None:
    Probe.shutdown_called.clear()
    server = Server(App())
    c = Client(server.port)
    c.send(get("/slow"))
    assert server.app.gate("slow-started").wait(WAIT)
    stopper = threading.Thread(target=server.stop)
    stopper.start()  # what SIGTERM does: should_exit, then shutdown() on each connection
    assert Probe.shutdown_called.wait(WAIT)
    server.app.gate("release").set()
    status, headers, body = c.response()
    assert (status, body) == (200, b"slow") and headers["connection"] == "close"
    assert c.closed()
    stopper.join(WAIT)
    assert not server.thread.is_alive()
