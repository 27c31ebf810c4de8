"""The objects of the Responses API that both its answers and its streams are made of: a
Response (its request echoed, its status and output), output items from a canonical
assistant message, usage in the Responses shape."""

from __future__ import annotations

import time
from typing import Any

from gateway.canonical import Usage
from gateway.http.responses_schema import new_id

# Chat finish_reason → why a response is incomplete.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def usage_object(u: Usage) -> dict[str, Any]:
    """Canonical usage in the Responses shape (the same convention: input_tokens includes
    cached tokens, output_tokens reasoning tokens)."""
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens,
                                     "cache_write_tokens": u.cache_write_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def incomplete_reason(finish: Any) -> str | None:
    return _INCOMPLETE.get(finish) if isinstance(finish, str) else None


class Echo:
    """What a Response repeats of its request, and its identity."""

    __slots__ = ("created_at", "id", "src")

    def __init__(self, src: dict[str, Any]) -> None:
        self.src = src
        self.id = new_id("resp_")
        self.created_at = int(time.time())

    def response(self, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None = None, incomplete: str | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        src = self.src
        reasoning = src.get("reasoning")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": src.get("instructions"),
            "max_output_tokens": src.get("max_output_tokens"),
            "max_tool_calls": src.get("max_tool_calls"), "model": src["model"],
            "output": output, "parallel_tool_calls": src.get("parallel_tool_calls", True),
            "previous_response_id": src.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
            if isinstance(reasoning, dict) else None,
            "store": src.get("store", True), "temperature": src.get("temperature"),
            "text": src.get("text") or {"format": {"type": "text"}},
            "tool_choice": src.get("tool_choice", "auto"), "tools": src.get("tools") or [],
            "top_p": src.get("top_p"), "truncation": src.get("truncation") or "disabled",
            "usage": usage, "user": src.get("user"), "metadata": src.get("metadata") or {},
        }


def _message_item(content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": new_id("msg_"), "type": "message", "role": "assistant",
            "status": status, "content": content}


def output_items(msg: dict[str, Any], incomplete: bool) -> list[dict[str, Any]]:
    """A canonical assistant message as output items: its reasoning, its text (or
    refusal), then one function call item per tool call."""
    out: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append({"id": new_id("rs_"), "type": "reasoning", "summary": [],
                    "content": [{"type": "reasoning_text", "text": reasoning}],
                    "status": "completed"})
    calls = msg.get("tool_calls") or []
    text, refusal = msg.get("content"), msg.get("refusal")
    status = "incomplete" if incomplete else "completed"
    if refusal:
        out.append(_message_item([{"type": "refusal", "refusal": refusal}], status))
    elif text or not calls:
        out.append(_message_item([{"type": "output_text", "text": text or "",
                                   "annotations": [], "logprobs": []}], status))
    for call in calls:
        fn = call.get("function") or {}
        out.append({"id": new_id("fc_"), "type": "function_call",
                    "call_id": call.get("id") or new_id("call_"),
                    "name": fn.get("name") or "", "arguments": fn.get("arguments") or "",
                    "status": "completed"})
    return out
