"""The request path's hook: nothing while nobody watches; while someone does, sums added
to and a few requests kept, from which the background drain makes a bounded sample of
decisions, without prompt text unless the team opted in."""

from __future__ import annotations

import orjson

from gateway.console import recorder as recorder_module
from gateway.console.recorder import Recorder, excerpt
from tests.support.console import deployment, settled


def test_nothing_is_kept_while_nobody_watches() -> None:
    rec = Recorder("p")
    for i in range(100):
        rec.settled(*settled(rid=f"r{i}"))
    assert rec.drain(1.0) == 0
    assert not rec.deployments and not rec.teams and not rec.decisions and not rec._picked


def test_drained_into_sums_and_a_sample() -> None:
    rec = Recorder("p", sample_per_s=5, capture_teams=frozenset({"open-team"}))
    rec.watching = True
    a, b = deployment("gpu/10.0.0.1:8000"), deployment("gpu/10.0.0.2:8000", price=2.0)
    for i in range(40):
        rec.settled(*settled(dep=a if i % 2 else b, rid=f"r{i}", tokens=(10, 20)))
    rec.settled(*settled(team="open-team", key="k9", rid="open", prompt="tell me a secret"))
    rec.settled(*settled(status=502, rid="failed"))
    assert rec.drain(1.0) == 42
    # The last two went to the default deployment, a.
    assert rec.deployments[a.id].requests == 22 and rec.deployments[b.id].requests == 20
    assert rec.deployments[a.id].tokens == 22 * 30
    assert rec.deployments[b.id].cost_nanos == 20 * 30 * 2000  # $2 per 1M tokens
    assert rec.teams["research"].requests == 41 and rec.teams["research"].errors == 1
    assert rec.keys["open-team", "k9"].requests == 1
    # At most sample_per_s x elapsed decisions, spread over the whole drain.
    assert len(rec.decisions) == 5
    assert len({d["request_id"] for d in rec.decisions}) == 5
    assert rec.drain(0.2) == 0


def test_a_decision_shows_the_route_and_never_content_unless_opted_in() -> None:
    rec = Recorder("proc-1", capture_teams=frozenset({"open-team"}))
    d = rec.decision(*settled(prompt="the hidden prompt", tokens=(7, 3)))
    assert d["id"].startswith("proc-1:") and d["team"] == "research" and d["key"] == "k1"
    assert d["deployment"] == "gpu/10.0.0.1:8000" and d["status"] == 200
    assert d["policy"] == "slo-cost" and d["score_kind"] == "predicted_ttft_ms"
    assert d["candidates"] == [{"id": "gpu/10.0.0.1:8000", "score": 12.3},
                               {"id": "gpu/10.0.0.2:8000", "score": None}]  # -1: no data
    assert d["prompt_tokens"] == 7 and d["completion_tokens"] == 3 and d["attempts"] == 1
    assert "prompt" not in d and b"hidden" not in orjson.dumps(d)
    opted = rec.decision(*settled(team="open-team", prompt="a visible prompt"))
    assert opted["prompt"] == "a visible prompt"


def test_only_every_stride_th_request_is_kept_and_never_more_than_picked() -> None:
    rec = Recorder("p", sample_per_s=10)
    rec.watching = True
    entries = [settled(rid=f"r{i}") for i in range(1000)]
    for e in entries[:400]:  # a burst before any drain: kept, but thinned out as it comes
        rec.settled(*e)
    # Full at r100 and at r200 (every one kept, then every 2nd): every 4th since.
    assert len(rec._picked) == recorder_module.PICKED and rec.stride == 4
    assert [ctx.req.request_id for ctx, *_ in rec._picked] == [
        f"r{i}" for i in range(0, 400, 4)]
    assert rec.drain(0.25) == 400 and rec.teams["research"].requests == 400
    assert len(rec.decisions) == 2  # the credit: 10 a second x 0.25 s (0.5 left over)
    assert rec.stride == 160  # 1,600 a second, 10 of which are wanted
    for e in entries[400:]:
        rec.settled(*e)
    assert [ctx.req.request_id for ctx, *_ in rec._picked] == [
        f"r{i}" for i in range(559, 1000, 160)]
    assert rec.drain(0.25) == 600 and rec.keys["research", "k1"].requests == 1000
    assert len(rec.decisions) == 2 + 3 and not rec._picked


def test_the_next_watch_starts_from_every_request() -> None:
    rec = Recorder("p", sample_per_s=1)
    rec.watching = True
    for i in range(50):
        rec.settled(*settled(rid=f"r{i}"))
    rec.drain(1.0)
    assert rec.stride == 50
    rec.watching = False
    rec.drain(0.0)  # what the publisher does when the flag goes
    rec.watching = True
    rec.settled(*settled(rid="first"))
    assert [ctx.req.request_id for ctx, *_ in rec._picked] == ["first"]


def test_nothing_is_kept_when_no_decisions_are_wanted() -> None:
    rec = Recorder("p", sample_per_s=0)
    rec.watching = True
    rec.drain(0.25)
    for i in range(300):
        rec.settled(*settled(rid=f"r{i}"))
    assert not rec._picked and rec.teams["research"].requests == 300
    assert rec.drain(0.25) == 300 and not rec.decisions


def test_excerpt() -> None:
    assert excerpt({"messages": [{"role": "user", "content": "a"},
                                 {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": [{"type": "text", "text": "c"}]}]}
                   ) == "c"
    assert excerpt({"prompt": "x" * 500}) == "x" * 200 + "…"
    assert excerpt({"input": ["one", "two"]}) == "one two"
