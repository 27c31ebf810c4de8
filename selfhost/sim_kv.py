"""The simulator's KV cache, block by block as vLLM keeps it, and its KV events on the
wire as vLLM publishes them (`selfhost/kv_events.py` describes the format), so KV-aware
routing can be tested and simulated at scale without a GPU.

- `SimTokenizer`: the simulator's "model" tokenizes by words (one word, one token, an id
  hashed from the word) with 4 template tokens per chat message: the prompt sizes
  `sim_content` reports. The gateway keys requests for a simulated pool with it.
- `BlockCache`: an LRU of full blocks under vLLM's chained block keys
  (`selfhost/kv_blocks.py`); a prompt hits the longest prefix of its blocks it holds,
  then its blocks are stored (the least recently used evicted beyond capacity), and what
  changed is queued as `BlockStored` / `BlockRemoved` events.
- `KvPublisher`: a ZMQ PUB socket sending each batch with its sequence number, and a
  ROUTER socket replaying the buffered batches on request, as vLLM's `ZmqEventPublisher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from gateway.canonical import CanonicalRequest
from selfhost.kv_blocks import BlockHasher, BlockKey

_ROLE_IDS = {"system": 3, "developer": 4, "user": 5, "assistant": 6, "tool": 7}
_BOS, _END, _OTHER_ROLE = 1, 2, 8
_WORD_IDS = 50_000  # word ids: 100 .. 100 + _WORD_IDS
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def _word_id(word: str) -> int:
    return 100 + int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(),
                                "big") % _WORD_IDS


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class SimTokenizer:
    """Token ids of a simulator prompt: per chat message BOS, its role, its words, END
    and a separator (4 + words, as `sim_content` counts); a completions prompt's words."""

    def tokens(self, req: CanonicalRequest) -> list[int] | None:
        return body_tokens(req.body, chat=req.operation == "chat")


def body_tokens(body: dict[str, Any], *, chat: bool) -> list[int] | None:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        out: list[int] = []
        for m in messages:
            if not isinstance(m, dict):
                return None
            role = _ROLE_IDS.get(str(m.get("role")), _OTHER_ROLE)
            out += [_BOS, role, *(_word_id(w) for w in _text(m.get("content")).split()),
                    _END, 0]
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [_word_id(w) for w in prompt.split()]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return None


class BlockCache:
    """A replica's prefix cache of `capacity` blocks; events queue up until drained."""

    def __init__(self, capacity: int, hasher: BlockHasher) -> None:
        self.capacity = capacity
        self.hasher = hasher
        self._lru: OrderedDict[BlockKey, None] = OrderedDict()
        self._events: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._lru)

    def lookup_insert(self, tokens: Sequence[int], lora: tuple[str, str] | None = None
                      ) -> int:
        """Cached tokens of this prompt (its longest cached block prefix); then its blocks
        are cached, most recently used."""
        extra = (("lora", *lora),) if lora is not None else None
        return self.insert_keys(self.hasher.keys(tokens, extra), tokens, lora)

    def insert_keys(self, keys: Sequence[BlockKey], tokens: Sequence[int],
                    lora: tuple[str, str] | None = None) -> int:
        """`lookup_insert` for a prompt whose block keys are known already."""
        size = self.hasher.block_size
        lru = self._lru
        hit = 0
        while hit < len(keys) and keys[hit] in lru:
            hit += 1
        start: int | None = None  # of the run of new blocks being stored
        for i, key in enumerate([*keys, None]):
            if key is not None and key not in lru:
                lru[key] = None
                start = i if start is None else start
                continue
            if start is not None:  # one event per run of new blocks, as vLLM sends
                self._events.append({
                    "type": "BlockStored", "block_hashes": keys[start:i],
                    "parent_block_hash": keys[start - 1] if start > 0 else None,
                    "token_ids": list(tokens[start * size:i * size]), "block_size": size,
                    "lora_id": None, "medium": "GPU",
                    "lora_name": lora[0] if lora is not None else None})
                start = None
        # A prompt's tail blocks go before its head (vLLM frees a request's blocks in
        # reverse): a prefix outlives its continuations.
        for key in reversed(keys):
            lru.move_to_end(key)
        evicted = []
        while len(lru) > self.capacity:
            evicted.append(lru.popitem(last=False)[0])
        if evicted:
            self._events.append({"type": "BlockRemoved", "block_hashes": evicted,
                                 "medium": "GPU"})
        return hit * size

    def clear(self) -> None:
        self._lru.clear()
        self._events.append({"type": "AllBlocksCleared"})

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


def encode_batch(events: list[dict[str, Any]], ts: float | None = None) -> bytes:
    """An event batch as vLLM's publisher encodes it: `[ts, [events], dp_rank]`."""
    return msgspec.msgpack.encode([time.time() if ts is None else ts, events, 0])


class KvPublisher:
    """Publishes event batches on a PUB socket and replays the last `buffer_steps` of them
    on a ROUTER socket; both bound on `host` (port 0: free ports)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, replay_port: int = 0,
                 buffer_steps: int = 10_000) -> None:
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._replay = self._ctx.socket(zmq.ROUTER)
        self._replay.setsockopt(zmq.LINGER, 0)
        self.port = self._bind(self._pub, host, port)
        self.replay_port = self._bind(self._replay, host, replay_port)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _bind(sock: zmq.asyncio.Socket, host: str, port: int) -> int:
        if port:
            sock.bind(f"tcp://{host}:{port}")
            return port
        return int(sock.bind_to_random_port(f"tcp://{host}"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve_replays())

    def publish(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        payload = encode_batch(events)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):  # no subscriber keeping up: dropped, as vLLM
            self._pub.send_multipart((b"", seq.to_bytes(8, "big"), payload), zmq.NOBLOCK)

    async def _serve_replays(self) -> None:
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await self._replay.send_multipart(
                        (client, b"", b"", seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pub.close(linger=0)
        self._replay.close(linger=0)
        self._ctx.term()
