"""The kv-aware routing step on an index filled as the KV events would fill it, with the
simulator's tokenizer and vLLM's block keys (what a simulated pool uses)."""

from __future__ import annotations

from gateway.canonical import CanonicalRequest, Deployment, Target
from policies.kv_index import SPECULATIVE_TTL_S, KvIndex, KvView
from policies.routing import RouteHints, make_policy
from policies.routing.kv_aware import KvAware
from policies.scoreboard import Scoreboard
from selfhost.kv_keys import RequestKeys
from selfhost.sim_kv import SimTokenizer

BLOCK = 16
SYSTEM = " ".join(f"w{i}" for i in range(100))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reps(n: int = 3) -> list[Deployment]:
    return [Deployment(f"pool/r{i}", "m", "openai", Target("http://x/v1", "m"), pool="pool")
            for i in range(n)]


def chat(system: str = SYSTEM, user: str = "hi") -> CanonicalRequest:
    return CanonicalRequest("chat", "m", {"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]})


class Rig:
    def __init__(self, n: int = 3) -> None:
        self.clock = Clock()
        self.board = Scoreboard(clock=self.clock)
        self.index = KvIndex(clock=self.clock)
        self.keyer = RequestKeys(SimTokenizer())
        self.view = KvView(self.index, {"pool": self.keyer})
        self.deps = reps(n)
        for d in self.deps:
            self.index.set_known(d.id, True)
            self.index.stored(d.id, [], BLOCK)

    def holds(self, dep: Deployment, req: CanonicalRequest, blocks: int | None = None) -> None:
        keys = self.keyer.keys(req, dep, BLOCK)
        assert keys is not None
        self.index.stored(dep.id, keys[:blocks], BLOCK)

    def policy(self) -> KvAware:
        return KvAware(self.board, self.view)


def test_longest_cached_prefix_wins() -> None:
    rig = Rig()
    a, b, _ = rig.deps
    rig.holds(a, chat(), blocks=2)
    rig.holds(b, chat(user="an earlier question"))  # the whole system prompt and more
    plan = rig.policy().plan(chat(user="a new one"), rig.deps, RouteHints(prompt_tokens=110))
    assert plan.candidates[0] is b
    assert plan.reason == "kv prefix 96 tokens cached"  # 6 blocks of the system prompt


def test_a_busy_holder_is_passed_over() -> None:
    rig = Rig()
    a = rig.deps[0]
    rig.holds(a, chat())
    rig.board.by_id(a.id).in_flight = 20  # far over the pool's bounded load
    plan = rig.policy().plan(chat(user="next"), rig.deps, RouteHints(prompt_tokens=110))
    assert plan.candidates[0] is not a
    assert plan.reason.startswith("kv prefix holders busy")


def test_a_holder_predicted_to_miss_the_slo_is_passed_over() -> None:
    rig = Rig()
    a, b, _ = rig.deps
    rig.holds(a, chat())
    rig.holds(b, chat(), blocks=1)
    slow = {a.id: 2.0, b.id: 0.1}
    policy = KvAware(rig.board, rig.view, lambda d, tokens: slow.get(d.id))
    plan = policy.plan(chat(user="q"), rig.deps, RouteHints(slo_ttft_s=0.5, prompt_tokens=110))
    assert plan.candidates[0] is b


def test_a_burst_follows_the_first_request() -> None:
    rig = Rig()
    policy = rig.policy()
    first = policy.plan(chat(user="q0"), rig.deps, RouteHints(prompt_tokens=110)).candidates[0]
    assert policy.plan(chat(user="q1"), rig.deps, RouteHints(prompt_tokens=110)
                       ).candidates[0] is first
    # Without its events the speculation expires.
    rig.clock.now += SPECULATIVE_TTL_S + 0.1
    assert rig.index.matched(first.id, rig.keyer.keys(chat(), first, BLOCK) or []) == 0


def test_unknown_replicas_are_not_taken_for_empty_and_none_known_means_affinity() -> None:
    rig = Rig()
    a, b, _ = rig.deps
    rig.index.set_known(a.id, False)
    rig.holds(a, chat())
    rig.holds(b, chat(), blocks=1)
    assert rig.policy().plan(chat(user="q"), rig.deps, RouteHints()).candidates[0] is b
    for d in rig.deps:
        rig.index.set_known(d.id, False)
    plan = rig.policy().plan(chat(user="q"), rig.deps, RouteHints())
    assert plan.reason.startswith("no kv events: prefix")
    affinity = make_policy("prefix-affinity", rig.board).plan(chat(user="q"), rig.deps,
                                                             RouteHints())
    assert plan.candidates == affinity.candidates


def test_a_new_prefix_goes_to_its_affinity_home() -> None:
    rig = Rig()
    plan = rig.policy().plan(chat(system="brand new"), rig.deps, RouteHints())
    affinity = make_policy("prefix-affinity", rig.board).plan(chat(system="brand new"),
                                                             rig.deps, RouteHints())
    assert plan.candidates[0] is affinity.candidates[0]
    assert plan.reason.startswith("kv prefix none cached: prefix")


def test_as_a_named_policy() -> None:
    rig = Rig()
    rig.holds(rig.deps[2], chat())
    policy = make_policy("kv-aware", rig.board, kv=rig.view)
    assert policy.plan(chat(user="q"), rig.deps, RouteHints()).candidates[0] is rig.deps[2]


def test_inside_slo_cost() -> None:
    rig = Rig()
    holder = rig.deps[1]
    rig.holds(holder, chat())
    policy = make_policy("slo-cost", rig.board, "kv-aware", rig.view)
    plan = policy.plan(chat(user="q"), rig.deps, RouteHints(slo_ttft_s=0.5, prompt_tokens=110))
    assert plan.candidates[0] is holder
    assert plan.reason.endswith("; kv prefix 96 tokens cached")
    # A new prefix: its first request's blocks are speculated where it went, so the next
    # one of the burst follows.
    first = policy.plan(chat(system="fresh", user="a"), rig.deps, RouteHints()).candidates[0]
    again = policy.plan(chat(system="fresh", user="b"), rig.deps, RouteHints())
    assert again.candidates[0] is first


def test_slo_cost_predicts_a_holders_ttft_for_what_it_does_not_hold() -> None:
    rig = Rig(2)
    holder, _ = rig.deps
    system = " ".join(f"w{i}" for i in range(700))  # 704 tokens: 44 blocks of 16
    rig.holds(holder, chat(system=system))
    board = rig.board
    # Both served small prompts in 20 ms and 1,000-token ones in 900 ms, unqueued.
    for d in rig.deps:
        s = board.stats(d)
        for _ in range(6):
            board.first_token(s, 0.02, 100)
            board.first_token(s, 0.9, 1000)
    req = chat(system=system, user=" ".join(["more"] * 290))
    hints = RouteHints(slo_ttft_s=0.5, prompt_tokens=1000)
    plan = make_policy("slo-cost", board, "kv-aware", rig.view).plan(req, rig.deps, hints)
    # Only the holder is predicted to meet 500 ms: it prefills 296 tokens, not 1,000.
    assert plan.candidates[0] is holder and plan.meets_slo, plan
    assert plan.reason.endswith("; kv prefix 704 tokens cached"), plan.reason
    assert make_policy("slo-cost", board, "least-loaded").plan(req, rig.deps, hints
                                                               ).meets_slo is False
