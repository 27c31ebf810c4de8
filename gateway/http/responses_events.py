"""Canonical chunks → the Responses API's typed stream events, in OpenAI's order:

    response.created, response.in_progress,
    per output item: response.output_item.added,
      reasoning / message: response.content_part.added, the part's deltas
        (response.reasoning_text.delta, response.output_text.delta, response.refusal.delta),
        its `.done`, response.content_part.done;
      function call: response.function_call_arguments.delta..., .done;
    response.output_item.done,
    then response.completed (or response.incomplete, with its reason).

Every event carries its `sequence_number` from 0; an item's events carry its
`output_index` and `item_id`. A stream that fails after its head ends with an `error`
event and `response.failed` (whose response says why).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from gateway.canonical import StreamChunk, Usage, usage_from_json
from gateway.errors import GatewayError
from gateway.http.responses_objects import Echo, incomplete_reason, usage_object
from gateway.http.responses_schema import new_id
from gateway.wire.sse import encode

# A text-like item kind → (its part's type, the part's text field, its events' prefix).
_PARTS = {
    "reasoning": ("reasoning_text", "text", "response.reasoning_text"),
    "message": ("output_text", "text", "response.output_text"),
    "refusal": ("refusal", "refusal", "response.refusal"),
}


class Sink(Protocol):
    final: dict[str, Any] | None


class _Item:
    __slots__ = ("index", "item", "kind", "pieces")

    def __init__(self, kind: str, index: int, item: dict[str, Any]) -> None:
        self.kind = kind
        self.index = index
        self.item = item
        self.pieces: list[str] = []


def _error_code(err: GatewayError) -> str:
    if err.status == 429:
        return "rate_limit_exceeded"
    return err.code or ("server_error" if err.status >= 500 else "invalid_request_error")


class ResponsesEvents:
    __slots__ = ("_calls", "_done", "_echo", "_finish", "_next", "_open", "_seq", "_sink",
                 "_started", "_usage")

    def __init__(self, echo: Echo, sink: Sink) -> None:
        self._echo = echo
        self._sink = sink
        self._seq = 0
        self._started = False
        self._next = 0  # the next output_index
        self._done: list[dict[str, Any]] = []  # finished items, in output order
        self._open: list[_Item] = []
        self._calls: dict[int, _Item] = {}  # chat tool_calls index → its item
        self._finish: str | None = None
        self._usage: Usage | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        body = orjson.dumps({"type": kind, **data, "sequence_number": self._seq})
        self._seq += 1
        return encode(body, kind.encode())

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = self._echo.response("in_progress", [])
        return (self._event("response.created", {"response": response})
                + self._event("response.in_progress", {"response": response}))

    def chunk(self, chunk: StreamChunk) -> bytes:
        out = [self._begin()]
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.data:
            obj = orjson.loads(chunk.data)
            if self._usage is None:
                self._usage = usage_from_json(obj.get("usage"))
            for choice in obj.get("choices") or ():
                if choice.get("index", 0) == 0:  # the Responses API has no `n`
                    out += self._choice(choice)
        return b"".join(out)

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        delta = choice.get("delta") or {}
        out: list[bytes] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        for kind, piece in (("reasoning", reasoning), ("message", delta.get("content")),
                            ("refusal", delta.get("refusal"))):
            if isinstance(piece, str) and piece:
                out += self._text(kind, piece)
        for call in delta.get("tool_calls") or ():
            out += self._call(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _open_item(self, kind: str, item: dict[str, Any]) -> tuple[_Item, bytes]:
        opened = _Item(kind, self._next, item)
        self._next += 1
        self._open.append(opened)
        return opened, self._event("response.output_item.added",
                                   {"output_index": opened.index, "item": item})

    def _text(self, kind: str, piece: str) -> list[bytes]:
        out: list[bytes] = []
        current = self._open[-1] if len(self._open) == 1 else None
        if current is None or current.kind != kind:
            out += self._close_all()
            if kind == "reasoning":
                item = {"id": new_id("rs_"), "type": "reasoning", "summary": [], "content": [],
                        "status": "in_progress"}
            else:
                item = {"id": new_id("msg_"), "type": "message", "role": "assistant",
                        "status": "in_progress", "content": []}
            current, added = self._open_item(kind, item)
            out.append(added)
            out.append(self._event("response.content_part.added", {
                **self._at(current), "content_index": 0, "part": self._part(kind, "")}))
        current.pieces.append(piece)
        extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
        out.append(self._event(_PARTS[kind][2] + ".delta", {
            **self._at(current), "content_index": 0, "delta": piece, **extra}))
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        current = self._calls.get(index)
        if current is None:  # a call's first delta carries its id and name
            if any(o.kind != "function_call" for o in self._open):
                out += self._close_all()
            item = {"id": new_id("fc_"), "type": "function_call",
                    "call_id": call.get("id") or new_id("call_"), "name": fn.get("name") or "",
                    "arguments": "", "status": "in_progress"}
            current, added = self._open_item("function_call", item)
            self._calls[index] = current
            out.append(added)
        if fn.get("arguments"):
            current.pieces.append(fn["arguments"])
            out.append(self._event("response.function_call_arguments.delta",
                                   {**self._at(current), "delta": fn["arguments"]}))
        return out

    @staticmethod
    def _at(item: _Item) -> dict[str, Any]:
        return {"item_id": item.item["id"], "output_index": item.index}

    @staticmethod
    def _part(kind: str, text: str) -> dict[str, Any]:
        part_type, field, _ = _PARTS[kind]
        part: dict[str, Any] = {"type": part_type, field: text}
        if kind == "message":
            part.update(annotations=[], logprobs=[])
        return part

    def _close_all(self, status: str = "completed") -> list[bytes]:
        out = [self._close(item, status) for item in self._open]
        self._open.clear()
        return out

    def _close(self, item: _Item, status: str) -> bytes:
        text = "".join(item.pieces)
        at = self._at(item)
        if item.kind == "function_call":
            done = {**item.item, "arguments": text, "status": "completed"}
            events = [self._event("response.function_call_arguments.done",
                                  {**at, "name": done["name"], "arguments": text})]
        else:
            part = self._part(item.kind, text)
            field = _PARTS[item.kind][1]
            extra: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
            events = [
                self._event(_PARTS[item.kind][2] + ".done",
                            {**at, "content_index": 0, field: text, **extra}),
                self._event("response.content_part.done",
                            {**at, "content_index": 0, "part": part}),
            ]
            done = {**item.item, "content": [part],
                    "status": status if item.kind != "reasoning" else "completed"}
        self._done.append(done)
        events.append(self._event("response.output_item.done",
                                  {"output_index": item.index, "item": done}))
        return b"".join(events)

    def end(self) -> bytes:
        reason = incomplete_reason(self._finish)
        out = [self._begin(), *self._close_all("incomplete" if reason else "completed")]
        response = self._echo.response("incomplete" if reason else "completed", self._done,
                                       usage_object(self._usage or Usage()), reason)
        response["completed_at"] = int(time.time())
        self._sink.final = response
        kind = "response.incomplete" if reason else "response.completed"
        out.append(self._event(kind, {"response": response}))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        code = _error_code(err)
        failed = self._echo.response("failed", self._done,
                                     error={"code": code, "message": err.message})
        return b"".join([
            self._begin(),
            self._event("error", {"code": code, "message": err.message, "param": err.param}),
            self._event("response.failed", {"response": failed}),
        ])
