"""The end-to-end routing experiment's setup: the fleet (simulator processes with their
speed, capacity and price), the workload (seeded open-loop phases), the faults injected,
and the gateway config each policy runs under.

Everything here is data and pure functions, so a test can check a spec without starting
a process; `bench/routing_e2e.py` runs it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

MODEL = "chat"
TEAM = "bench"
POOL = "pool"


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One simulator process: a vLLM replica of the pool, or a priced cloud provider.
    Latency and capacity follow `selfhost/sim_state.py`'s `SimProfile` model."""

    name: str
    pool: bool  # a replica of the self-hosted pool; else a provider of its own
    max_num_seqs: int
    base_ttft_ms: float
    prefill_ms_per_token: float
    itl_ms: float
    jitter: float = 0.1
    price_input: float = 0.0  # USD per 1M tokens; providers only (the pool has one price)
    price_output: float = 0.0

    def sim_args(self, port: int, seed: int) -> list[str]:
        """`turnout sim` arguments for it (the profile's every field overridden)."""
        return ["sim", "--profile", "fast-gpu", "--port", str(port), "--model", MODEL,
                "--seed", str(seed), "--max-num-seqs", str(self.max_num_seqs),
                "--base-ttft-ms", str(self.base_ttft_ms),
                "--prefill-ms-per-token", str(self.prefill_ms_per_token),
                "--itl-ms", str(self.itl_ms), "--jitter", str(self.jitter)]


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    rps: float  # Poisson arrivals at this rate


FaultKind = Literal["stop", "slow", "kill", "storm429"]


@dataclass(frozen=True, slots=True)
class Fault:
    """`stop`: SIGSTOP at `start`, SIGCONT at `end`. `slow`: every TTFT `extra_ttft_ms`
    longer in between. `kill`: SIGKILL, restarted on its port at `end`. `storm429`: every
    request answered 429 (Retry-After 1 s) in between."""

    kind: FaultKind
    target: str
    start: float
    end: float
    extra_ttft_ms: float = 800.0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.target} {self.start:g}-{self.end:g}s"


# Fast and 2x slower replicas (cheap: the pool's internal price) and a cloud provider at
# ten times the price, always able to meet the SLO.
FAST = UpstreamSpec("fast", True, max_num_seqs=16, base_ttft_ms=40.0,
                    prefill_ms_per_token=0.1, itl_ms=15.0)
SLOW = UpstreamSpec("slow", True, max_num_seqs=16, base_ttft_ms=80.0,
                    prefill_ms_per_token=0.2, itl_ms=30.0)
CLOUD = UpstreamSpec("cloud", False, max_num_seqs=1000, base_ttft_ms=250.0,
                     prefill_ms_per_token=0.02, itl_ms=15.0, jitter=0.2,
                     price_input=0.5, price_output=1.0)

POLICIES = ("slo-cost", "latency", "least-loaded", "round-robin")


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    phases: tuple[Phase, ...]
    faults: tuple[Fault, ...]
    upstreams: tuple[UpstreamSpec, ...] = (FAST, SLOW, CLOUD)
    pool_price: tuple[float, float] = (0.05, 0.10)  # input, output USD per 1M tokens
    # The pool's `max_num_seqs` in the gateway's config, as an operator would declare it
    # (None: left for routing to learn).
    pool_max_num_seqs: int | None = 16
    slo_ttft_ms: float = 500.0
    # Prompt and output lengths (tokens; a prompt word is one token to the simulator and,
    # at 4 characters, to the gateway's estimate): log-normal, capped.
    prompt_median: float = 700.0
    prompt_sigma: float = 0.6
    prompt_max: int = 4000
    output_median: float = 60.0
    output_sigma: float = 0.5
    output_max: int = 300
    first_token_s: float = 5.0  # the gateway's timeouts.first_token_s
    policies: tuple[str, ...] = POLICIES
    bin_s: float = 2.0  # width of a timeline bin
    extra_config: dict[str, Any] = field(default_factory=dict)  # merged into the config

    @property
    def duration_s(self) -> float:
        return sum(p.seconds for p in self.phases)

    def phase_spans(self) -> list[tuple[str, float, float]]:
        spans, t = [], 0.0
        for p in self.phases:
            spans.append((p.name, t, t + p.seconds))
            t += p.seconds
        return spans

    def upstream(self, name: str) -> UpstreamSpec:
        return next(u for u in self.upstreams if u.name == name)


