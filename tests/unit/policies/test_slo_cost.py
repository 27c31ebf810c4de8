"""slo-cost in the situations the end-to-end routing experiment found (issues #24, #25),
each built exactly on a constructed scoreboard with a driven clock: a full replica whose
slots free fast, a prompt longer than any a replica has served, a replica that was
stopped, slowed or throttled and is well again."""

from __future__ import annotations

import itertools
import math

from gateway.canonical import Deployment
from policies.estimators import SlotRate
from policies.routing import RouteHints
from policies.routing.slo_cost import PROBE_GAP_MAX_S, SloCost, erlang_quantile
from policies.scoreboard import DeploymentStats, Scoreboard
from tests.unit.policies.test_routing import PAID, Clock, chat, dep

FAST = dep("gpu/fast", 0.05, 0.1, pool="gpu")
SLOW = dep("gpu/slow", 0.05, 0.1, pool="gpu")
SLO = RouteHints(slo_ttft_s=0.5, prompt_tokens=100, max_tokens=100)


def first(policy: SloCost, deps: list[Deployment], hints: RouteHints = SLO) -> str:
    return policy.plan(chat(), deps, hints).candidates[0].id


def served(board: Scoreboard, d: Deployment, ttft: float, e2e: float, tokens: int = 100,
           n: int = 1) -> None:
    """`n` streamed attempts, each started, answered and finished now."""
    for _ in range(n):
        s = board.started(d, attempt := object())
        board.first_token(s, ttft, tokens, attempt)
        board.succeeded(s, e2e_s=e2e, streamed=True, attempt=attempt)


def scrape(s: DeploymentStats, now: float, running: float, waiting: float = 0.0,
           completed: float | None = None) -> None:
    s.record_scrape(waiting=waiting, running=running, kv_usage=0.5, prefix_hit_rate=None,
                    now=now, completed=completed)


# -- issue #25, defect 1: the wait for a slot follows the replica's completion rate --------


def full_replica(clock: Clock, board: Scoreboard) -> DeploymentStats:
    """16 slots (learned from a queue), unqueued TTFT 0.15 s, then a burst whose queued
    attempts took 3 s end to end; now every slot busy, nothing waiting, and the replica's
    counter says 16 requests finished in the last second."""
    s = board.stats(FAST)
    served(board, FAST, 0.15, 1.0, n=20)
    scrape(s, clock.now, running=16, waiting=4, completed=0)  # capacity learned: 16
    clock.now += 0.5
    served(board, FAST, 2.0, 3.0, n=10)  # queued: neither service nor hold time
    clock.now += 0.5
    for _ in range(16):
        board.started(FAST)  # ours, in flight
    scrape(s, clock.now, running=16, completed=16)
    return s


def test_a_full_replica_whose_slots_free_fast_keeps_the_request() -> None:
    """The calm-phase spill: every slot busy, but one frees every 1/16 s. The P99 wait for
    the next is 4.6/16 s, 0.29 s: with 0.15 s of service the request meets 500 ms there
    (the mean end-to-end time, queued attempts included, said 0.5 s and more)."""
    clock = Clock()
    board = Scoreboard(clock)
    s = full_replica(clock, board)
    assert s.pool.capacity == 16 and s.queue_ahead() == 0
    assert s.slot_rate() == 1.0 and (s.e2e.mean(clock.now) or 0) > 1.5
    served(board, PAID, 0.3, 1.0, n=10)
    policy = SloCost(board)
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is FAST
    assert plan.predicted_ttft_s is not None
    assert abs(plan.predicted_ttft_s - (0.15 + erlang_quantile(1) / 16)) < 1e-9


def test_slots_freeing_slower_spill_the_request() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    s = full_replica(clock, board)
    served(board, PAID, 0.3, 1.0, n=10)
    clock.now += 1
    scrape(s, clock.now, running=16, completed=18)  # only 2 finished in the last second
    rate = s.slot_rate()
    assert rate is not None and rate < 0.7
    plan = SloCost(board).plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is PAID and plan.scores[FAST.id] > 0.5


def test_slot_rate_from_the_counter_survives_a_restart() -> None:
    rate = SlotRate(decay_s=10.0)
    rate.scrape(100.0, 8.0, 0.0)
    rate.scrape(108.0, 8.0, 1.0)  # 8 done by 8 busy slots in 1 s
    assert rate.per_slot() == 1.0
    rate.scrape(3.0, 8.0, 2.0)  # the replica restarted: its counter began again
    assert rate.per_slot() == 1.0
    rate.scrape(11.0, 8.0, 3.0)
    w = math.exp(-2 / 10)  # (the restart's second counted for nothing)
    per_slot = rate.per_slot()
    assert per_slot is not None and abs(per_slot - (8 * w + 8) / (8 * w + 8)) < 1e-9


