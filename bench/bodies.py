"""The request bodies the load clients send, per system (`body:` in the systems file).

- `plain`: one fixed request, no temperature: the config's cache (deterministic only)
  never takes it.
- `unique`: `temperature: 0` and a prompt numbered afresh for every request, so a cached
  system misses every time (the issue's "cache on, every request a miss").
- `repeat`: `temperature: 0` and one fixed prompt: after the first, every request hits
  (a streamed request asks another prompt, so that its hits replay a streamed answer
  chunk for chunk, not the non-streamed one as a single chunk).

A `unique` body holds `MARK`, which each client replaces per request with a number of the
same width (a salt for the run, then a counter): Content-Length never changes, and runs
never answer each other from the cache.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from bench.mock_upstream import MODEL

MODES = ("plain", "unique", "repeat")
MARK = b"@@BENCH_UNIQUE@@"  # 16 bytes: a 6-hex-digit salt and a 10-digit counter


def request_body(stream: bool, mode: str = "plain") -> bytes:
    prompt = "Say hello." if mode != "unique" else "Say hello. " + MARK.decode()
    if mode == "repeat" and stream:
        prompt = "Say hello, streamed."
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 64,
                            "messages": [{"role": "user", "content": prompt}]}
    if mode != "plain":
        body["temperature"] = 0
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


class Numbered:
    """`next()`: the body with MARK replaced by this run's next number (the body as it is
    when it holds no MARK)."""

    def __init__(self, body: bytes) -> None:
        self.head, found, self.tail = body.partition(MARK)
        self.unique = bool(found)
        self.salt = os.urandom(3).hex().encode()
        self.count = itertools.count()

    def next(self) -> bytes:
        if not self.unique:
            return self.head
        return b"%s%s%010d%s" % (self.head, self.salt, next(self.count), self.tail)
