"""`python -m bench.kv_sim`: KV-aware routing against prefix affinity, least-loaded and
round-robin on a shared-prefix workload under cache pressure, in the routing simulation
(`bench/routing_sim_model.py`: simulated time, the real policies and scoreboard).

The pool: `replicas` simulated vLLM replicas, each with a KV cache of `kv_blocks` blocks
of `block_size` tokens (`selfhost/sim_kv.py`'s `BlockCache`: vLLM's block keys, LRU
eviction, tails first), publishing their KV events in vLLM's wire format into the index
the kv-aware step reads (after `event_delay_s`, as a subscriber would receive them). The
workload: `prefixes` system prompts of `prefix_tokens` tokens each, drawn with Zipf
popularity (`zipf`), together several times one replica's cache, each followed by a
question of its own; Poisson arrivals at `rps`. A request's TTFT is its queue wait plus
the prefill of the tokens its replica did not hold.

Per policy and seed: prefix hit rate (cached prompt tokens over prompt tokens), P50/P99
TTFT, SLO attainment (TTFT and end-to-end) and goodput (requests meeting both per second).
`--seeds 1-5` runs each seed; a table per seed, then the mean over seeds; the JSON goes to
`bench/results/kv-sim-<time>.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from bench.routing_sim_model import (
    BOARD_CLOCK_ORIGIN,
    Attempt,
    DispatchRules,
    EventLoop,
    Fleet,
    Outcome,
    Replica,
    ReplicaSpec,
    RunOutput,
    SimDispatch,
    Sink,
    Slo,
    _scrape,
)
from bench.routing_sim_report import Summary, summarize
from bench.routing_sim_trace import TraceRecord
from gateway.canonical import CanonicalRequest, Deployment
from policies.kv_index import Key, KvIndex, KvView
from policies.routing import make_policy
from policies.scoreboard import Scoreboard
from selfhost.kv_blocks import BlockHasher
from selfhost.kv_events import apply, decode_batch
from selfhost.sim_kv import BlockCache, encode_batch
from selfhost.sim_state import PrefixCache, SimProfile

RESULTS = Path(__file__).resolve().parent / "results"
POOL = "local-gpu"
PROFILE = SimProfile("sim-gpu", max_num_seqs=32, base_ttft_ms=30.0,
                     prefill_ms_per_token=0.1, itl_ms=12.0, jitter=0.1)
# "slo-cost/kv-aware": slo-cost with kv-aware as its within-pool step.
POLICIES = ("kv-aware", "slo-cost/kv-aware", "prefix-affinity", "least-loaded", "round-robin")


@dataclass(frozen=True)
class Scenario:
    replicas: int = 4
    kv_blocks: int = 1024  # per replica: 16,384 tokens
    block_size: int = 16
    prefixes: int = 12
    prefix_tokens: int = 3008  # 188 blocks; the 12 together: 2.2x one replica's cache
    zipf: float = 1.0
    rps: float = 70.0  # about 70% of the pool's slots, busy enough to queue now and then
    duration_s: float = 90.0
    question_median: float = 200.0
    output_median: float = 100.0
    slo_ttft_s: float = 0.5
    slo_tpot_s: float = 0.05
    event_delay_s: float = 0.005


def trace(scn: Scenario, seed: int) -> list[TraceRecord]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** scn.zipf for k in range(scn.prefixes)]
    out: list[TraceRecord] = []
    t = 0.0
    while True:
        t += rng.expovariate(scn.rps)
        if t >= scn.duration_s:
            return out
        k = rng.choices(range(scn.prefixes), weights)[0]
        question = max(1, round(rng.lognormvariate(math.log(scn.question_median), 0.5)))
        output = max(2, round(rng.lognormvariate(math.log(scn.output_median), 0.5)))
        out.append(TraceRecord(round(t, 4), scn.prefix_tokens + question, output,
                               prefix_id=f"sys-{k}", prefix_tokens=scn.prefix_tokens))


class TraceTokens:
    """Token ids and block keys of the trace's requests (vLLM's keys: `BlockHasher`): a
    system prompt's tokens are the same wherever it appears, a question's its own. The
    `BlockKeyer` the kv-aware step asks, and what the replicas cache."""

    def __init__(self, records: Sequence[TraceRecord], hasher: BlockHasher) -> None:
        self.hasher = hasher
        self._index = {id(r): i for i, r in enumerate(records)}
        self._records = records
        self._prefix: dict[str, tuple[list[int], list[bytes]]] = {}

    def _system(self, prefix_id: str, length: int) -> tuple[list[int], list[bytes]]:
        got = self._prefix.get(prefix_id)
        if got is None:
            seed = int(prefix_id.rsplit("-", 1)[1])
            tokens = [100 + (seed * 7919 + j * 104729) % 50_000 for j in range(length)]
            got = self._prefix[prefix_id] = (tokens, self.hasher.digests(tokens))
        return got

    def of(self, rec: TraceRecord) -> tuple[list[int], list[Key]]:
        i = self._index[id(rec)]
        shared = rec.prefix_tokens or 0
        system, digests = self._system(rec.prefix_id or f"none-{i}", shared)
        own = [100 + (i * 15485863 + j * 32452843) % 50_000
               for j in range(rec.prompt_tokens - shared)]
        parent = digests[-1] if digests else None
        more = self.hasher.digests(own, parent=parent)  # shared is whole blocks
        return system + own, self.hasher.as_keys([*digests, *more])

    def keys(self, req: CanonicalRequest, dep: Deployment, block_size: int
             ) -> Sequence[Key] | None:
        return self.of(self._records[int(req.request_id)])[1]


class _Known(PrefixCache):
    """Hands `Replica` the cached tokens its block cache found."""

    value = 0

    def lookup_insert(self, prompts: list[list[tuple[bytes, int]]]) -> int:
        return self.value


class KvReplica(Replica):
    """A replica whose prefix cache is a block cache that publishes its KV events."""

    def __init__(self, spec: ReplicaSpec, loop: EventLoop, sink: Sink, seed: int, *,
                 dep_id: str, blocks: BlockCache, tokens: TraceTokens, index: KvIndex,
                 event_delay_s: float) -> None:
        super().__init__(spec, loop, sink, seed)
        self.cache = self._known = _Known()
        self._id, self._blocks, self._tokens = dep_id, blocks, tokens
        self._index, self._delay = index, event_delay_s
        index.set_known(dep_id, True)

    def _start(self, att: Attempt) -> None:
        tokens, keys = self._tokens.of(att.outcome.rec)
        self._known.value = min(self._blocks.insert_keys(keys, tokens), len(tokens))
        events = self._blocks.drain()
        if events:  # through the wire format, as a subscriber receives them
            payload = encode_batch(events, self._loop.now)
            self._loop.after(self._delay, lambda: apply(self._index, self._id,
                                                        decode_batch(payload)[1]))
        super()._start(att)


def simulate(scn: Scenario, records: Sequence[TraceRecord], policy: str, seed: int
             ) -> RunOutput:
    loop = EventLoop()
    board = Scoreboard(clock=lambda: loop.now + BOARD_CLOCK_ORIGIN)
    index = KvIndex(clock=board.clock)
    hasher = BlockHasher(scn.block_size)
    tokens = TraceTokens(records, hasher)
    fleet = Fleet(POOL, 0.05, 0.10, tuple(ReplicaSpec(f"r{k}", PROFILE)
                                          for k in range(scn.replicas)), ())
    deps = fleet.deployments(records[0].model if records else "chat")
    kv = KvView(index, {POOL: tokens})
    rules = DispatchRules(slo=Slo(scn.slo_ttft_s, scn.slo_tpot_s))
    name, _, within = policy.partition("/")
    sim = SimDispatch(loop, board, make_policy(name, board, within or "least-loaded", kv), deps,
                      rules)
    replicas: dict[str, Replica] = {}
    for k, (dep, spec) in enumerate(zip(deps, fleet.replicas, strict=True)):
        replicas[dep.id] = KvReplica(spec, loop, sim, seed * 1000 + k, dep_id=dep.id,
                                     blocks=BlockCache(scn.kv_blocks, hasher), tokens=tokens,
                                     index=index, event_delay_s=scn.event_delay_s)
    sim.backends.update(replicas)
    outcomes = [Outcome(rec) for rec in records]
    for i, out in enumerate(outcomes):
        loop.at(out.rec.t, partial(sim.arrive, i, out))
    _scrape(loop, board, replicas, deps, sim, records[-1].t if records else 0.0, 1.0)
    loop.run()
    return RunOutput(outcomes, board, replicas)


def run(scn: Scenario, seed: int, policies: Sequence[str] = POLICIES) -> list[Summary]:
    records = trace(scn, seed)
    slo = Slo(scn.slo_ttft_s, scn.slo_tpot_s)
    return [summarize(p, simulate(scn, records, p, seed), slo, scn.duration_s, POOL)
            for p in policies]


def _row(policy: str, hit: float, p50: float, p99: float, att: float, e2e: float,
         good: float) -> str:
    return (f"{policy:18} {hit * 100:9.1f}% {p50:9.0f} {p99:9.0f} {att * 100:9.1f}%"
            f" {e2e * 100:9.1f}% {good:9.2f}")


HEAD = (f"{'policy':18} {'prefix hit':>10} {'P50 ms':>9} {'P99 ms':>9} {'TTFT SLO':>10}"
        f" {'E2E SLO':>10} {'goodput':>9}")


def table(rows: Sequence[Summary]) -> str:
    return "\n".join([HEAD, *(_row(s.policy, s.prefix_hit_rate or 0.0, s.ttft_p50_ms,
                                   s.ttft_p99_ms, s.ttft_attainment, s.e2e_attainment,
                                   s.goodput_rps) for s in rows)])


def mean_table(by_seed: dict[int, list[Summary]]) -> str:
    rows = []
    for i, policy in enumerate(by_seed[next(iter(by_seed))]):
        runs = [summaries[i] for summaries in by_seed.values()]

        def avg(f: Callable[[Summary], float], runs: list[Summary] = runs) -> float:
            return sum(f(s) for s in runs) / len(runs)

        rows.append(_row(policy.policy, avg(lambda s: s.prefix_hit_rate or 0.0),
                         avg(lambda s: s.ttft_p50_ms), avg(lambda s: s.ttft_p99_ms),
                         avg(lambda s: s.ttft_attainment), avg(lambda s: s.e2e_attainment),
                         avg(lambda s: s.goodput_rps)))
    return "\n".join([HEAD, *rows])


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1-5", help="1-5 or 1,3,7")
    parser.add_argument("--duration", type=float, default=Scenario.duration_s)
    parser.add_argument("--rps", type=float, default=Scenario.rps)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scn = Scenario(duration_s=args.duration, rps=args.rps)
    by_seed: dict[int, list[Summary]] = {}
    for seed in _seeds(args.seeds):
        by_seed[seed] = run(scn, seed)
        print(f"\nseed {seed}: {len(trace(scn, seed))} requests\n{table(by_seed[seed])}",
              flush=True)
    print(f"\nmean over seeds {args.seeds}\n{mean_table(by_seed)}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kv-sim-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"scenario": asdict(scn), "runs": {
        str(seed): [asdict(s) for s in rows] for seed, rows in by_seed.items()}}, indent=1))
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
