"""Arrival traces for the routing simulation: the record, a seeded generator, JSONL I/O.

A trace is what `turnout replay` reads: one JSON object per line with `t` (seconds since
the start), `prompt_tokens`, `output_tokens`, `model`, `team` and optionally `prefix_id`
(requests with the same id share a system prompt, so a replica's prefix cache can serve
it) and `prefix_tokens` (how many of the prompt tokens that shared prefix covers).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceRecord:
    t: float  # seconds since the first arrival
    prompt_tokens: int
    output_tokens: int
    model: str = "chat"
    team: str = "default"
    prefix_id: str | None = None
    prefix_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """A seeded arrival process: Poisson arrivals whose rate ramps from `base_rps` up to
    `peak_rps`, holds, and comes back down (fractions of `duration_s` mark the phases)."""

    duration_s: float = 240.0
    base_rps: float = 12.0
    peak_rps: float = 55.0
    ramp_up: tuple[float, float] = (0.15, 0.40)  # rate climbs between these fractions
    ramp_down: tuple[float, float] = (0.65, 0.85)  # and falls back between these
    prompt_median: float = 800.0
    prompt_sigma: float = 0.6
    output_median: float = 150.0
    output_sigma: float = 0.6
    max_tokens: int = 4000
    prefixes: int = 0  # shared system prompts to draw from; 0: every prompt is unique
    prefix_tokens: int = 0
    teams: tuple[tuple[str, float], ...] = (("search", 0.5), ("support", 0.3), ("batch", 0.2))
    model: str = "chat"

    def rate(self, t: float) -> float:
        x = t / self.duration_s
        up = _ramp(x, *self.ramp_up)
        down = _ramp(x, *self.ramp_down)
        return self.base_rps + (self.peak_rps - self.base_rps) * (up - down)


def _ramp(x: float, start: float, end: float) -> float:
    """0 before `start`, 1 after `end`, linear in between."""
    return min(1.0, max(0.0, (x - start) / (end - start)))


def generate(w: Workload, seed: int) -> list[TraceRecord]:
    """Arrivals by thinning a Poisson process at the peak rate (Lewis and Shedler)."""
    rng = random.Random(seed)
    top = max(w.base_rps, w.peak_rps)
    names = [name for name, _ in w.teams]
    shares = [share for _, share in w.teams]
    out: list[TraceRecord] = []
    t = rng.expovariate(top)
    while t < w.duration_s:
        if rng.random() * top < w.rate(t):
            out.append(_record(w, rng, t, rng.choices(names, shares)[0]))
        t += rng.expovariate(top)
    return _from_zero(out)


def _from_zero(rows: Sequence[TraceRecord]) -> list[TraceRecord]:
    """The first arrival at t=0, as `read_jsonl` puts it, so a written trace replays the
    very run it came from."""
    t0 = rows[0].t if rows else 0.0
    return [replace(r, t=round(r.t - t0, 4)) for r in rows]


def _record(w: Workload, rng: random.Random, t: float, team: str) -> TraceRecord:
    prefix_id: str | None = None
    prefix = 0
    if w.prefixes:
        prefix_id = f"sys-{rng.randrange(w.prefixes)}"
        prefix = w.prefix_tokens
    prompt = prefix + _lognormal(rng, w.prompt_median, w.prompt_sigma, w.max_tokens)
    return TraceRecord(round(t, 4), prompt, _lognormal(rng, w.output_median, w.output_sigma,
                                                       w.max_tokens),
                       w.model, team, prefix_id, prefix if prefix_id else None)


def _lognormal(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def write_jsonl(records: Iterable[TraceRecord], path: Path) -> None:
    with path.open("w") as f:
        for r in records:
            row = {k: v for k, v in asdict(r).items() if v is not None}
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


class TraceError(ValueError):
    pass


def read_jsonl(path: Path) -> list[TraceRecord]:
    """Records sorted by arrival, the first at t=0; `prefix_tokens` missing for a `prefix_id`
    defaults to the shortest prompt seen with that id (the shared part is no longer)."""
    rows: list[TraceRecord] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            rows.append(TraceRecord(
                t=float(data["t"]), prompt_tokens=int(data["prompt_tokens"]),
                output_tokens=max(1, int(data["output_tokens"])),
                model=str(data.get("model", "chat")), team=str(data.get("team", "default")),
                prefix_id=None if data.get("prefix_id") is None else str(data["prefix_id"]),
                prefix_tokens=None if data.get("prefix_tokens") is None
                else int(data["prefix_tokens"])))
        except (ValueError, KeyError, TypeError) as err:
            raise TraceError(f"{path}:{n}: {type(err).__name__}: {err}") from None
    rows.sort(key=lambda r: r.t)
    return _fill_prefix_tokens(_from_zero(rows))  # recorded traces may carry wall-clock times


def _fill_prefix_tokens(rows: Sequence[TraceRecord]) -> list[TraceRecord]:
    shortest: dict[str, int] = {}
    for r in rows:
        if r.prefix_id is not None:
            shortest[r.prefix_id] = min(shortest.get(r.prefix_id, r.prompt_tokens),
                                        r.prompt_tokens)
    return [r if r.prefix_id is None or r.prefix_tokens is not None
            else replace(r, prefix_tokens=shortest[r.prefix_id])
            for r in rows]
