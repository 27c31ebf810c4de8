"""What the console costs the request path: one attribute test per settled request, and
while a console is open, one append to a bounded ring.

`Telemetry.settled` hands every admitted request, exactly once, to `Recorder.settled`.
While nobody watches, it returns at once. While someone does (`watching`, switched by
`live.Publisher` from a flag in the store), it appends the request's four records to a
ring (a deque with a maximum length: O(1), no allocation besides the tuple). The
publisher drains the ring a few times a second, off the request path, into:
- running sums per deployment (tokens, cost) and per team and key (requests, tokens,
  cost, cache hits and savings, errors): what the live view and the spend page show;
- a sample of decisions (at most `sample_per_s` a second): the route, the candidates
  and their scores, attempts, cache, tokens, cost. A prompt excerpt only for the teams
  that opted in to content capture (`telemetry.tracing.capture_content`).

If a burst overflows the ring between two drains, the oldest entries are lost to the
sums (counted in `dropped`): the console's figures never hold up a request.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.accounting.metering import Outcome, RequestContext
from gateway.store import SettleArgs
from policies.routing.base import Plan

RING = 8192  # settled requests held between drains (4 a second while watching)
DECISIONS_KEPT = 50  # the most recent sampled decisions, published with each snapshot
MAX_CANDIDATES = 8  # shown per decision
EXCERPT_CHARS = 200

Entry = tuple[RequestContext, Outcome, SettleArgs, "Plan | None"]


@dataclass(slots=True)
class Sums:
    """Running sums, since this process started (while it was watched)."""

    requests: int = 0
    tokens: int = 0
    cost_nanos: int = 0
    cache_hits: int = 0
    saved_cost_nanos: int = 0
    errors: int = 0

    def add(self, args: SettleArgs) -> None:
        self.requests += 1
        self.tokens += args.prompt_tokens + args.completion_tokens
        self.cost_nanos += args.cost_nanos
        self.cache_hits += args.cache_hit
        self.saved_cost_nanos += args.saved_cost_nanos
        self.errors += args.error

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "tokens": self.tokens,
                "cost_nanos": self.cost_nanos, "cache_hits": self.cache_hits,
                "saved_cost_nanos": self.saved_cost_nanos, "errors": self.errors}


@dataclass(slots=True)
class Recorder:
    proc: str  # this process's id: decision ids are unique across processes
    sample_per_s: float = 10.0
    capture_teams: frozenset[str] = frozenset()
    watching: bool = False
    deployments: dict[str, Sums] = field(default_factory=dict)
    teams: dict[str, Sums] = field(default_factory=dict)
    keys: dict[tuple[str, str], Sums] = field(default_factory=dict)
    decisions: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    dropped: int = 0  # entries the ring lost to a burst before a drain
    _ring: deque[Entry] = field(default_factory=lambda: deque(maxlen=RING))
    _credit: float = 0.0  # decisions that may still be sampled
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def settled(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
                plan: Plan | None) -> None:
        """The request path's hook: O(1), and nothing at all while nobody watches."""
        if self.watching:
            ring = self._ring
            if len(ring) == RING:
                self.dropped += 1
            ring.append((ctx, out, args, plan))

    def drain(self, elapsed_s: float) -> int:
        """Fold what the ring holds into the sums and sample decisions from it, at most
        `sample_per_s` x `elapsed_s` (the time since the last drain). How many it took."""
        ring = self._ring
        n = len(ring)
        if not n:
            self._credit = min(self.sample_per_s, self._credit + self.sample_per_s * elapsed_s)
            return 0
        entries = [ring.popleft() for _ in range(n)]
        for ctx, out, args, _ in entries:
            self._sum(ctx, out, args)
        self._credit = min(self.sample_per_s, self._credit + self.sample_per_s * elapsed_s)
        take = min(n, int(self._credit))
        if take:
            self._credit -= take
            step = n / take  # evenly spread over what came in, not only the first
            for i in range(take):
                self.decisions.append(self.decision(*entries[int(i * step)]))
        return n

    def _sum(self, ctx: RequestContext, out: Outcome, args: SettleArgs) -> None:
        if out.deployment is not None:
            dep = self.deployments.get(out.deployment.id)
            if dep is None:
                dep = self.deployments[out.deployment.id] = Sums()
            dep.add(args)
        team = self.teams.get(args.team)
        if team is None:
            team = self.teams[args.team] = Sums()
        team.add(args)
        key = self.keys.get((args.team, args.key_id))
        if key is None:
            key = self.keys[args.team, args.key_id] = Sums()
        key.add(args)

    def decision(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
                 plan: Plan | None) -> dict[str, Any]:
        """One request as the Decisions stream shows it (never a key; content only for a
        team that opted in)."""
        event = orjson.loads(args.event)
        req = ctx.req
        record: dict[str, Any] = {
            "id": f"{self.proc}:{next(self._seq)}", "t": out.wall,
            "request_id": req.request_id, "team": args.team, "key": args.key_id,
            "model": req.model, "operation": req.operation, "stream": req.stream,
            "status": event.get("status"), "deployment": event.get("deployment"),
            "attempts": out.retries + 1, "cache": out.cache.decode() if out.cache else None,
            "prompt_tokens": args.prompt_tokens, "completion_tokens": args.completion_tokens,
            "cost_usd": event.get("cost_usd"), "latency_ms": event.get("latency_ms"),
            "ttft_ms": event.get("ttft_ms"), "estimated": args.estimated,
        }
        if plan is not None:
            slo = plan.policy == "slo-cost"
            record.update(
                policy=plan.policy, reason=plan.reason, meets_slo=plan.meets_slo,
                predicted_ttft_ms=None if plan.predicted_ttft_s is None
                else round(plan.predicted_ttft_s * 1000, 1),
                score_kind="predicted_ttft_ms" if slo else "score",
                candidates=[{"id": d.id, "score": _score(plan.scores.get(d.id), slo)}
                            for d in plan.candidates[:MAX_CANDIDATES]],
                more_candidates=max(0, len(plan.candidates) - MAX_CANDIDATES),
                failovers=plan.reason.count(" failed"), hedged="hedge" in plan.reason)
        if args.team in self.capture_teams:
            record["prompt"] = excerpt(req.body)
        return record


def _score(value: float | None, as_ms: bool) -> float | None:
    if value is None or value < 0:  # slo-cost's -1: no data yet
        return None
    return round(value * 1000, 1) if as_ms else round(value, 4)


def excerpt(body: dict[str, Any], limit: int = EXCERPT_CHARS) -> str:
    """The last user message's text (or a completion's prompt, an embedding's input),
    cut to `limit` characters."""
    text: Any = None
    for msg in reversed(body.get("messages") or ()):
        if isinstance(msg, dict) and msg.get("role") == "user":
            text = msg.get("content")
            break
    if text is None:
        text = body.get("prompt", body.get("input"))
    if isinstance(text, list):  # content parts, or a batch of prompts
        text = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in text)
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + "…"
