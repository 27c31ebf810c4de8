"""Helpers for adapters whose upstream speaks another dialect than OpenAI's.

Those adapters read the OpenAI-shaped canonical body and must write OpenAI-shaped
completions and chunks back; the pieces they share live here so each shape is built
in exactly one place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.canonical import FailureKind, StreamChunk, UpstreamFailure, Usage, usage_json

FINAL_STATUS = 400  # the status a request this upstream cannot take is reported with


def rejected(message: str) -> UpstreamFailure:
    """The request cannot be expressed in this upstream's API: final, and the client's to fix."""
    return UpstreamFailure(FailureKind.REJECTED, message, status=FINAL_STATUS)


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def load_object(body: bytes) -> dict[str, Any]:
    """A 2xx body that must be a JSON object; anything else is the upstream's fault."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.PROTOCOL, "upstream sent invalid JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamFailure(FailureKind.PROTOCOL, "upstream sent a non-object JSON body")
    return obj


def retryable_kind(status: int, headers: Mapping[str, str]) -> FailureKind | None:
    """The SDKs' retry rules (408, 409, 429, 5xx, or `x-should-retry: true`); None = final."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status == 504:
        return FailureKind.TIMEOUT
    if status >= 500 or status in (408, 409) or headers.get("x-should-retry") == "true":
        return FailureKind.SERVER
    return None


def context_or_rejected(message: str, hints: tuple[str, ...]) -> FailureKind:
    lowered = message.lower()
    if any(h in lowered for h in hints):
        return FailureKind.CONTEXT_LENGTH
    return FailureKind.REJECTED


# -- reading the OpenAI request ----------------------------------------------------------------


def parse_data_url(url: str) -> tuple[str, str] | None:
    """`data:<mime>;base64,<data>` → (mime, data); None for anything else."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head.removesuffix(";base64") or "application/octet-stream", data


def image_url(part: dict[str, Any], where: str) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise rejected(f"{where}.image_url.url must be a non-empty string")
    return url


def arguments_object(raw: Any, where: str) -> dict[str, Any]:
    """OpenAI carries tool arguments as a JSON string; the other dialects need the object."""
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise rejected(f"{where}.function.arguments must be a JSON object")
    return value


def text_of(content: Any, where: str) -> list[str]:
    """The texts of a system/tool message: a string or a list of text parts."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        return []
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise rejected(f"{where}.content[{i}]: only text parts are supported here")
        if part.get("text"):
            texts.append(str(part["text"]))
    return texts


def append_turn(turns: list[dict[str, Any]], role: str, key: str, items: list[Any]) -> None:
    """Add items to the conversation, merging with the previous turn when the role repeats
    (both Anthropic and Gemini want one turn for consecutive tool results)."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: list(items)})


def stop_list(stop: Any) -> list[str] | None:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return [str(s) for s in stop]
    return None


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """`max_completion_tokens` supersedes the older `max_tokens`."""
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def forced_tool_name(choice: Any) -> str | None:
    """`{"type": "function", "function": {"name": X}}` → X."""
    if isinstance(choice, dict):
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return str(fn["name"])
    return None


def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The `function` objects of OpenAI tools; other tool types have no equivalent upstream."""
    out = []
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise rejected(f"tools[{i}]: only function tools are supported by this upstream")
        if not isinstance(fn.get("name"), str):
            raise rejected(f"tools[{i}].function.name is required")
        out.append(fn)
    return out


def json_schema_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of `response_format: {type: json_schema, json_schema: {schema}}`."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    return None


# -- writing the OpenAI response ---------------------------------------------------------------


def reasoning_fields(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Anthropic thinking blocks as fields of an OpenAI message: the text as
    `reasoning_content` (what vLLM's reasoning parsers and most OpenAI-compatible hosts
    return), and the blocks themselves, signatures included, as `thinking_blocks`."""
    text = "".join(str(b.get("thinking") or "") for b in blocks if b.get("type") == "thinking")
    out: dict[str, Any] = {"thinking_blocks": blocks}
    if text:
        out["reasoning_content"] = text
    return out


def tool_call(
    call_id: str, name: str, arguments: str, index: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One OpenAI tool call; `index` is set in stream deltas only, as OpenAI does."""
    call: dict[str, Any] = {} if index is None else {"index": index}
    call.update(id=call_id, type="function", function={"name": name, "arguments": arguments})
    if extra:
        call.update(extra)
    return call


def choice(
    index: int, content: str | None, tool_calls: list[dict[str, Any]], finish_reason: str | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def completion_body(
    completion_id: str, model: str, choices: list[dict[str, Any]], usage: Usage | None,
    reasoning_tokens: int = 0,
) -> bytes:
    body: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage_json(usage, reasoning_tokens)
    return orjson.dumps(body)


class ChunkWriter:
    """Serializes the chunks of one OpenAI chat stream: same id/created/model on each,
    the role announced once per choice before its first delta, usage last."""

    __slots__ = ("_created", "_id", "_keep_usage", "_model", "_opened")

    def __init__(self, completion_id: str, model: str, keep_usage: bool) -> None:
        self._id, self._model, self._keep_usage = completion_id, model, keep_usage
        self._created = int(time.time())
        self._opened: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model, "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return orjson.dumps(body)

    def delta(
        self, delta: dict[str, Any], index: int = 0, finish_reason: str | None = None,
    ) -> list[StreamChunk]:
        out = []
        if index not in self._opened:
            self._opened.add(index)
            out.append(StreamChunk(self._chunk([{
                "index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}])))
        out.append(StreamChunk(self._chunk([{
            "index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])))
        return out

    def usage(self, usage: Usage, reasoning_tokens: int = 0) -> StreamChunk:
        """The trailing `choices: []` chunk: always carries usage for metering, and is only
        serialized for the client when it asked for `include_usage` (as OpenAIStream does)."""
        if not self._keep_usage:
            return StreamChunk(b"", usage=usage, usage_only=True)
        data = self._chunk([], usage_json(usage, reasoning_tokens))
        return StreamChunk(data, usage=usage, usage_only=True)
