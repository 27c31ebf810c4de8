"""Clients and parsers for tests of the simulator (tests/unit/selfhost/)."""

from __future__ import annotations

import socket
from typing import Any

import httpx2
import openai
import orjson
from prometheus_client.parser import text_string_to_metric_families

from selfhost.sim import SimProfile, ThreadedSim

MESSAGES: list[Any] = [  # Any: the SDK wants its TypedDicts
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "tell me"}, {"type": "text", "text": "a story"}],
    },
]
PROMPT_TOKENS = 3 + 4 + 4 + 4  # words + 4 per message
CHAT: dict[str, Any] = {"model": "m", "messages": MESSAGES}
# Never answers on its own: requests stay queued / in prefill until the test lets go.
STUCK = SimProfile.named("instant", base_ttft_ms=600_000)

OPEN: list[openai.OpenAI | httpx2.Client] = []  # closed after each test (conftest.py)


def sdk(s: ThreadedSim, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    OPEN.append(openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", **kwargs))
    return OPEN[-1]  # type: ignore[return-value]


def http(s: ThreadedSim) -> httpx2.Client:
    OPEN.append(httpx2.Client(base_url=s.url, timeout=5))
    return OPEN[-1]  # type: ignore[return-value]


def sse_payloads(text: str) -> list[str]:
    """Strict SSE parse: only `data: ...` lines, each event terminated by a blank line."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


def raw_post(s: ThreadedSim, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one request on a fresh socket and leave the response unread."""
    data = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", s.servers[0].port), timeout=5)
    head = f"POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    buf = b""
    while buf.count(marker) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {buf!r}"
        buf += data
    return buf


def scrape(s: ThreadedSim) -> dict[tuple[str, str], float]:
    """Samples keyed by (name, finished_reason/le label or ""), all for model sim-model."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(http(s).get("/metrics").text):
        for sample in family.samples:
            assert sample.labels["model_name"] == "sim-model"
            assert sample.labels["engine"] == "0"
            extra = sample.labels.get("finished_reason") or sample.labels.get("le") or ""
            out[(sample.name, extra)] = sample.value
    return out
