"""Issue #16's findings against a running gateway (`turnout serve`): a hostile raw
upstream (a redirect, a key echoed upper-cased, a 256 MiB body), slow and malformed
clients on raw sockets (408, 400 in the client's own error format), and the process's
memory measured around the attacks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.asgi_server import Client
from tests.support.procs import Gateway
from tests.support.raw_http import Server, ThreadedServer
from tests.support.rss import MIB, rss

KEY = "sk-test-Abc123Def456Ghi789Jkl"
COMPLETION = orjson.dumps({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "ok",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  server: Server) -> None:
    """Answers by the upstream model the request names."""
    while (request := await server.read_request(reader)) is not None:
        model = re.search(rb'"model":"([^"]+)"', request)
        name = model.group(1) if model else b""
        if name == b"redirect":
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://evil.invalid/"
                         b"\r\ncontent-length: 0\r\n\r\n")
        elif name == b"echo-key":
            key = re.search(rb"authorization: Bearer (\S+)", request, re.I)
            echoed = key.group(1).upper() if key else b"?"
            body = b'{"error": {"message": "Invalid request for key %s"}}' % echoed
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
        elif name == b"huge":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            part = b'{"x": "' + b"y" * 65526 + b'"}'
            for _ in range(4096):  # 256 MiB, unless the gateway hangs up first
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            return
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(COMPLETION), COMPLETION))
        await writer.drain()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    raw = ThreadedServer(lambda r, w, n: hostile(r, w, raw.server))
    yield raw
    raw.stop()


@pytest.fixture(scope="module")
def gateway(upstream: ThreadedServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    models = ("ok", "redirect", "echo-key", "huge")
    gw = Gateway({
        "server": {"limits": {"header_timeout_s": 0.5, "request_timeout_s": 1.0}},
        "upstream": {"max_body_bytes": MIB},
        "providers": [{"name": "raw", "base_url": upstream.url + "/v1", "api_key": KEY}],
        "models": {m: {"deployments": [{"target": "raw", "model": m}]} for m in models},
    }, tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


def chat(gw: Gateway, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_an_upstream_redirect_is_a_502_protocol_error(gateway: Gateway) -> None:
    resp = chat(gateway, "redirect")
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_protocol_error" and "redirect (307)" in error["message"]
    assert "evil" not in resp.text and "location" not in resp.headers


def test_a_key_echoed_upper_cased_never_reaches_the_client(gateway: Gateway) -> None:
    resp = chat(gateway, "echo-key")
    assert resp.status_code == 400  # the upstream's message is relayed, the key is not
    assert resp.json()["error"]["message"] == "Invalid request for key ***"
    logs = gateway.logs().lower()
    assert KEY.lower()[8:] not in logs


def test_a_256_mib_upstream_body_is_a_502_and_memory_stays_flat(gateway: Gateway) -> None:
    assert chat(gateway, "ok").status_code == 200  # warm
    before = rss(gateway.proc.pid)
    resp = chat(gateway, "huge")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_protocol_error"
    assert "over the limit of 1048576 bytes" in resp.json()["error"]["message"]
    assert rss(gateway.proc.pid) - before < 32 * MIB  # was: +480 MiB, kept
    assert chat(gateway, "ok").status_code == 200


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"),
                                             ("/v1/messages", "anthropic")])
def test_a_malformed_body_gets_400_in_the_clients_format_then_close(
        gateway: Gateway, path: str, shape: str) -> None:
    c = Client(gateway.port)
    c.send(f"POST {path} HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
           "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n".encode())
    status, headers, body = c.response()
    assert status == 400 and headers["connection"] == "close" and c.closed()
    error = json.loads(body)
    if shape == "openai":
        assert error["error"]["code"] == "invalid_request_body"
        assert error["error"]["message"] == "Invalid HTTP request body received."
    else:
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"


def test_an_unfinished_head_is_timed_out(gateway: Gateway) -> None:
    c = Client(gateway.port)
    started = time.monotonic()
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Len")
    status, headers, body = c.response()
    assert (status, body) == (408, b"Request head not received within 0.5s.")
    assert headers["connection"] == "close"
    assert c.closed() and time.monotonic() - started < 0.5 + 2.0  # was: open after 120 s


def test_an_unfinished_body_is_timed_out_in_the_clients_format(gateway: Gateway) -> None:
    c = Client(gateway.port)
    started = time.monotonic()
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\ncontent-type: application/json"
           b"\r\ncontent-length: 100\r\n\r\n{\"model\": ")
    status, headers, body = c.response()
    assert status == 408 and headers["connection"] == "close" and c.closed()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 1.0 + 2.0  # was: open after 120 s


def test_the_limits_are_in_check_config(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"ops_port": 8080}, "models": {}})
    assert "server: ops_port: must differ from port" in err.value.problems
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"limits": {"max_head_bytes": 10}},
                      "upstream": {"max_decompression_ratio": 0},
                      "providers": [{"name": "p", "base_url": "https://x.test",
                                     "proxy": "socks5://u:secret@p.test:1080",
                                     "ca_file": str(tmp_path / "missing.pem")}],
                      "models": {"m": {"deployments": [{"target": "p", "model": "m"}]}}})
    text = "\n".join(err.value.problems)
    assert "server.limits.max_head_bytes" in text and "server: Value error" not in text
    assert "upstream.max_decompression_ratio" in text
    assert "providers.0.proxy: only http:// proxies are supported" in text
    assert "providers.0.ca_file: no such file" in text
    assert "secret" not in text
