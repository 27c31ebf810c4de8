"""Anthropic Messages API requests (`POST {base}/messages`), built from the OpenAI shape:
system/developer messages become the top-level `system`, tool calls become `tool_use`
blocks and tool messages `tool_result` blocks in a user turn, images become image
blocks; a request from an Anthropic client is sent as it came (`native_body`). Also the
count_tokens request. Answers: adapters/anthropic.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.common import (
    append_turn,
    arguments_object,
    forced_tool_name,
    function_tools,
    image_url,
    json_schema_format,
    load_object,
    max_output_tokens,
    parse_data_url,
    rejected,
    stop_list,
    text_of,
)
from gateway.canonical import (
    CanonicalRequest,
    FailureKind,
    Target,
    UpstreamFailure,
    UpstreamRequest,
)

MESSAGES_API = "anthropic.messages"  # NativeRequest.api of a request from an Anthropic client
THINKING_BLOCKS = ("thinking", "redacted_thinking")

# 2023-06-01 is the version that still takes sampling parameters: 2026-10-21 answers a
# request with temperature, top_p or top_k with a 400 (platform.claude.com/docs/en/api/versioning).
API_VERSION = "2023-06-01"
_NO_SAMPLING_SINCE = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096

# -- request -----------------------------------------------------------------------------------


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = image_url(part, where)
    data = parse_data_url(url)
    if data is not None:
        source = {"type": "base64", "media_type": data[0], "data": data[1]}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise rejected(f"{where}.image_url.url must be an http(s) or base64 data: URL")
    return {"type": "image", "source": source}


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    ref = part.get("file")
    data = parse_data_url(str(ref.get("file_data") or "")) if isinstance(ref, dict) else None
    if data is None or data[0] != "application/pdf":
        raise rejected(f"{where}: only inline PDF files (file_data as a data: URL) are supported")
    source = {"type": "base64", "media_type": data[0], "data": data[1]}
    return {"type": "document", "source": source}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    blocks = []
    for i, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{i}]"
        if kind == "text":
            if part.get("text"):  # Anthropic rejects empty text blocks
                blocks.append(_text_block(str(part["text"])))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_file_block(part, at))
        else:
            raise rejected(f"{at}: content parts of type {kind!r} are not supported by Anthropic")
    return blocks


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = msg.get("content")
    if isinstance(content, list):  # text and refusal parts
        content = "".join(str(p.get("text") or p.get("refusal") or "") for p in content
                          if isinstance(p, dict))
    # Signed thinking blocks an earlier answer carried (`thinking_blocks`, as this adapter
    # returns them) go back first and unchanged: Claude checks their signatures.
    blocks = [b for b in msg.get("thinking_blocks") or ()
              if isinstance(b, dict) and b.get("type") in THINKING_BLOCKS]
    if isinstance(content, str) and content:
        blocks.append(_text_block(content))
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id"),
            "name": fn.get("name"),
            "input": arguments_object(fn.get("arguments"), f"{where}.tool_calls[{i}]"),
        })
    return blocks


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id")}
    texts = text_of(msg.get("content"), where)
    if texts:
        block["content"] = texts[0] if len(texts) == 1 else [_text_block(t) for t in texts]
    return block


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(system blocks, Anthropic messages). System/developer messages are lifted to the
    top-level `system` wherever they stand; consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role, where = msg.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_block(t) for t in text_of(msg.get("content"), where))
        elif role == "user":
            append_turn(turns, "user", "content", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            append_turn(turns, "assistant", "content", _assistant_blocks(msg, where))
        elif role == "tool":
            append_turn(turns, "user", "content", [_tool_result(msg, where)])
        else:
            raise rejected(f"{where}: role {role!r} is not supported by Anthropic")
    return system, turns


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice_ = body.get("tool_choice")
    forced = forced_tool_name(choice_)
    if forced is not None:
        out: dict[str, Any] = {"type": "tool", "name": forced}
    elif choice_ in ("auto", "none"):
        out = {"type": choice_}
    elif choice_ == "required":
        out = {"type": "any"}
    elif body.get("parallel_tool_calls") is False:
        out = {"type": "auto"}
    else:
        return None
    if body.get("parallel_tool_calls") is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _copy_sampling(src: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = src.get("temperature")
    if temperature is not None:
        # OpenAI's scale is 0-2, Anthropic's 0-1: clamp rather than fail a request that is
        # valid for the API the client speaks.
        out["temperature"] = min(float(temperature), 1.0)
    for name in ("top_p", "top_k"):
        if src.get(name) is not None:
            out[name] = src[name]


def _copy_options(src: dict[str, Any], out: dict[str, Any]) -> None:
    stops = stop_list(src.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if src.get("tools"):
        out["tools"] = [{"name": fn["name"], "description": fn.get("description") or "",
                         "input_schema": fn.get("parameters") or {"type": "object"}}
                        for fn in function_tools(src["tools"])]
    tool_choice = _tool_choice(src)
    if tool_choice is not None:
        out["tool_choice"] = tool_choice
    schema = json_schema_format(src)
    if schema is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    user = src.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


def messages_body(src: dict[str, Any], target: Target) -> dict[str, Any]:
    if isinstance(src.get("n"), int) and src["n"] > 1:
        raise rejected("`n` > 1 is not supported by Anthropic")
    system, turns = _conversation(src.get("messages") or [])
    limit = max_output_tokens(src)
    if limit is None:
        limit = int(target.options.get("max_tokens_default", DEFAULT_MAX_TOKENS))
    out: dict[str, Any] = {"model": target.upstream_model, "max_tokens": limit, "messages": turns}
    if system:
        out["system"] = system
    if api_version(target) < _NO_SAMPLING_SINCE:  # ISO dates compare as strings
        _copy_sampling(src, out)
    _copy_options(src, out)
    _thinking(src, out)
    return out


# OpenAI's reasoning_effort → an extended-thinking budget (at least Anthropic's minimum of
# 1024, below max_tokens as Anthropic requires).
_EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
_MIN_BUDGET = 1024


def _thinking(src: dict[str, Any], out: dict[str, Any]) -> None:
    thinking = src.get("thinking")  # an Anthropic client's own (a continuation's request)
    if not isinstance(thinking, dict):
        budget = _EFFORT_BUDGETS.get(str(src.get("reasoning_effort")))
        if budget is None or out["max_tokens"] <= _MIN_BUDGET:
            return
        thinking = {"type": "enabled", "budget_tokens": min(budget, out["max_tokens"] - 1)}
    forced = (out.get("tool_choice") or {}).get("type") in ("any", "tool")
    if thinking.get("type") != "disabled" and forced:
        return  # Anthropic refuses thinking with a forced tool: the tool call wins
    out["thinking"] = thinking
    if thinking.get("type") != "disabled":  # thinking takes no sampling changes
        for name in ("temperature", "top_p", "top_k"):
            out.pop(name, None)


def api_version(target: Target) -> str:
    return target.options.get("anthropic_version", API_VERSION)


def native_body(src: dict[str, Any], target: Target) -> dict[str, Any]:
    """A Messages request as its client sent it, for this deployment: its model, and no
    sampling parameters where the API version refuses them."""
    out = {**src, "model": target.upstream_model}
    out.pop("stream", None)  # set by build_request, as for a translated request
    if api_version(target) >= _NO_SAMPLING_SINCE:
        for name in ("temperature", "top_p", "top_k"):
            out.pop(name, None)
    return out


def count_tokens_request(req: CanonicalRequest, target: Target) -> UpstreamRequest:
    """POST {base}/messages/count_tokens for a Messages request: the client's own when it
    has one, else the translation of its canonical body (without `max_tokens`, which the
    endpoint does not take)."""
    native = req.native
    if native is not None and native.api == MESSAGES_API:
        body = native_body(native.body, target)
    else:
        body = messages_body(req.body, target)
    for name in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
                 "metadata"):
        body.pop(name, None)
    headers = {"content-type": "application/json", "anthropic-version": api_version(target),
               **target.headers}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    return UpstreamRequest("POST", target.base_url + "/messages/count_tokens", headers,
                           orjson.dumps(body))


def count_tokens_result(body: bytes) -> int:
    count = load_object(body).get("input_tokens")
    if not isinstance(count, int) or isinstance(count, bool):
        raise UpstreamFailure(FailureKind.PROTOCOL, "count_tokens answered without input_tokens")
    return count
