"""Each routing policy on constructed scoreboards, with a driven clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.canonical import CanonicalRequest, Deployment, Target
from gateway.config import parse_config
from gateway.planner import Planner
from policies.estimators import WindowedQuantiles
from policies.routing import RouteHints, make_policy
from policies.routing.latency import Latency
from policies.routing.prefix_affinity import PrefixAffinity
from policies.routing.slo_cost import SloCost, erlang_quantile
from policies.scoreboard import Scoreboard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dep(id: str, price_in: float = 0.0, price_out: float = 0.0, pool: str | None = None,
        weight: float = 1.0) -> Deployment:
    return Deployment(id, "m", "openai", Target("http://x/v1", "m"), price_in, price_out,
                      pool=pool, weight=weight)


def chat(system: str = "sys", user: str = "hi", *later: str) -> CanonicalRequest:
    turns = [{"role": "assistant" if i % 2 == 0 else "user", "content": t}
             for i, t in enumerate(later)]
    return CanonicalRequest("chat", "m", {"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}, *turns]})


def ttft_samples(board: Scoreboard, d: Deployment, seconds: float, n: int = 10) -> None:
    for _ in range(n):
        s = board.started(d)
        board.first_token(s, seconds)
        board.succeeded(s, e2e_s=seconds * 2, streamed=True)


POOL = [dep("gpu/a", 0.05, 0.1, pool="gpu"), dep("gpu/b", 0.05, 0.1, pool="gpu")]
PAID = dep("openai/gpt", 0.15, 0.6)
CHEAP_PAID = dep("other/llm", 0.10, 0.3)


def test_slo_cost_cold_start_prefers_cheapest() -> None:
    board = Scoreboard(Clock())
    plan = SloCost(board).plan(chat(), [PAID, *POOL], RouteHints(slo_ttft_s=0.5))
    assert plan.candidates[0].pool == "gpu" and plan.candidates[-1] is PAID
    assert plan.meets_slo and "no data yet" in plan.reason


def scrape(board: Scoreboard, d: Deployment, now: float, *, waiting: float = 0,
           running: float = 0) -> None:
    board.stats(d).record_scrape(waiting=waiting, running=running, kv_usage=0.0,
                                 prefix_hit_rate=None, now=now)


def test_slo_cost_fills_the_pool_up_to_what_meets_the_slo() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    policy = SloCost(board)
    for d in POOL:  # TTFT 0.1 s, requests take 0.2 s; 4 slots, learned while 1 waited
        ttft_samples(board, d, 0.1)
        scrape(board, d, clock.now, waiting=1, running=4)
        assert board.stats(d).pool.capacity == 4
        scrape(board, d, clock.now, running=2)  # 2 slots free
    ttft_samples(board, PAID, 0.3)
    hints = RouteHints(slo_ttft_s=0.5, prompt_tokens=100, max_tokens=100)
    plan = policy.plan(chat(), [*POOL, PAID], hints)
    assert plan.candidates[0].pool == "gpu" and plan.predicted_ttft_s == 0.1  # no wait
    for d in POOL:  # we sent 2 more since the scrape: every slot busy
        board.started(d)
        board.started(d)
    # The next slot of 4 frees within P99 4.6 x 0.2 s / 4 = 0.23 s: 0.33 s, still meets.
    plan = policy.plan(chat(), [*POOL, PAID], hints)
    assert plan.candidates[0].pool == "gpu"
    assert plan.predicted_ttft_s is not None and abs(plan.predicted_ttft_s - 0.33) < 0.01
    for d in POOL:  # two more queued ahead: the third slot to free, P99 8.4 x 0.05 s
        board.started(d)
        board.started(d)
    plan = policy.plan(chat(), [*POOL, PAID], hints)
    assert plan.candidates[0] is PAID and plan.meets_slo
    assert "cheapest meeting ttft<=500ms" in plan.reason
    assert plan.scores[POOL[0].id] > 0.5


def test_slo_cost_spills_when_an_unknown_capacity_pool_queues() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    policy = SloCost(board)
    for d in POOL:
        ttft_samples(board, d, 0.1)
        board.stats(d).pool.__init__(waiting=8, running=4, scraped_at=clock.now, stale=False)
    ttft_samples(board, PAID, 0.3)
    hints = RouteHints(slo_ttft_s=0.5, prompt_tokens=100, max_tokens=100)
    # 8 waiting on 4 running 0.2 s requests: the 9th slot to free, P99 17.4 x 0.05 s.
    assert policy.queue_wait(board.stats(POOL[0]), clock.now) > 0.8
    assert policy.plan(chat(), [*POOL, PAID], hints).candidates[0] is PAID
    for d in POOL:
        board.stats(d).pool.waiting = 0  # the queue is gone (capacity still unknown)
    assert policy.plan(chat(), [*POOL, PAID], hints).candidates[0].pool == "gpu"


def test_queued_attempts_are_not_service_time() -> None:
    """A burst's TTFTs include queue wait; the queue's depth predicts that wait, so they
    stay out of the service quantile and don't shut the replica out once it has drained."""
    clock = Clock()
    board = Scoreboard(clock)
    policy = SloCost(board)
    gpu = POOL[0]
    ttft_samples(board, gpu, 0.1)
    scrape(board, gpu, clock.now, waiting=5, running=4)
    clock.now += 1
    ttft_samples(board, gpu, 3.0)  # queued: started while the scrape showed a queue
    s = board.stats(gpu)
    assert s.ttft.quantile(0.99, clock.now) == 3.0  # still seen (hedging, dashboards)
    assert policy.service_ttft(s, clock.now, 0) == 0.1
    clock.now += 1
    scrape(board, gpu, clock.now, running=3)  # calm again, a slot free
    calm = clock.now
    assert s.pool.calm_since == calm and policy.predicted_ttft(gpu, clock.now) == 0.1
    clock.now += 1
    # Started before the calm scrape (3 s ago): may have queued, left out.
    ttft_samples(board, gpu, 3.0)
    assert policy.service_ttft(s, clock.now, 0) == 0.1
    ttft_samples(board, gpu, 0.4)  # started after it: counts
    assert policy.service_ttft(s, clock.now, 0) == 0.4
    plan = policy.plan(chat(), [gpu, PAID], RouteHints(slo_ttft_s=0.5))
    assert plan.candidates[0] is gpu


