"""A streamed answer, assembled into the complete response while it streams (what OpenAI's
SDKs do client side): text, tool calls and logprobs concatenated per choice, the last
finish reason kept. It records where each chunk's text ended, so a replay can split the
text the same way. Fed only for requests whose answer is going to be stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.cache.entry import Entry
from gateway.canonical import StreamChunk, Usage, usage_json

_HEAD = ("id", "created", "model", "system_fingerprint")
_CHOICE_END = ("finish_reason", "stop_reason")  # vLLM names the matched stop string too
_RAW_FACTOR = 8  # chunk framing dwarfs the text: stop reading well past the entry cap


class _Choice:
    __slots__ = ("calls", "end", "fields", "logprobs", "lp_split", "split", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.split: list[int] = []  # text length of each chunk
        self.lp_split: list[int] = []  # logprob entries of each chunk
        self.fields: dict[str, Any] = {}  # other message fields: role, refusal, reasoning
        self.calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list[Any]] | None = None
        self.end: dict[str, Any] = {}

    def feed(self, choice: dict[str, Any], chat: bool) -> bool:
        """Take one chunk's choice; True when it carried text."""
        delta: dict[str, Any] = (choice.get("delta") or {}) if chat else {}
        text = delta.get("content") if chat else choice.get("text")
        entries = self._logprobs(choice.get("logprobs"))
        if isinstance(text, str):
            self.text.append(text)
            self.split.append(len(text))
            self.lp_split.append(entries)
        elif entries and self.lp_split:
            self.lp_split[-1] += entries
        for name, value in delta.items():
            if name == "content" or value is None:
                continue
            if name == "tool_calls":
                self._calls(value)
            elif isinstance(value, str) and name != "role":  # refusal, reasoning: pieces
                self.fields[name] = self.fields.get(name, "") + value
            else:
                self.fields[name] = value
        for name in _CHOICE_END:
            if choice.get(name) is not None:
                self.end[name] = choice[name]
        return bool(text)

    def _logprobs(self, lp: Any) -> int:
        if not isinstance(lp, dict):
            return 0
        merged = self.logprobs = self.logprobs or {}
        for name, value in lp.items():
            if isinstance(value, list):
                merged.setdefault(name, []).extend(value)
        return len(lp.get("content") or lp.get("tokens") or ())

    def _calls(self, deltas: Any) -> None:
        for d in deltas:
            call = self.calls.setdefault(d.get("index", 0), {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            for name in ("id", "type"):
                if d.get(name):
                    call[name] = d[name]
            fn = d.get("function") or {}
            for name in ("name", "arguments"):
                if fn.get(name):
                    call["function"][name] += fn[name]

    def render(self, index: int, chat: bool) -> dict[str, Any]:
        text = "".join(self.text)
        if not chat:
            return {"index": index, "text": text, "logprobs": self.logprobs,
                    "finish_reason": None, **self.end}
        message = {"role": "assistant", **self.fields,
                   "content": text or (None if self.calls else text)}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return {"index": index, "message": message, "logprobs": self.logprobs,
                "finish_reason": None, **self.end}


class StreamAssembler:
    __slots__ = ("_chat", "_choices", "_finish_apart", "_head", "_limit", "_seen", "_usage",
                 "overflow")

    def __init__(self, chat: bool, max_bytes: int) -> None:
        self._chat = chat
        self._limit = max_bytes * _RAW_FACTOR
        self._seen = 0
        self._head: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}
        self._finish_apart = True
        self._usage: Any = None  # the upstream's own usage object, when the client saw it
        self.overflow = False  # too large to store: assembly stopped

    def feed(self, chunk: StreamChunk) -> None:
        data = chunk.data
        if not data or self.overflow:
            return
        self._seen += len(data)
        if self._seen > self._limit:
            self.overflow = True
            self._choices.clear()  # nothing of it will be stored: free it now
            return
        obj = orjson.loads(data)
        if self._head is None:
            self._head = {name: obj[name] for name in _HEAD if name in obj}
        if obj.get("usage"):
            self._usage = obj["usage"]
        for choice in obj.get("choices") or ():
            index = choice.get("index", 0)
            slot = self._choices.get(index)
            if slot is None:
                slot = self._choices[index] = _Choice()
            texted = slot.feed(choice, self._chat)
            if choice.get("finish_reason") is not None:
                self._finish_apart = not texted

    def entry(self, usage: Usage, cost_nanos: int, created: float) -> Entry | None:
        """The complete response; None when nothing (or too much) was seen."""
        if self.overflow or self._head is None or not self._choices:
            return None
        order = sorted(self._choices)
        choices = [self._choices[i] for i in order]
        body = orjson.dumps({
            **self._head, "object": "chat.completion" if self._chat else "text_completion",
            "choices": [c.render(i, self._chat) for i, c in zip(order, choices, strict=True)],
            "usage": self._usage or usage_json(usage)})
        logprobs = [c.lp_split for c in choices] if any(c.logprobs for c in choices) else None
        return Entry(body, usage, cost_nanos, created, [c.split for c in choices], logprobs,
                     self._finish_apart)
