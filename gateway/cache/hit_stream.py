"""A cached answer replayed as a stream: canonical chunks (OpenAI chunk objects) for the
client's own stream encoder, so the OpenAI and Anthropic surfaces render a hit exactly as
they render a live stream. A non-streamed hit needs nothing from here: the entry's body is
the complete response already.

Text is split where the original stream split it (the entry's `split`), so a replayed
stream equals the original chunk for chunk; an answer that was not streamed comes as one
text chunk. Tool calls come whole, one chunk each. A usage chunk always ends the replay
(its data only when the client asked for one: the Anthropic encoder reads `usage`).
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Any

import orjson

from gateway.cache.entry import Entry
from gateway.canonical import CanonicalRequest, StreamChunk, usage_json

_HEAD = ("id", "created", "model", "system_fingerprint")
_END = ("finish_reason", "stop_reason")
_NOT_EXTRA = frozenset({"role", "content", "tool_calls"})

Choice = dict[str, Any]


def chunks(entry: Entry, req: CanonicalRequest) -> list[StreamChunk]:
    obj = orjson.loads(entry.body)
    chat = req.operation == "chat"
    head = {name: obj[name] for name in _HEAD if name in obj}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    streams = []
    for pos, choice in enumerate(obj.get("choices") or ()):
        split = entry.split[pos] if entry.split and pos < len(entry.split) else None
        counts = entry.logprobs[pos] if entry.logprobs and pos < len(entry.logprobs) else None
        streams.append((_chat if chat else _completion)(choice, split, counts,
                                                        entry.finish_apart))
    out = [StreamChunk(orjson.dumps({**head, "choices": [choice]}))
           for step in zip_longest(*streams) for choice in step if choice is not None]
    usage = orjson.dumps({**head, "choices": [],
                          "usage": obj.get("usage") or usage_json(entry.usage)})
    out.append(StreamChunk(usage if req.include_usage else b"", usage=entry.usage,
                           usage_only=True))
    return out


def _pieces(text: str, split: list[int] | None) -> list[str]:
    if not split or sum(split) != len(text):
        return [text]
    out, at = [], 0
    for n in split:
        out.append(text[at:at + n])
        at += n
    return out


def _logprobs(lp: Any, counts: list[int] | None, pieces: int, primary: str) -> list[Any]:
    """The choice's logprobs cut as the text was: lists aligned with the primary one
    (`content` or `tokens`) are sliced, anything else goes with the first piece."""
    if not isinstance(lp, dict):
        return [None] * pieces
    if counts is None or len(counts) != pieces or pieces == 1:
        return [lp] + [None] * (pieces - 1)
    size = len(lp.get(primary) or ())
    if sum(counts) != size:
        return [lp] + [None] * (pieces - 1)
    out, at = [], 0
    for i, n in enumerate(counts):
        out.append({name: value[at:at + n] if isinstance(value, list) and len(value) == size
                    else value for name, value in lp.items()
                    if i == 0 or (isinstance(value, list) and len(value) == size)})
        at += n
    return out


def _finish(out: list[Choice], choice: Choice, apart: bool, empty: Choice) -> list[Choice]:
    end = {name: choice[name] for name in _END if choice.get(name) is not None}
    if apart or not out:
        out.append({**empty, **end})
    else:
        out[-1].update(end)
    return out


def _chat(choice: Choice, split: list[int] | None, counts: list[int] | None,
          apart: bool) -> list[Choice]:
    index = choice.get("index", 0)
    msg = choice.get("message") or {}
    first = {"role": msg.get("role") or "assistant",
             **{k: v for k, v in msg.items() if k not in _NOT_EXTRA and v is not None}}
    text = msg.get("content")
    pieces = _pieces(text, split) if isinstance(text, str) else []
    lps = _logprobs(choice.get("logprobs"), counts, len(pieces), "content")
    out = [{"index": index, "delta": {**first, "content": piece} if i == 0 else
            {"content": piece}, "logprobs": lps[i], "finish_reason": None}
           for i, piece in enumerate(pieces)]
    if not pieces:
        out.append({"index": index, "delta": first, "logprobs": None, "finish_reason": None})
    calls = msg.get("tool_calls") or ()
    out += [{"index": index, "delta": {"tool_calls": [{"index": i, **call}]},
             "logprobs": None, "finish_reason": None} for i, call in enumerate(calls)]
    empty = {"index": index, "delta": {}, "logprobs": None, "finish_reason": None}
    return _finish(out, choice, apart or bool(calls), empty)


def _completion(choice: Choice, split: list[int] | None, counts: list[int] | None,
                apart: bool) -> list[Choice]:
    index = choice.get("index", 0)
    text = choice.get("text")
    pieces = _pieces(text if isinstance(text, str) else "", split)
    lps = _logprobs(choice.get("logprobs"), counts, len(pieces), "tokens")
    out = [{"index": index, "text": piece, "logprobs": lps[i], "finish_reason": None}
           for i, piece in enumerate(pieces)]
    empty = {"index": index, "text": "", "logprobs": None, "finish_reason": None}
    return _finish(out, choice, apart, empty)