def test_without_a_counter_the_hold_time_is_our_unqueued_attempts() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    s = board.stats(FAST)
    served(board, FAST, 0.1, 0.5, n=10)
    scrape(s, clock.now, running=4, waiting=2)  # a queue: what ends now may have waited
    served(board, FAST, 2.0, 5.0, n=10)
    assert s.slot_rate() == 2.0  # 1 / 0.5 s


# -- issue #25, defect 2: a prompt size the replica has not served ------------------------


def prefill_history(board: Scoreboard, d: Deployment, base_s: float, per_token_s: float,
                    sizes: range) -> None:
    """TTFT = (base + per-token x prompt) x J, J cycling through 0.9, 1.0, 1.1: the
    simulator's model (selfhost/sim_state.py)."""
    for i, tokens in enumerate(sizes):
        jitter = (0.9, 1.0, 1.1)[i % 3]
        served(board, d, (base_s + per_token_s * tokens) * jitter, 2.0, tokens=tokens)


def test_a_long_prompt_is_judged_by_the_replicas_prefill_rate() -> None:
    """The slow replica served prompts of up to 1,500 tokens (P99 ~0.42 s); a 2,600-token
    one takes it (0.08 + 0.2 ms x 2,600) x J = 0.54 to 0.66 s. Judged by the largest size
    it served, it looked fine; with its prefill rate it goes to the fast replica."""
    clock = Clock()
    board = Scoreboard(clock)
    prefill_history(board, SLOW, 0.08, 0.0002, range(100, 1500, 25))
    prefill_history(board, FAST, 0.04, 0.0001, range(100, 1500, 25))
    for _ in range(3):
        board.started(FAST)  # the fast one is busier: least-loaded would pick the slow
    policy = SloCost(board)
    long = RouteHints(slo_ttft_s=0.5, prompt_tokens=2600, max_tokens=50)
    s = board.stats(SLOW)
    bucket2 = s.ttft_by_size[2].quantile(0.99, clock.now)
    assert bucket2 is not None and bucket2 < 0.45  # what the nearest size said
    predicted = policy.service_ttft(s, clock.now, 2600)
    assert predicted is not None and 0.6 < predicted < 0.75
    assert first(policy, [SLOW, FAST], long) == FAST.id
    assert first(policy, [SLOW, FAST]) == SLOW.id  # a short one still goes to the idler


def test_no_slope_without_spread() -> None:
    """Prompts all of one size say nothing of prefill per token: the nearest size's P99."""
    clock = Clock()
    board = Scoreboard(clock)
    served(board, SLOW, 0.2, 1.0, tokens=300, n=10)
    s = board.stats(SLOW)
    assert s.prefill.slope() is None
    assert SloCost.service_ttft(s, clock.now, 3000) == 0.2


# -- issue #24: back to cheap capacity once an incident is over ---------------------------


def test_a_stopped_replica_is_judged_by_what_it_did_before_once_it_answers() -> None:
    """A SIGSTOP: probes and scrapes fail, requests already sent wait for it. Once it
    answers again, what was measured meanwhile (the backlog's 5 s first tokens, its
    timeouts) is forgotten, and it is the cheapest choice at once."""
    clock = Clock()
    board = Scoreboard(clock)
    s = board.stats(FAST)
    scrape(s, clock.now, running=2)
    s.record_health(True, clock.now)
    served(board, FAST, 0.1, 1.0, n=20)
    served(board, PAID, 0.3, 1.0, n=10)
    policy = SloCost(board)
    assert first(policy, [FAST, PAID]) == FAST.id
    backlog = [(board.started(FAST, a := object()), a) for _ in range(3)]
    clock.now += 1
    s.scrape_failed()
    s.record_health(False, clock.now)
    for _ in range(8):  # timed out meanwhile
        board.failed(board.started(FAST), "timeout", timeout=True)
    assert s.error_rate.get(clock.now) > 0.5 and first(policy, [FAST, PAID]) == PAID.id
    clock.now += 4
    stats, attempt = backlog[0]
    board.first_token(stats, 5.0, 100, attempt)  # before it was seen back: dropped then
    s.record_health(True, clock.now)
    assert policy.predicted_ttft(FAST, clock.now, 100) == 5.0  # scrapes still fail: not yet
    clock.now += 0.2
    scrape(s, clock.now, running=2)
    for stats, attempt in backlog[1:]:  # answered after: started in the outage, ignored
        board.first_token(stats, 5.2, 100, attempt)
        board.succeeded(stats, e2e_s=6.0, streamed=True, attempt=attempt)
    assert s.error_rate.get(clock.now) == 0.0
    assert s.first_byte.quantile(0.99, clock.now) == 0.1
    assert policy.predicted_ttft(FAST, clock.now, 100) == 0.1
    assert first(policy, [FAST, PAID]) == FAST.id


