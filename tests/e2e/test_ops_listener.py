"""Issue #16 finding 9 against a running gateway: the ops endpoints on their own port
(`server.ops_port`), /readyz answered from the pool monitors' health (no probe per call),
and deployment names without addresses (`server.deployment_header: name`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest
import yaml

from tests.support.procs import Gateway, free_port
from tests.support.raw_http import Server, ThreadedServer

COMPLETION = orjson.dumps({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


class Replica:
    """A vLLM-like replica that counts its /health probes."""

    def __init__(self) -> None:
        self.health_probes = 0
        self.raw = ThreadedServer(self.serve)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> None:
        server: Server = self.raw.server
        while (request := await server.read_request(reader)) is not None:
            body = COMPLETION if b"/chat/completions" in request.split(b"\r\n")[0] else b""
            self.health_probes += request.startswith(b"GET /health ")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()


@pytest.fixture(scope="module")
def replica() -> Iterator[Replica]:
    r = Replica()
    yield r
    r.raw.stop()


@pytest.fixture(scope="module")
def gateway(replica: Replica, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    quiet = {"probe_interval_s": 3600, "scrape_interval_s": 3600}  # one round, at start
    gw = Gateway({
        "server": {"ops_port": free_port(), "deployment_header": "name"},
        "pools": [{"name": "gpu", "endpoints": [replica.raw.url], **quiet},
                  {"name": "deadpool", "endpoints": [f"http://127.0.0.1:{free_port()}"],
                   **quiet}],
        "models": {"m": {"deployments": [{"target": "gpu", "model": "x"}]},
                   "d": {"deployments": [{"target": "deadpool", "model": "x"}]}},
    }, tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


def ops_url(gw: Gateway) -> str:
    port = yaml.safe_load(gw.config_path.read_text())["server"]["ops_port"]
    return f"http://127.0.0.1:{port}"


def chat(gw: Gateway, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_internals_move_to_the_ops_port(gateway: Gateway) -> None:
    ops = ops_url(gateway)
    assert chat(gateway, "m").status_code == 200
    for path in ("/metrics", "/debug/failover"):
        assert httpx.get(gateway.url + path).status_code == 404, path
        assert httpx.get(ops + path).status_code == 200, path
    assert "turnout_requests_total" in httpx.get(ops + "/metrics").text
    for base in (gateway.url, ops):  # probes work on either
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        assert httpx.get(base + "/readyz").status_code == 200
    assert httpx.get(ops + "/v1/models").status_code == 404  # only ops there


def test_readyz_probes_no_replica_per_call(gateway: Gateway, replica: Replica) -> None:
    ready = httpx.get(gateway.url + "/readyz").json()
    assert (ready["healthy_pool_endpoints"], ready["pool_endpoints"]) == (1, 2)
    before = replica.health_probes
    for _ in range(20):
        assert httpx.get(gateway.url + "/readyz").status_code == 200
    assert replica.health_probes == before  # was: one probe per replica per call


def test_deployment_names_without_addresses(gateway: Gateway) -> None:
    resp = chat(gateway, "m")
    assert resp.headers["x-turnout-deployment"] == "gpu"
    failed = chat(gateway, "d")  # its only replica refuses connections
    assert failed.status_code == 502
    message = failed.json()["error"]["message"]
    assert message.startswith("upstream deadpool failed: ") and "127.0.0.1" not in message
    assert failed.headers["content-length"] == str(len(failed.content))
