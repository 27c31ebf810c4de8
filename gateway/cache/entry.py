"""One cached answer, and its stored form.

An entry is always the complete canonical (OpenAI-shaped, non-streamed) response, however
it was first delivered: a non-streamed answer as the upstream gave it, a streamed one
assembled while it streamed (gateway/cache/assemble.py). When it was streamed, the entry
also keeps where each chunk's text ended, so a streamed replay splits the text exactly as
the original stream did (gateway/cache/hit_stream.py).

Stored form: one line of JSON metadata, a newline, then the response body as is, so a
non-streamed hit hands the body on without parsing it. orjson escapes newlines inside
strings, so the first newline always ends the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.cache.request_key import FORMAT
from gateway.canonical import Usage


@dataclass(slots=True)
class Entry:
    body: bytes  # the complete canonical response
    usage: Usage  # what generating it took: what a hit saves
    cost_nanos: int  # what it cost then
    created: float  # unix time it was stored
    # Streamed originals: per choice (in body order), the text length of each chunk, and
    # the number of logprob entries each chunk carried (None when there were none).
    split: list[list[int]] | None = None
    logprobs: list[list[int]] | None = None
    finish_apart: bool = True  # the finish_reason came in a chunk without text

    def encode(self) -> bytes:
        u = self.usage
        meta = {"v": FORMAT, "u": [u.prompt_tokens, u.completion_tokens, u.cached_tokens],
                "c": self.cost_nanos, "t": round(self.created, 3), "s": self.split,
                "l": self.logprobs, "f": self.finish_apart}
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """None for anything unreadable: the caller treats it as a miss and replaces it."""
        head, sep, body = raw.partition(b"\n")
        try:
            meta = orjson.loads(head)
            if not sep or meta["v"] != FORMAT:
                return None
            return cls(body, Usage(*meta["u"]), int(meta["c"]), float(meta["t"]),
                       meta["s"], meta["l"], bool(meta["f"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