def slowed(clock: Clock, board: Scoreboard) -> DeploymentStats:
    """The fast replica, with a minute of 0.1 s history, turns 0.8 s slower."""
    s = board.stats(FAST)
    scrape(s, clock.now, running=1)
    served(board, FAST, 0.1, 1.0, n=100)
    served(board, PAID, 0.3, 1.0, n=10)
    clock.now += 1
    served(board, FAST, 0.9, 1.8, n=2)
    return s


def test_a_slowed_replica_is_probed_and_back_after_three_good_answers() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    s = slowed(clock, board)
    policy = SloCost(board)
    assert first(policy, [FAST, PAID]) == PAID.id  # shunned; its first probe is due later
    probes = []
    for _ in range(160):  # 10 s of requests, still slow: probes back off to 2 s apart
        clock.now += 1 / 16
        plan = policy.plan(chat(), [FAST, PAID], SLO)
        if plan.candidates[0] is FAST:
            assert plan.reason.startswith("probing gpu/fast") and plan.candidates[1] is PAID
            probes.append(clock.now)
            served(board, FAST, 0.9, 1.8)
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps[:3] == [0.25, 0.5, 1.0] and set(gaps[3:]) == {PROBE_GAP_MAX_S}
    # It recovers: the next probe answers in 0.1 s, the next ones follow at once.
    clock.now = probes[-1] + PROBE_GAP_MAX_S
    for _ in range(3):
        assert first(policy, [FAST, PAID]) == FAST.id
        served(board, FAST, 0.1, 1.0)
        clock.now += 0.05
    for _ in range(5):  # forgiven: no longer a probe, the cheapest meeting the SLO
        plan = policy.plan(chat(), [FAST, PAID], SLO)
        assert plan.candidates[0] is FAST and plan.reason.startswith("cheapest")
    assert s.ttft_by_size[0].quantile(0.99, clock.now) == 0.1


def test_a_probe_that_is_still_slow_keeps_it_shunned() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    slowed(clock, board)
    policy = SloCost(board)
    first(policy, [FAST, PAID])
    clock.now += 0.3
    assert first(policy, [FAST, PAID]) == FAST.id
    served(board, FAST, 0.1, 1.0)
    served(board, FAST, 0.1, 1.0)
    served(board, FAST, 0.9, 1.8)  # two good, then slow again: not three good in a row
    clock.now += 0.05
    assert first(policy, [FAST, PAID]) == PAID.id


def test_a_replica_too_slow_for_long_prompts_is_not_probed_with_them() -> None:
    clock = Clock()
    board = Scoreboard(clock)
    prefill_history(board, SLOW, 0.08, 0.0002, range(100, 2800, 25))
    served(board, PAID, 0.3, 1.0, n=10)
    policy = SloCost(board)
    long = RouteHints(slo_ttft_s=0.5, prompt_tokens=2600, max_tokens=50)
    for _ in range(50):
        clock.now += 0.5
        plan = policy.plan(chat(), [SLOW, PAID], long)
        assert plan.candidates[0] is PAID and "probing" not in plan.reason
    assert first(policy, [SLOW, PAID]) == SLOW.id


def throttled_cloud() -> tuple[Clock, Scoreboard, DeploymentStats]:
    """A board whose provider answered well, then 429 to ten requests in a row."""
    clock = Clock()
    board = Scoreboard(clock)
    cloud = board.stats(PAID)
    served(board, PAID, 0.3, 1.0, n=10)
    for _ in range(10):
        board.failed(board.started(PAID), "HTTP 429")
    return clock, board, cloud