def test_a_queue_found_by_a_scrape_voids_the_ttfts_since_the_one_before() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    gpu = POOL[0]
    ttft_samples(board, gpu, 0.1)
    scrape(board, gpu, clock.now, running=2)
    clock.now += 0.5
    ttft_samples(board, gpu, 2.0)  # a queue formed between two scrapes: it held these
    s = board.stats(gpu)
    assert SloCost.service_ttft(s, clock.now, 0) == 2.0
    clock.now += 0.5
    scrape(board, gpu, clock.now, waiting=3, running=4)
    assert SloCost.service_ttft(s, clock.now, 0) == 0.1
    assert s.ttft.count(clock.now) == 20  # the all-sizes window keeps them all


def test_windowed_quantiles_drop_after() -> None:
    w = WindowedQuantiles()
    for t in range(10):
        w.add(float(t), float(t))
    assert w.quantile(0.99, 9.0) == 9.0
    w.drop_after(4.5)
    assert w.count(9.0) == 5 and w.quantile(0.99, 9.0) == 4.0
    w.drop_after(100.0)
    assert w.count(9.0) == 5


@pytest.mark.parametrize("read_every", [1, 97, 131])  # 131: more than `cap` adds unread
def test_windowed_quantiles_match_a_sort_of_the_window(read_every: int) -> None:
    rng = random.Random(7)
    w = WindowedQuantiles(window_s=10.0, cap=50)
    kept: list[tuple[float, float]] = []
    for i in range(2000):
        now = i * 0.05
        value = rng.choice([rng.random(), 0.5, 0.25])  # ties on purpose
        w.add(value, now)
        kept = [(t, v) for t, v in [*kept, (now, value)] if t >= now - 10.0][-50:]
        if i % 97 == 0:
            w.drop_after(now - 0.2)
            kept = [(t, v) for t, v in kept if t <= now - 0.2]
        if i % read_every:
            continue
        values = sorted(v for _, v in kept)
        for q in (0.0, 0.5, 0.99):
            expected = values[min(len(values) - 1, int(q * len(values)))] if values else None
            assert w.quantile(q, now) == expected


