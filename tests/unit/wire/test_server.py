"""gateway/wire/server.py, our HTTP/1.1 protocol for uvicorn: under uvicorn in this
process (uvloop, as `turnout serve` runs it) with a small ASGI app, spoken to over raw
sockets. (`turnout serve` draining on SIGTERM: tests/e2e/test_rollout.py.)"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.wire.limits import ServerLimits
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


def test_an_idle_connection_is_kept_for_its_keep_alive_and_then_closed_cleanly() -> None:
    # Reused well inside the idle timeout: the same connection answers. Left idle: the
    # server ends it with a FIN (EOF to the client, not a reset), never before the timeout.
    with serving(timeout_keep_alive=2) as server:
        c = Client(server.port)
        c.send(get("/x"))
        assert c.response()[0] == 200
        time.sleep(1)  # half the idle timeout (the boundary's safe side)
        asked = time.monotonic()  # the server's idle time starts after this
        c.send(get("/x"))
        assert c.response()[0] == 200
        assert c.closed()
        assert time.monotonic() - asked >= 2


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