def test_a_throttled_provider_is_probed_when_nothing_else_meets_the_slo() -> None:
    """A storm of 429s from the provider while the pool is full: its errors would keep
    it last for half a minute after the storm; a probe finds it well within seconds."""
    clock, board, cloud = throttled_cloud()
    s = board.stats(FAST)
    served(board, FAST, 0.1, 1.0, n=10)
    scrape(s, clock.now, running=16, waiting=20, completed=0)  # far behind
    policy = SloCost(board)
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is FAST and not plan.meets_slo
    clock.now += 0.3
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is PAID and plan.reason.startswith("probing openai/gpt")
    served(board, PAID, 0.3, 1.0, n=3)  # the storm is over
    clock.now += 0.01
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is PAID and plan.meets_slo
    assert cloud.error_rate.get(clock.now) == 0.0


def test_a_slowed_replica_is_probed_while_its_same_price_sibling_meets_the_slo() -> None:
    """The slowdown in the end-to-end experiment: the fast replica shunned, the slow one
    (same pool, same price) meeting the SLO and so the plan's choice, the cloud behind.
    The fast one would share the pool's traffic if it were well, so it is probed all the
    same; once it recovers, the probe schedule has it back."""
    clock = Clock()
    board = Scoreboard(clock)
    slowed(clock, board)
    scrape(board.stats(SLOW), clock.now, running=1)
    served(board, SLOW, 0.3, 1.0, n=100)
    policy = SloCost(board)
    deps = [FAST, SLOW, PAID]
    probes = []
    for _ in range(80):  # 5 s of requests, still slow
        clock.now += 1 / 16
        plan = policy.plan(chat(), deps, SLO)
        if plan.candidates[0] is FAST:
            assert plan.reason.startswith("probing gpu/fast") and plan.candidates[1] is SLOW
            probes.append(clock.now)
            served(board, FAST, 0.9, 1.8)
        else:
            assert plan.candidates[0] is SLOW
    assert len(probes) >= 3
    recovered = clock.now
    to_fast = []
    for _ in range(48):  # 3 s of requests after it recovered
        clock.now += 1 / 16
        plan = policy.plan(chat(), deps, SLO)
        if plan.candidates[0] is FAST:
            to_fast.append(clock.now)
            served(board, FAST, 0.1, 1.0)
    # The next probe is at most the longest gap away; then two at once, and it is back.
    assert to_fast[0] <= recovered + PROBE_GAP_MAX_S
    assert to_fast[2] - to_fast[0] < 0.2
    assert policy.predicted_ttft(FAST, clock.now, 100) == 0.1
    # Back among the pool's replicas: the within-pool step shares the traffic.
    assert len([t for t in to_fast if t > to_fast[2]]) >= 8


def test_a_dearer_shunned_deployment_recovers_by_its_failover_answers() -> None:
    """A storm of 429s from the cloud while the pool meets the SLO: the cloud is never
    probed (dearer than the choice), but it is on probation from the moment it is
    shunned, so the failovers it answers well after the storm have it back at once
    instead of when its errors decay."""
    clock, board, cloud = throttled_cloud()
    served(board, FAST, 0.1, 1.0, n=10)
    policy = SloCost(board)
    for _ in range(20):
        clock.now += 0.1
        plan = policy.plan(chat(), [FAST, PAID], SLO)
        assert plan.candidates[0] is FAST and "probing" not in plan.reason
    served(board, PAID, 0.3, 1.0, n=3)  # failovers from the pool, after the storm
    clock.now += 0.01
    policy.plan(chat(), [FAST, PAID], SLO)
    assert cloud.error_rate.get(clock.now) == 0.0
    assert policy.predicted_ttft(PAID, clock.now, 100) == 0.3


def test_a_shunned_replica_that_is_the_best_of_none_recovers_by_its_answers() -> None:
    """Nothing meets the SLO and the shunned fast replica is the best predicted: it is the
    plan's choice, not a probe, and its good answers count towards its recovery."""
    clock = Clock()
    board = Scoreboard(clock)
    slowed(clock, board)
    for _ in range(10):
        board.failed(board.started(PAID), "HTTP 503")
    policy = SloCost(board)
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is FAST and not plan.meets_slo
    clock.now += 0.2  # answered (started after the plan)
    served(board, FAST, 0.1, 1.0, n=3)
    plan = policy.plan(chat(), [FAST, PAID], SLO)
    assert plan.candidates[0] is FAST and plan.meets_slo
    assert policy.predicted_ttft(FAST, clock.now, 100) == 0.1
