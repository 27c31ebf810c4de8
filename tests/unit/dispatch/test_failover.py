"""The pure pieces of failover: what a broken stream can be continued with, the splice,
the hedging race and its delay."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    FailureKind,
    StreamChunk,
    Target,
    UpstreamFailure,
    Usage,
)
from gateway.dispatch.attempts import AttemptRecord
from gateway.dispatch.continuation import (
    CutSegment,
    Splice,
    continuation_request,
    not_continuable,
    read_partial,
)
from gateway.dispatch.hedging import HedgeSettings, hedge_delay, race
from policies.scoreboard import Scoreboard


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0,
          cid: str = "chatcmpl-1", **extra: Any) -> bytes:
    return orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": 100,
                         "model": "m", "choices": [{"index": index, "delta": delta,
                                                    "finish_reason": finish}], **extra})


REQ = CanonicalRequest("chat", "m", {"model": "m", "max_tokens": 10, "min_tokens": 6,
                                     "messages": [{"role": "user", "content": "hi"}]},
                       stream=True)


def test_read_partial_and_what_cannot_be_continued() -> None:
    seen = [chunk({"role": "assistant", "content": ""}), chunk({"content": " a"}),
            chunk({"content": " b"})]
    partial = read_partial(seen)
    assert (partial.text, partial.tokens, partial.id, partial.created) == (" a b", 2,
                                                                          "chatcmpl-1", 100)
    assert not partial.finished and not_continuable(REQ, partial) is None
    call = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})
    assert not_continuable(REQ, read_partial([*seen, call])) == "a tool call was being streamed"
    second = chunk({"content": " z"}, index=1)
    assert "more than one choice" in (not_continuable(REQ, read_partial([*seen, second])) or "")
    completion = CanonicalRequest("completions", "m", {"prompt": "x"}, stream=True)
    assert not_continuable(completion, partial) == "only chat streams can be continued"
    assert read_partial([*seen, chunk({}, finish="stop")]).finished


def test_continuation_request_budgets_tokens_and_extends_a_prefill() -> None:
    partial = read_partial([chunk({"content": " a"}), chunk({"content": " b "})])
    cont = continuation_request(REQ, partial, prefill_strip=False)
    assert cont.body["messages"][-1] == {"role": "assistant", "content": " a b "}
    assert (cont.body["max_tokens"], cont.body["min_tokens"]) == (8, 4)
    assert cont.body["continue_final_message"] is True
    assert cont.body["add_generation_prompt"] is False
    assert REQ.body["max_tokens"] == 10 and len(REQ.body["messages"]) == 1  # untouched
    stripped = continuation_request(REQ, partial, prefill_strip=True)
    assert stripped.body["messages"][-1]["content"] == " a b"
    prefilled = CanonicalRequest("chat", "m", {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure:"}]})
    again = continuation_request(prefilled, partial, prefill_strip=False)
    assert again.body["messages"][-1] == {"role": "assistant", "content": "Sure: a b "}
    assert len(again.body["messages"]) == 2


def test_splice_rewrites_ids_drops_the_role_and_sums_usage() -> None:
    first = read_partial([chunk({"content": " a"}), chunk({"content": " b"})])
    dep = Deployment("d", "m", "openai", Target("http://x/v1", "m"))
    record = AttemptRecord(dep, "cut")
    splice = Splice(first, [CutSegment(record, 0, 2)], skip_ws="")
    assert splice.rewrite(StreamChunk(chunk({"role": "assistant", "content": ""},
                                            cid="other"))) is None
    out = splice.rewrite(StreamChunk(chunk({"content": " c"}, cid="other")))
    assert out is not None
    assert orjson.loads(out.data)["id"] == "chatcmpl-1"
    assert orjson.loads(out.data)["created"] == 100
    final = Usage(prompt_tokens=30, completion_tokens=5)
    data = orjson.dumps({"id": "other", "choices": [], "usage": {"prompt_tokens": 30}})
    summed = splice.rewrite(StreamChunk(data, final, usage_only=True))
    assert summed is not None and summed.usage == Usage(30 + 28, 5 + 2)
    assert orjson.loads(summed.data)["usage"]["completion_tokens"] == 7
    assert record.usage == Usage(28, 2) and record.estimated
    hidden = splice.rewrite(StreamChunk(b"", final, usage_only=True))
    assert hidden is not None and hidden.data == b"" and hidden.usage == Usage(58, 7)


def test_splice_skips_whitespace_the_prefill_left_out() -> None:
    splice = Splice(read_partial([chunk({"content": "The "})]), [], skip_ws=" ")
    assert splice.rewrite(StreamChunk(chunk({"content": " "}))) is None
    out = splice.rewrite(StreamChunk(chunk({"content": " over"})))
    assert out is not None and orjson.loads(out.data)["choices"][0]["delta"]["content"] == \
        " over"  # only the first content is trimmed


def test_hedge_delay_is_the_best_candidates_p95_clamped() -> None:
    board = Scoreboard(clock=lambda: 10.0)
    slow, fast = (Deployment(n, "m", "openai", Target("http://x/v1", "m")) for n in "sf")
    settings = HedgeSettings(quantile=0.95, min_delay_s=0.05, max_delay_s=2.0)
    assert hedge_delay(board, [slow, fast], settings) == 2.0  # no data yet
    for i in range(5):
        board.first_token(board.stats(slow), 0.4 + i / 100)
        board.first_token(board.stats(fast), 0.08 + i / 1000)
    assert hedge_delay(board, [slow, fast], settings) == pytest.approx(0.084)
    assert hedge_delay(board, [slow], settings) == pytest.approx(0.44)


async def test_race_first_success_wins_and_the_loser_is_cancelled() -> None:
    cancelled: list[str] = []
    discarded: list[str] = []

    async def attempt(name: str, delay: float) -> str:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    result = await race(attempt("slow", 1.0), 0.01, lambda: attempt("hedge", 0.0),
                        discarded.append)
    assert result == ("hedge", 1)
    await asyncio.sleep(0)
    assert cancelled == ["slow"] and discarded == []

    # Answered before the delay: no hedge is launched.
    launched: list[bool] = []
    assert await race(attempt("quick", 0.0), 1.0, lambda: launched.append(True) or None,
                      discarded.append) == ("quick", 0)
    assert launched == []


async def test_race_waits_for_the_other_when_one_fails_and_raises_when_both_do() -> None:
    async def fail(after: float) -> str:
        await asyncio.sleep(after)
        raise UpstreamFailure(FailureKind.SERVER, f"failed after {after}")

    async def ok(after: float) -> str:
        await asyncio.sleep(after)
        return "ok"

    assert await race(ok(0.05), 0.01, lambda: fail(0.0), lambda _: None) == ("ok", 0)
    with pytest.raises(UpstreamFailure, match=r"failed after 0\.05$"):
        await race(fail(0.05), 0.01, lambda: fail(0.01), lambda _: None)
    with pytest.raises(UpstreamFailure, match=r"failed after 0\.0$"):  # before the delay
        await race(fail(0.0), 1.0, lambda: ok(0.0), lambda _: None)
