"""The Responses API's requests, pure (no I/O): validation (its rules are what
/openapi.json publishes), input items normalized as they are stored and listed, and the two
forms a request takes upstream:

- the canonical (OpenAI chat) body: instructions, then the conversation's items as chat
  messages (function calls as assistant `tool_calls`, their outputs as `tool` messages),
  function tools, `tool_choice`, `text.format` as `response_format`, `max_output_tokens`,
  sampling, `reasoning.effort` as `reasoning_effort`: what every deployment can take;
- the native body (`NativeRequest`), for deployments that serve the Responses API: the
  client's request with the conversation of `previous_response_id` expanded into `input`
  and `store: false`, since the conversation state lives here, not upstream.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.errors import bad_request
from gateway.http.validation import (
    BOOLEAN,
    LIST,
    OBJECT,
    STRING,
    JsonSchema,
    Rule,
    Rules,
    at_least,
    between,
    one_of,
)

_ROLES = ("user", "system", "developer", "assistant")
_ITEM_IDS = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
             "reasoning": "rs_"}
# Canonical chat roles: `developer` is `system` to the chat templates of most models.
_CHAT_ROLES = {"user": "user", "system": "system", "developer": "system"}


def _metadata_ok(v: Any) -> bool:
    return (isinstance(v, dict) and len(v) <= 16
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(x, str) and len(x) <= 512
                    for k, x in v.items()))


def _tool_choice_ok(v: Any) -> bool:
    return v in ("auto", "none", "required") or (isinstance(v, dict)
                                                 and isinstance(v.get("type"), str))


FIELDS: Rules = {  # optional; `model` and `input` are checked in `parse`
    "instructions": STRING,
    "stream": BOOLEAN,
    "temperature": between(0, 2),
    "top_p": between(0, 1),
    "max_output_tokens": at_least(1),
    "tools": LIST,
    "tool_choice": Rule(_tool_choice_ok, "'auto', 'none', 'required' or an object with a"
                        " `type`", {"anyOf": [
                            {"enum": ["auto", "none", "required"]},
                            {"type": "object", "required": ["type"],
                             "properties": {"type": {"type": "string"}}}]}),
    "parallel_tool_calls": BOOLEAN,
    "text": OBJECT,
    "reasoning": OBJECT,
    "metadata": Rule(_metadata_ok, "an object of at most 16 strings", {
        "type": "object", "maxProperties": 16,
        "additionalProperties": {"type": "string", "maxLength": 512}}),
    "store": BOOLEAN,
    "previous_response_id": STRING,
    "user": STRING,
    "safety_identifier": STRING,
    "prompt_cache_key": STRING,
    "truncation": one_of("auto", "disabled"),
    "include": LIST,
    "background": BOOLEAN,
    "top_logprobs": between(0, 20, integer=True),
    "max_tool_calls": at_least(1),
    "service_tier": STRING,
    "stream_options": OBJECT,
}
_ITEM: JsonSchema = {"type": "object", "properties": {
    "type": {"type": "string"}, "role": {"enum": list(_ROLES)}}}
REQUIRED: JsonSchema = {
    "model": {"type": "string", "minLength": 1},
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _ITEM}]},
}


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _fail(param: str, message: str) -> Exception:
    return bad_request(f"`{param}` {message}", param=param)


# -- input items ---------------------------------------------------------------------------------


def _check_content(content: Any, at: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _fail(f"{at}.content", "must be a string or a list of content parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _fail(f"{at}.content[{j}]", "must be an object with a `type`")


def _check_item(item: Any, at: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _fail(at, "must be an object")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        if item.get("role") not in _ROLES:
            raise _fail(f"{at}.role", f"must be one of {', '.join(_ROLES)}")
        _check_content(item.get("content"), at)
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _fail(f"{at}.{name}", "is required and must be a string")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _fail(f"{at}.call_id", "is required and must be a string")
        if not isinstance(item.get("output"), str | list):
            raise _fail(f"{at}.output", "must be a string or a list of content parts")
    elif kind != "reasoning":  # built-in tools' items have no counterpart here
        raise _fail(f"{at}.type", f"{kind!r} items are not supported by this gateway")
    return {**item, "type": kind}


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's `input` as items, each with its `type` and an `id` (as
    GET /v1/responses/{id}/input_items lists them)."""
    items: list[dict[str, Any]]
    if isinstance(value, str):
        items = [{"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": value}]}]
    elif isinstance(value, list) and value:
        items = [_check_item(item, f"input[{i}]") for i, item in enumerate(value)]
    else:
        raise _fail("input", "is required: a string or a non-empty list of items")
    for item in items:
        item.setdefault("id", new_id(_ITEM_IDS[item["type"]]))
        if item["type"] in ("message", "function_call_output"):
            item.setdefault("status", "completed")
    return items


