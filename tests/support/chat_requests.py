"""Canonical chat requests for adapter tests."""

from __future__ import annotations

from typing import Any

from gateway.canonical import CanonicalRequest

HI = [{"role": "user", "content": "hi"}]
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def chat(messages: list[dict[str, Any]], stream: bool = False, include_usage: bool = False,
         **extra: Any) -> CanonicalRequest:
    """A chat request for the public model `pub`, as the gateway hands it to an adapter."""
    body = {"model": "pub", "messages": messages, **extra}
    if stream:
        body["stream"] = True
    return CanonicalRequest("chat", "pub", body, stream, include_usage)
