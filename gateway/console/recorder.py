"""What the console costs the request path: one attribute test per settled request, and
while a console is open, a few additions.

`Telemetry.settled` hands every admitted request, exactly once, to `Recorder.settled`.
While nobody watches, it returns at once. While someone does (`watching`, switched by
`live.Publisher` from a flag in the store), it adds the request's numbers to running
sums per deployment (tokens, cost) and per team and key (requests, tokens, cost, cache
hits and savings, errors): what the live view and the spend page show. Nothing else of
the request is kept, except every `stride`-th one, whole, for the Decisions stream.

Keeping every request until the next drain would hold a quarter second of traffic's
objects (parsed bodies, answers, plans): enough to survive the garbage collector's young
generations, which then walks them again and again, and the request path pays for it
wherever it next allocates. The stride is set at each drain from the arrival rate, so
that about `sample_per_s` a second are kept; if traffic rises faster, every other kept
request is let go and the stride doubled, so that they stay few and evenly spread.

The publisher drains the recorder a few times a second, off the request path: from what
was kept it makes a sample of decisions (at most `sample_per_s` a second): the route, the
candidates and their scores, attempts, cache, tokens, cost. A prompt excerpt only for the
teams that opted in to content capture (`telemetry.tracing.capture_content`).
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

DECISIONS_KEPT = 50  # the most recent sampled decisions, published with each snapshot
# Requests kept whole between two drains at most: a drain never makes more than
# DECISIONS_KEPT decisions, and twice as many to choose from keeps them evenly spread.
PICKED = 2 * DECISIONS_KEPT
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
    stride: int = 1  # every stride-th settled request is kept for the sample
    _arrived: int = 0  # settled requests since the last drain
    _skip: int = 1  # settled requests until the next one kept (counting this one)
    _picked: list[Entry] = field(default_factory=list)  # kept since the last drain
    _credit: float = 0.0  # decisions that may still be sampled
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def settled(self, ctx: RequestContext, out: Outcome, args: SettleArgs,
                plan: Plan | None) -> None:
        """The request path's hook: nothing at all while nobody watches; while someone
        does, three sums added to and, every `stride`-th request, one append."""
        if not self.watching:
            return
        self._arrived += 1
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
        self._skip -= 1
        if not self._skip:
            self._skip = self.stride
            picked = self._picked
            if len(picked) == PICKED:  # more came than the stride was set for
                del picked[1::2]  # (PICKED is even: those left are 2 strides apart)
                self._skip = self.stride = 2 * self.stride
            picked.append((ctx, out, args, plan))

    def drain(self, elapsed_s: float) -> int:
        """Sample decisions from the requests kept since the last drain, at most
        `sample_per_s` x `elapsed_s` (the time since then), and set the stride for the
        next. How many requests settled since the last drain."""
        n, picked = self._arrived, self._picked
        self._arrived, self._picked = 0, []
        self._credit = min(self.sample_per_s, self._credit + self.sample_per_s * elapsed_s)
        take = min(len(picked), int(self._credit))
        if take:
            self._credit -= take
            step = len(picked) / take  # evenly spread over what was kept
            for i in range(take):
                self.decisions.append(self.decision(*picked[int(i * step)]))
        # About as many kept next time as may then be taken, if traffic stays as it was
        # (elapsed 0: nobody watches any more, and the next watch starts from every one).
        wanted = self.sample_per_s * elapsed_s
        self.stride = max(1, int(n / wanted)) if wanted > 0 else 1
        # None ever wanted (sample_per_s 0): a countdown already past 0 keeps none.
        self._skip = self.stride if self.sample_per_s else -1
        return n

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