FULL = Experiment(
    "full",
    phases=(Phase("calm", 70.0, 12.0), Phase("burst", 35.0, 30.0), Phase("medium", 95.0, 16.0)),
    faults=(Fault("stop", "fast", 20.0, 40.0), Fault("storm429", "cloud", 85.0, 92.0),
            Fault("slow", "fast", 115.0, 145.0), Fault("kill", "fast", 165.0, 175.0)))

# About a minute for two policies: what the test command runs.
SHORT = Experiment(
    "short",
    phases=(Phase("calm", 16.0, 10.0), Phase("burst", 6.0, 26.0), Phase("medium", 8.0, 12.0)),
    faults=(Fault("stop", "fast", 4.0, 9.0),),
    policies=("slo-cost", "round-robin"), bin_s=1.0)

EXPERIMENTS = {e.name: e for e in (FULL, SHORT)}


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    t: float  # intended send time, seconds from the start
    prompt_tokens: int
    output_tokens: int

    @property
    def request_id(self) -> str:
        return f"e2e-{self.index}"


def _lognormal(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def workload(exp: Experiment, seed: int) -> list[Request]:
    """Poisson arrivals, phase by phase, with log-normal prompt and output lengths: the
    same list for the same seed, whatever the policy."""
    rng = random.Random(seed)
    out: list[Request] = []
    start = 0.0
    for phase in exp.phases:
        t = start + rng.expovariate(phase.rps)
        while t < start + phase.seconds:
            out.append(Request(len(out), round(t, 4),
                               _lognormal(rng, exp.prompt_median, exp.prompt_sigma,
                                          exp.prompt_max),
                               _lognormal(rng, exp.output_median, exp.output_sigma,
                                          exp.output_max)))
            t += rng.expovariate(phase.rps)
        start += phase.seconds
    return out


_WORDS = ("the", "fox", "ran", "far", "and", "sat", "big", "red", "sky", "low", "map", "owl")


def prompt_text(req: Request, seed: int) -> str:
    """`prompt_tokens` words of 3 letters and a space: the simulator counts words, the
    gateway estimates characters / 4, so both see about the same size. The request's id
    opens it, so no two prompts share a prefix (no prefix-cache hits)."""
    rng = random.Random(seed * 1_000_003 + req.index)
    words = rng.choices(_WORDS, k=max(0, req.prompt_tokens - 2))
    return f"{req.request_id} {seed} " + " ".join(words)


def gateway_config(exp: Experiment, urls: dict[str, str], policy: str, admin_key: str,
                   key: str) -> dict[str, Any]:
    """One model, `chat`: the pool's replicas and each provider; the policy under test."""
    providers = [u for u in exp.upstreams if not u.pool]
    price_in, price_out = exp.pool_price
    deployments: list[dict[str, Any]] = [
        {"target": POOL, "model": MODEL, "price": {"input": price_in, "output": price_out}}]
    deployments += [{"target": u.name, "model": MODEL,
                     "price": {"input": u.price_input, "output": u.price_output}}
                    for u in providers]
    cfg: dict[str, Any] = {
        "server": {"timeouts": {"first_token_s": exp.first_token_s, "total_s": 120}},
        "auth": {"admin_key": admin_key},
        "teams": [{"name": TEAM, "keys": [{"id": "k", "key": key}]}],
        "providers": [{"name": u.name, "base_url": urls[u.name] + "/v1"} for u in providers],
        "pools": [{"name": POOL, "endpoints": [urls[u.name] for u in exp.upstreams if u.pool],
                   "probe_interval_s": 1, "scrape_interval_s": 1}],
        "routing": {"policy": policy, "slo_ttft_ms": exp.slo_ttft_ms},
        "models": {MODEL: {"deployments": deployments}},
    }
    if exp.pool_max_num_seqs is not None:
        cfg["pools"][0]["max_num_seqs"] = exp.pool_max_num_seqs
    for section, values in exp.extra_config.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg
