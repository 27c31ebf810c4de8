"""Prefix affinity: requests that share a prompt prefix go to the same vLLM replica, so
its prefix cache (KV blocks of the system prompt and first turns) is hit.

Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018): the prefix
hashes to a point on a ring of virtual nodes; walking clockwise, the first replica whose
load is within `bound` x the average (plus one) takes it. When every replica is over
its bound, fall back to least-loaded. Replicas joining or leaving move only their share
of prefixes.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.canonical import CanonicalRequest, Deployment
from policies.routing.base import Plan, RouteHints, load
from policies.routing.least_loaded import LeastLoaded
from policies.scoreboard import Scoreboard

_VNODES = 64
_PREFIX_TURNS = 1  # without a system prompt: the first turn is the shared prefix
_PREFIX_CHARS = 2048  # of a completions prompt


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_key(req: CanonicalRequest) -> bytes:
    """The leading system prompt (chat), else the first turn; or the prompt's head
    (completions). Requests sharing a system prompt share vLLM's cached KV blocks for
    it, whatever question follows; a growing conversation keeps its first turn."""
    body = req.body
    messages = body.get("messages")
    if isinstance(messages, list):
        head: list[Any] = []
        for m in messages:
            if not (isinstance(m, dict) and m.get("role") in ("system", "developer")):
                break
            head.append(m)
        return orjson.dumps(head or messages[:_PREFIX_TURNS])
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt[:_PREFIX_CHARS].encode()
    return orjson.dumps(prompt)[:_PREFIX_CHARS]


class PrefixAffinity:
    name = "prefix-affinity"

    def __init__(self, board: Scoreboard, bound: float = 1.25) -> None:
        self._board = board
        self._bound = bound
        self._fallback = LeastLoaded(board)
        self._rings: dict[tuple[str, ...], tuple[list[int], list[int]]] = {}

    def _ring(self, deployments: Sequence[Deployment]) -> tuple[list[int], list[int]]:
        key = tuple(d.id for d in deployments)
        ring = self._rings.get(key)
        if ring is None:
            points = sorted((_hash(f"{d.id}#{v}".encode()), i)
                            for i, d in enumerate(deployments) for v in range(_VNODES))
            ring = self._rings[key] = ([p for p, _ in points], [i for _, i in points])
        return ring

    def order(self, req: CanonicalRequest, deployments: Sequence[Deployment],
              hints: RouteHints | None = None) -> tuple[list[Deployment], str]:
        """`hints` are not needed here (slo-cost's within-pool steps share a signature)."""
        hashes, owners = self._ring(deployments)
        loads = [load(self._board, d) for d in deployments]
        capacity = self._bound * (sum(loads) + 1) / len(deployments) + 1
        start = bisect.bisect(hashes, _hash(prefix_key(req)))
        tried: set[int] = set()
        for step in range(len(hashes)):
            i = owners[(start + step) % len(hashes)]
            if i in tried:
                continue
            tried.add(i)
            if loads[i] < capacity:
                chosen = deployments[i]
                rest, _ = self._fallback.order(req, [d for d in deployments if d is not chosen])
                how = "home" if len(tried) == 1 else f"spilled {len(tried) - 1} along the ring"
                return [chosen, *rest], f"prefix {how}"
            if len(tried) == len(deployments):
                break
        ordered, _ = self._fallback.order(req, deployments)
        return ordered, "every replica over its load bound: least-loaded"

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        ordered, reason = self.order(req, deployments)
        return Plan(ordered, self.name, reason)