def test_service_ttft_by_prompt_size() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    policy = SloCost(board)
    slow = POOL[0]

    def samples(prompt_tokens: int, ttft: float) -> None:
        for _ in range(5):
            s = board.started(slow)
            board.first_token(s, ttft, prompt_tokens)
            board.succeeded(s, e2e_s=1.0, streamed=True)

    samples(700, 0.3)
    samples(1500, 0.6)
    s = board.stats(slow)
    assert policy.service_ttft(s, clock.now, 900) == 0.3
    assert policy.service_ttft(s, clock.now, 1200) == 0.6
    assert policy.service_ttft(s, clock.now, 100) == 0.3  # none this short: the next size up
    # None this long: the next size down, plus its prefill time per token (0.3 s more per
    # 800 tokens here) for the tokens beyond that size's mean.
    predicted = policy.service_ttft(s, clock.now, 3000)
    assert predicted is not None and abs(predicted - (0.6 + 0.3 / 800 * 1500)) < 1e-9
    hints = RouteHints(slo_ttft_s=0.5)
    for tokens, first in ((900, slow), (1200, PAID)):
        hints.prompt_tokens = tokens
        assert policy.plan(chat(), [slow, PAID], hints).candidates[0] is first


def test_erlang_quantile_is_the_p99_wait_for_the_kth_slot() -> None:
    exact = {1: 4.605, 2: 6.638, 3: 8.406, 5: 11.605, 10: 18.783, 30: 44.19}
    for k, q in exact.items():
        assert abs(erlang_quantile(k) / q - 1) < 0.01


def test_slo_cost_without_any_meeting_picks_best_predicted() -> None:
    board = Scoreboard(Clock())
    ttft_samples(board, PAID, 0.9)
    ttft_samples(board, CHEAP_PAID, 0.7)
    plan = SloCost(board).plan(chat(), [PAID, CHEAP_PAID], RouteHints(slo_ttft_s=0.5))
    assert plan.candidates == [CHEAP_PAID, PAID] and not plan.meets_slo
    assert plan.predicted_ttft_s == 0.7


def test_slo_cost_without_slo_is_cheapest_and_avoids_failing() -> None:
    board = Scoreboard(Clock())
    plan = SloCost(board).plan(chat(), [PAID, CHEAP_PAID], RouteHints())
    assert plan.candidates[0] is CHEAP_PAID
    for _ in range(10):
        board.failed(board.started(CHEAP_PAID), "503")
    plan = SloCost(board).plan(chat(), [PAID, CHEAP_PAID], RouteHints(slo_ttft_s=1.0))
    assert plan.candidates[0] is PAID


def test_old_data_decays_out_of_the_window() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    ttft_samples(board, CHEAP_PAID, 2.0)
    policy = SloCost(board)
    assert policy.predicted_ttft(CHEAP_PAID, clock.now) == 2.0
    clock.now += 61  # past the 60 s window: nothing to go on, optimistic again
    assert policy.predicted_ttft(CHEAP_PAID, clock.now) is None


def test_least_loaded_counts_queue_and_rotates_ties() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    policy = make_policy("least-loaded", board)
    firsts = Counter(policy.plan(chat(), POOL, RouteHints()).candidates[0].id for _ in range(10))
    assert firsts == {"gpu/a": 5, "gpu/b": 5}
    board.stats(POOL[0]).pool.__init__(waiting=3, scraped_at=clock.now, stale=False)
    assert policy.plan(chat(), POOL, RouteHints()).candidates[0].id == "gpu/b"
    board.started(POOL[1])
    board.started(POOL[1])  # 2 in flight at b vs 3 queued at a
    assert policy.plan(chat(), POOL, RouteHints()).candidates[0].id == "gpu/b"


def test_stale_scrape_is_ignored() -> None:
    board = Scoreboard(Clock())
    board.stats(POOL[0]).pool.__init__(waiting=50, scraped_at=1.0, stale=True)
    assert board.stats(POOL[0]).queue_estimate() == 0


def test_latency_p2c_prefers_lower_cost() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    fast, slow, mid = dep("fast"), dep("slow"), dep("mid")
    ttft_samples(board, fast, 0.05)
    ttft_samples(board, slow, 1.0)
    ttft_samples(board, mid, 0.3)
    policy = Latency(board, random.Random(7))
    firsts = Counter(policy.plan(chat(), [fast, slow, mid], RouteHints()).candidates[0].id
                     for _ in range(300))
    assert firsts["slow"] == 0  # never the better of any pair
    assert firsts["fast"] > firsts["mid"] > 0


def test_latency_ewma_decays_when_idle() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    ttft_samples(board, PAID, 1.0)
    early = board.stats(PAID).latency.get(clock.now)
    clock.now += 120
    late = board.stats(PAID).latency.get(clock.now)
    assert early == 1.0 and late is not None and late < 0.2


