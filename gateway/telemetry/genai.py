"""OpenTelemetry GenAI semantic-convention attributes (status: development) read off the
canonical request and answers. Only tracing calls these, so none of it runs when it is off.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.canonical import CanonicalRequest, Deployment

Attributes = dict[str, Any]

OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_REQUEST_NUMBERS = (("temperature", "gen_ai.request.temperature"),
                    ("top_p", "gen_ai.request.top_p"), ("seed", "gen_ai.request.seed"))
_FINISH = re.compile(rb'"finish_reason":\s*"([^"]*)"')


def provider_name(dep: Deployment) -> str:
    """The convention's well-known values where one fits; self-hosted pools are vLLM."""
    return "vllm" if dep.pool is not None else dep.capabilities.genai_provider


@lru_cache(maxsize=1024)
def _server(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def request_attributes(req: CanonicalRequest, model: str) -> Attributes:
    """`gen_ai.request.*` for `model` (the public name on the server span, the upstream's
    own on an attempt span)."""
    body = req.body
    attrs: Attributes = {"gen_ai.operation.name": OPERATION[req.operation],
                         "gen_ai.request.model": model}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool):
        attrs["gen_ai.request.max_tokens"] = limit
    for key, name in _REQUEST_NUMBERS:
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[name] = value
    return attrs


def attempt_attributes(dep: Deployment, number: int, probe: bool) -> Attributes:
    address, port = _server(dep.target.base_url)
    return {"gen_ai.provider.name": provider_name(dep), "server.address": address,
            "server.port": port, "turnout.deployment": dep.id, "turnout.attempt": number,
            "turnout.probe": probe}


def usage_attributes(input_tokens: int, output_tokens: int) -> Attributes:
    return {"gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens}


def finish_reasons(data: bytes) -> list[str]:
    """Every non-null `finish_reason` in a serialized answer or chunk: a scan rather than a
    parse, as it runs on every streamed chunk."""
    return [m.decode() for m in _FINISH.findall(data)]


def response_attributes(first: bytes | None, reasons: list[str]) -> Attributes:
    """`gen_ai.response.*` from the answer's body (or a stream's first chunk)."""
    attrs: Attributes = {}
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons
    if not first:
        return attrs
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return attrs
    if isinstance(obj, dict):
        for key in ("id", "model"):
            if isinstance(obj.get(key), str):
                attrs[f"gen_ai.response.{key}"] = obj[key]
    return attrs


def input_messages(req: CanonicalRequest) -> str:
    """What the client sent, as JSON: chat messages, a completion prompt or embedding input."""
    body = req.body
    return orjson.dumps(body.get("messages", body.get("prompt", body.get("input")))).decode()


def output_messages(text: str) -> str:
    return orjson.dumps([{"role": "assistant", "content": text}]).decode()


def body_output_messages(body: bytes) -> str:
    """The messages (or completion texts) of a non-streamed answer, as JSON."""
    try:
        choices = orjson.loads(body).get("choices") or []
    except (orjson.JSONDecodeError, AttributeError):
        return "[]"
    return orjson.dumps([c.get("message") or {"role": "assistant", "content": c.get("text")}
                         for c in choices if isinstance(c, dict)]).decode()
