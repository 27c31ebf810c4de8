"""KV-aware: send a request to the vLLM replica that already holds the longest prefix of
it in its KV cache, as the replica's own KV events say (`policies/kv_index.py`), unless
that replica is too busy for it.

For each replica whose events are followed, the request's block keys (its prompt
tokenized and hashed as vLLM does) are matched against the blocks it holds: the cached
prefix, in tokens. A replica is *eligible* when its load is within `bound` x the pool's
average (plus one), as in prefix affinity, and, when the request has a TTFT target and the
replica a prediction, its predicted TTFT for the part of the prompt it does not hold (the
SLO prediction with the cached prefix taken off: `predict`) meets it. Among eligible
replicas holding a prefix, the longest prefix wins (ties: the least loaded). When none
does (a new prefix, or every holder overloaded) the prefix-affinity ring decides, which
sends a new prefix to a consistent home and spreads the overflow of a hot one.

Replicas whose events are not followed (no events configured, the subscriber lost them)
are unknown, not empty: they are never preferred for a prefix, and take requests through
the ring like any other. A pool with no known replica is routed by prefix affinity alone.

Right after a plan, the blocks of the request are counted as cached on the replica it
goes to (speculatively, until that replica's events say what it stored), so the requests
of a burst that share a new prefix follow the first one instead of scattering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.canonical import CanonicalRequest, Deployment
from policies.kv_index import Key, KvView
from policies.routing.base import Plan, RouteHints, load
from policies.routing.prefix_affinity import PrefixAffinity
from policies.scoreboard import Scoreboard

# Predicted TTFT (s) of a deployment for a prompt of this many tokens; None: no data.
Predict = Callable[[Deployment, int], float | None]


@dataclass(slots=True)
class _Match:
    dep: Deployment
    cached: int  # tokens of the prompt the replica holds
    keys: Sequence[Key]


class KvAware:
    name = "kv-aware"

    def __init__(self, board: Scoreboard, kv: KvView, predict: Predict | None = None,
                 bound: float = 1.25) -> None:
        self._board = board
        self._kv = kv
        self._predict = predict
        self._bound = bound
        self._ring = PrefixAffinity(board, bound)
        self._pending: tuple[CanonicalRequest, dict[str, Sequence[Key]]] | None = None

    def _matches(self, req: CanonicalRequest, deployments: Sequence[Deployment]
                 ) -> list[_Match] | None:
        """What each known replica holds of the request; None when no replica is known
        or the request cannot be keyed."""
        index, out, known = self._kv.index, [], False
        for dep in deployments:
            keyer = self._kv.keyer(dep)
            entry = index.get(dep.id) if keyer is not None else None
            if keyer is None or entry is None or not entry.known:
                continue
            known = True
            if not entry.block_size:  # nothing stored since we follow it: nothing cached
                continue
            keys = keyer.keys(req, dep, entry.block_size)
            if keys is None:
                return None
            out.append(_Match(dep, (index.matched(dep.id, keys) or 0) * entry.block_size,
                              keys))
        return out if known else None

    def cached_tokens(self, req: CanonicalRequest, deployments: Sequence[Deployment]
                      ) -> dict[str, int]:
        """Tokens of the request each known replica holds (by deployment id): what a TTFT
        prediction can take off the prompt (keys are computed once per request)."""
        return {m.dep.id: m.cached for m in self._matches(req, deployments) or ()}

    def order(self, req: CanonicalRequest, deployments: Sequence[Deployment],
              hints: RouteHints | None = None) -> tuple[list[Deployment], str]:
        prompt = hints.prompt_tokens if hints is not None else 0
        slo = hints.slo_ttft_s if hints is not None else None
        matches = self._matches(req, deployments)
        if matches is None:
            self._pending = None
            ordered, why = self._ring.order(req, deployments)
            return ordered, f"no kv events: {why}"
        self._pending = (req, {m.dep.id: m.keys for m in matches})
        loads = {d.id: load(self._board, d) for d in deployments}
        cap = self._bound * (sum(loads.values()) + 1) / len(deployments) + 1
        best: _Match | None = None
        for m in matches:
            if m.cached <= 0 or loads[m.dep.id] >= cap:
                continue
            if slo is not None and self._predict is not None:
                p = self._predict(m.dep, max(0, prompt - m.cached))
                if p is not None and p > slo:
                    continue
            if best is None or (m.cached, -loads[m.dep.id]) > (best.cached,
                                                              -loads[best.dep.id]):
                best = m
        if best is None:
            ordered, why = self._ring.order(req, deployments)
            held = max((m.cached for m in matches), default=0)
            return ordered, (f"kv prefix none cached: {why}" if not held else
                             f"kv prefix holders busy: {why}")
        rest, _ = self._ring.order(req, [d for d in deployments if d is not best.dep])
        return [best.dep, *rest], f"kv prefix {best.cached} tokens cached"

    def routed(self, req: CanonicalRequest, dep: Deployment) -> None:
        """The plan for `req` goes to `dep` first: its blocks are cached there soon."""
        pending = self._pending
        if pending is None or pending[0] is not req:
            return
        keys = pending[1].get(dep.id)
        if keys:
            self._kv.index.speculate(dep.id, keys)
        self._pending = None

    def plan(self, req: CanonicalRequest, deployments: Sequence[Deployment],
             hints: RouteHints) -> Plan:
        ordered, reason = self.order(req, deployments, hints)
        self.routed(req, ordered[0])
        return Plan(ordered, self.name, reason)