def history(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored response's conversation: its input items, then its output items."""
    response = stored.get("response") or {}
    return [*(stored.get("input") or ()), *(response.get("output") or ())]


def _upstream_item(item: dict[str, Any]) -> dict[str, Any] | None:
    """An item as sent to a Responses upstream: without our ids (the upstream never
    stored them), and no reasoning items (without their encrypted content OpenAI
    refuses them, and the conversation reads the same without)."""
    if item.get("type") == "reasoning":
        return None
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def native_body(src: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    body = {k: v for k, v in src.items()
            if k not in ("previous_response_id", "store", "stream_options")}
    if src.get("previous_response_id"):
        body["input"] = [u for u in map(_upstream_item, items) if u is not None]
    body["store"] = False  # the conversation is kept here, whichever replica serves it
    return body


# -- the canonical (chat) body -------------------------------------------------------------------


def _text_parts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text") or p.get("refusal") or "") for p in content or ()
                   if isinstance(p, dict))


def _user_part(part: dict[str, Any], at: str) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and (part.get("file_data") or part.get("file_id")):
        ref = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        return {"type": "file", "file": ref}
    raise _fail(f"{at}.type", f"{kind!r} content is not supported by this gateway")


def _message(item: dict[str, Any], at: str) -> dict[str, Any]:
    role, content = item["role"], item.get("content")
    if role == "assistant":
        return {"role": "assistant", "content": _text_parts(content)}
    if not isinstance(content, str):
        content = [_user_part(p, f"{at}.content[{j}]") for j, p in enumerate(content or ())]
    return {"role": _CHAT_ROLES[role], "content": content}


def _tool_output(output: Any) -> str:
    return output if isinstance(output, str) else _text_parts(output)


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items → chat messages; consecutive function calls join the assistant turn before
    them (one assistant message with text and `tool_calls`, as chat has it)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            out.append(_message(item, f"input[{i}]"))
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last.get("content") or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _tool_output(item.get("output"))})
        # reasoning items: the chat shape has no way to send reasoning back
    return out


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _fail(f"tools[{i}].type", f"{kind!r}: only function tools are supported by"
                        " this gateway")
        if not isinstance(tool.get("name"), str):
            raise _fail(f"tools[{i}].name", "is required and must be a string")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict")
              if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _fail("tool_choice", "must be 'auto', 'none', 'required' or a function to call")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema" and isinstance(fmt.get("schema"), dict):
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description")
                if fmt.get(k) is not None}
        spec.setdefault("name", "output")
        return {"type": "json_schema", "json_schema": spec}
    raise _fail("text.format", "must be text, json_object or json_schema with a `schema`")


def chat_body(src: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The canonical body of a Responses request whose conversation is `items`."""
    messages = chat_messages(items)
    if src.get("instructions"):
        messages.insert(0, {"role": "system", "content": src["instructions"]})
    if not messages:
        raise _fail("input", "holds nothing to answer (only reasoning items)")
    body: dict[str, Any] = {"model": src["model"], "messages": messages}
    if src.get("stream") is True:
        body["stream"] = True
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if src.get(name) is not None:
            body[name] = src[name]
    if src.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = src["max_output_tokens"]
    if src.get("tools"):
        body["tools"] = _tools(src["tools"])
    if src.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(src["tool_choice"])
    fmt = _response_format(src["text"]) if isinstance(src.get("text"), dict) else None
    if fmt is not None:
        body["response_format"] = fmt
    effort = (src.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        body["reasoning_effort"] = effort
    user = src.get("safety_identifier") or src.get("user")
    if isinstance(user, str) and user:
        body["user"] = user
    return body
