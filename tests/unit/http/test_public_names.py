"""`server.deployment_header` (gateway/http/asgi.py `PublicNames`): what the client sees of
a deployment's name, in heads, error bodies (their length kept right) and stream events."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.http.asgi import Message, PublicNames

HEAD = {"type": "http.response.start", "status": 200,
        "headers": [(b"x-request-id", b"r1"), (b"x-turnout-deployment", b"gpu/10.0.0.5:8000")]}


async def through(public: PublicNames, *messages: Message) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    wrapped = public.wrap(send)
    for message in messages:
        await wrapped(message)
    return sent


def header(message: Message, name: bytes) -> Any:
    return dict(message["headers"]).get(name)


@pytest.mark.parametrize(("mode", "shown"), [("name", b"gpu"), ("off", None)])
async def test_the_header(mode: str, shown: bytes | None) -> None:
    sent = await through(PublicNames(mode, ["gpu"]), HEAD,
                         {"type": "http.response.body", "body": b"{}"})
    assert header(sent[0], b"x-turnout-deployment") == shown
    assert header(sent[0], b"x-request-id") == b"r1"
    assert sent[1]["body"] == b"{}"


async def test_an_error_body_names_the_pool_and_keeps_its_length_right() -> None:
    body = b'{"error": {"message": "upstream gpu/10.0.0.5:8000 failed: cannot connect"}}'
    start = {"type": "http.response.start", "status": 502,
             "headers": [(b"content-length", b"%d" % len(body)),
                         (b"x-turnout-deployment", b"gpu/10.0.0.5:8000")]}
    sent = await through(PublicNames("name", ["gpu", "gpu-big"]), start,
                         {"type": "http.response.body", "body": body})
    assert sent[1]["body"] == b'{"error": {"message": "upstream gpu failed: cannot connect"}}'
    assert header(sent[0], b"content-length") == b"%d" % len(sent[1]["body"])


async def test_a_stream_error_event_names_the_pool() -> None:
    event = b'data: {"error": {"message": "upstream gpu-big/[::1]:8000 failed"}}\n\n'
    sent = await through(PublicNames("name", ["gpu", "gpu-big"]), HEAD,
                         {"type": "http.response.body", "body": b"data: {}\n\n",
                          "more_body": True},
                         {"type": "http.response.body", "body": event, "more_body": True})
    assert sent[2]["body"] == b'data: {"error": {"message": "upstream gpu-big failed"}}\n\n'