def test_prefix_affinity_is_sticky_and_bounded() -> None:
    board = Scoreboard(Clock())
    replicas = [dep(f"gpu/{i}", pool="gpu") for i in range(4)]
    policy = PrefixAffinity(board)
    homes = {s: policy.plan(chat(system=s), replicas, RouteHints()).candidates[0].id
             for s in ("a", "b", "c", "d", "e", "f")}
    for s, home in homes.items():  # a conversation that grows stays with its replica
        assert policy.plan(chat(s, "hi", "answer", "next question"), replicas,
                           RouteHints()).candidates[0].id == home
    assert len(set(homes.values())) > 1  # different prefixes spread
    # Overload the home replica of "a": its requests spill to another replica.
    home = next(r for r in replicas if r.id == homes["a"])
    for _ in range(10):
        board.started(home)
    plan = policy.plan(chat(system="a"), replicas, RouteHints())
    assert plan.candidates[0] is not home and "spilled" in plan.reason


def test_weighted_split_is_smooth() -> None:
    board = Scoreboard(Clock())
    a, b = dep("a", weight=3), dep("b", weight=1)
    policy = make_policy("weighted", board)
    seq = [policy.plan(chat(), [a, b], RouteHints()).candidates[0].id for _ in range(8)]
    assert seq == ["a", "a", "b", "a", "a", "a", "b", "a"]


def test_round_robin_cycles() -> None:
    policy = make_policy("round-robin", Scoreboard(Clock()))
    a, b, c = dep("a"), dep("b"), dep("c")
    seq = [policy.plan(chat(), [a, b, c], RouteHints()).candidates[0].id for _ in range(6)]
    assert seq == ["b", "c", "a", "b", "c", "a"]


def test_every_policy_handles_one_and_many_candidates() -> None:
    board = Scoreboard(Clock())
    for name in ("slo-cost", "latency", "least-loaded", "prefix-affinity", "weighted",
                 "round-robin"):
        for within in ("least-loaded", "prefix-affinity"):
            policy = make_policy(name, board, within)
            assert policy.plan(chat(), [PAID], RouteHints()).candidates == [PAID]
            plan = policy.plan(chat(), [*POOL, PAID], RouteHints(slo_ttft_s=0.2))
            assert sorted(d.id for d in plan.candidates) == sorted(d.id for d in [*POOL, PAID])


def test_a_stalled_deployment_goes_last_until_its_attempt_is_answered() -> None:
    """Latency outliers: the planner moves a deployment whose oldest attempt has waited
    for its first byte far past its own recent P99 (4x, at least 1 s) to the end."""
    clock = Clock()
    board = Scoreboard(clock)
    cfg = parse_config({"providers": [{"name": p, "base_url": f"http://{p}.test/v1"}
                                      for p in ("a", "b")],
                        "models": {"m": {"deployments": [
                            {"target": "a", "model": "m", "price": {"input": 0.1}},
                            {"target": "b", "model": "m", "price": {"input": 1.0}}]}},
                        "routing": {"policy": "slo-cost"}})
    a, b = dep("a/m", 0.1), dep("b/m", 1.0)
    for _ in range(10):  # a answers its whole requests in 50 ms
        s = board.started(a, attempt := object())
        board.succeeded(s, e2e_s=0.05, streamed=False, attempt=attempt)
    planner = Planner(cfg, board)

    def first() -> str:
        return planner.plan(chat(), [a, b], RouteHints()).candidates[0].id

    assert first() == "a/m"  # the cheaper one
    hung = object()
    board.started(a, hung)
    clock.now += 0.9  # waiting, but under 1 s: not judged yet
    assert first() == "a/m"
    board.started(a, newer := object())  # a later attempt: the oldest is the one judged
    clock.now += 0.2  # 1.1 s > max(1 s, 4 x 50 ms): stalled
    plan = planner.plan(chat(), [a, b], RouteHints())
    assert [d.id for d in plan.candidates] == ["b/m", "a/m"]
    assert "stalled skipped" in plan.reason
    board.failed(board.stats(a), "timeout", timeout=True, attempt=hung)
    assert first() == "a/m"  # the hung attempt is over: judged as before (newer: 0.2 s)
    board.succeeded(board.stats(a), e2e_s=0.2, streamed=False, attempt=newer)
    assert not board.stats(b).stalled(clock.now)
