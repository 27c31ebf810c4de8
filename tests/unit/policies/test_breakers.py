"""Circuit breakers: the state machine on a driven clock, exact transitions and counters."""

from __future__ import annotations

from gateway.canonical import Deployment, Target
from policies.breakers import Breaker, Breakers, BreakerSettings, CircuitState, Pass
from policies.window import SlidingCounts

SETTINGS = BreakerSettings(consecutive_failures=3, failure_rate=0.5, min_requests=6,
                           window_s=10.0, cooldown_s=5.0, max_block_s=30.0)


def dep(name: str) -> Deployment:
    return Deployment(name, "m", "openai", Target("http://x/v1", "m"))


def test_opens_after_consecutive_failures_and_success_resets_the_count() -> None:
    opened: list[Breaker] = []
    b = Breaker(SETTINGS, opened.append)
    b.failure(0.0, False, "503")
    b.failure(0.1, False, "503")
    b.success(0.2, False)  # the run is broken: two more failures do not open it
    b.failure(0.3, False, "503")
    b.failure(0.4, False, "503")
    assert b.state is CircuitState.CLOSED and b.consecutive == 2
    b.failure(0.5, False, "connect_error: refused")
    assert b.state is CircuitState.OPEN and opened == [b]
    assert (b.opened_total, b.failures_total, b.successes_total) == (1, 5, 1)
    assert b.last_failure == "connect_error: refused"


def test_opens_on_failure_rate_over_minimum_volume() -> None:
    b = Breaker(SETTINGS)
    for i in range(5):  # alternating: never three in a row
        if i % 2:
            b.success(i * 0.1, False)
        else:
            b.failure(i * 0.1, False, "500")
    assert b.state is CircuitState.CLOSED  # 3/5 failed, but 5 < min_requests
    b.success(0.6, False)
    assert b.state is CircuitState.CLOSED  # 3/6 = 0.5 counts only when a failure lands
    b.failure(0.7, False, "500")
    assert b.state is CircuitState.OPEN and b.consecutive == 1


def test_old_failures_leave_the_window() -> None:
    b = Breaker(SETTINGS)
    for i in range(3):
        b.success(i, False)
        b.failure(i + 0.5, False, "500")
    assert b.failure_rate(3.0) == (0.5, 6)
    assert b.failure_rate(30.0) == (0.0, 0)


def test_open_half_open_single_probe_then_closed() -> None:
    b = Breaker(SETTINGS)
    for t in range(3):
        b.failure(t, False, "503")
    assert b.admit(2.0) is Pass.NO and b.admit(6.9) is Pass.NO  # cooldown until 7.0
    assert b.admit(7.0) is Pass.PROBE and b.state is CircuitState.HALF_OPEN
    assert b.admit(7.1) is Pass.NO  # one probe at a time
    b.success(7.2, False)  # a late answer to an older request decides nothing
    assert b.state is CircuitState.HALF_OPEN
    b.success(7.3, True)
    assert b.state is CircuitState.CLOSED and b.admit(7.4) is Pass.YES
    assert (b.rejected_total, b.probes_total) == (3, 1)


def test_failed_probe_reopens_and_released_probe_is_given_again() -> None:
    b = Breaker(SETTINGS)
    for t in range(3):
        b.failure(t, False, "503")
    assert b.admit(7.0) is Pass.PROBE
    b.release(True)  # the client went away: the next request probes instead
    assert b.admit(7.1) is Pass.PROBE
    b.failure(7.2, True, "503")
    assert b.state is CircuitState.OPEN and b.open_until == 12.2 and b.opened_total == 2
    assert b.admit(12.1) is Pass.NO and b.admit(12.2) is Pass.PROBE


def test_failing_health_check_keeps_it_open() -> None:
    b = Breaker(SETTINGS)
    for t in range(3):
        b.failure(t, False, "503")
    b.health = False
    assert b.admit(100.0) is Pass.NO and b.state is CircuitState.OPEN
    b.health = True
    assert b.admit(100.1) is Pass.PROBE
    b.success(100.2, True)
    assert b.health is None  # forgotten once closed


def test_healthy_now_lets_the_probe_through_at_once() -> None:
    """The pool's monitor sees a stopped replica back: neither the cooldown nor a failing
    last health check of the breaker's own holds its probe back."""
    b = Breaker(SETTINGS)
    for t in range(3):
        b.failure(t, False, "timeout")  # open until 7.0
    b.health = False
    assert b.admit(2.5) is Pass.NO
    b.healthy_now(2.6)
    assert b.health is True and b.admit(2.6) is Pass.PROBE
    assert b.admit(2.7) is Pass.NO  # still one probe at a time
    b.healthy_now(2.8)  # half-open: the probe in flight decides
    assert b.state is CircuitState.HALF_OPEN and b.admit(2.9) is Pass.NO
    b.success(3.0, True)
    b.healthy_now(3.1)  # closed: nothing to do
    assert b.state is CircuitState.CLOSED and b.health is None and b.open_until == 2.6


def test_healthy_now_by_deployment_id() -> None:
    clock = [0.0]
    breakers = Breakers(SETTINGS, lambda: clock[0])
    a = dep("a")
    for t in range(3):
        breakers.get(a).failure(t, False, "connect_error: refused")
    clock[0] = 3.0
    breakers.healthy_now("a")
    breakers.healthy_now("never-tried")  # no circuit: none is made
    assert breakers.get(a).admit(3.0) is Pass.PROBE
    assert set(breakers.snapshot()) == {"a"}


def test_retry_after_blocks_even_when_closed_and_is_capped() -> None:
    b = Breaker(SETTINGS)
    b.block(10.0, 2.0)
    assert b.state is CircuitState.CLOSED
    assert b.admit(11.9) is Pass.NO and b.admit(12.0) is Pass.YES
    b.block(20.0, 3600.0)
    assert b.not_before == 50.0 and b.blocks_total == 2


def test_least_bad_is_the_closest_to_ready() -> None:
    clock = [0.0]
    breakers = Breakers(SETTINGS, lambda: clock[0])
    a, b, c = dep("a"), dep("b"), dep("c")
    for t in range(3):
        breakers.get(a).failure(1.0 + t, False, "503")  # open until 8
        breakers.get(b).failure(0.0 + t, False, "503")  # open until 7
    breakers.get(c).block(0.0, 9.0)  # blocked until 9
    assert breakers.least_bad([a, b, c]) is b
    assert [x.deployment for x in breakers.open()] == [a, b]
    snap = breakers.snapshot()
    assert snap["b"]["state"] == "open" and snap["b"]["cooldown_left_s"] == 7.0
    assert snap["c"]["blocked_for_s"] == 9.0


def test_sliding_counts() -> None:
    w = SlidingCounts(10.0, series=2, buckets=10)
    w.add(0.5, 0)
    w.add(5.5, 1, 3)
    assert w.totals(9.9) == [1, 3]
    assert w.totals(10.5) == [0, 3]  # the bucket [0, 1) left the window
    assert w.totals(16.0) == [0, 0]
    w.add(16.0, 0)
    w.clear()
    assert w.totals(16.0) == [0, 0]
