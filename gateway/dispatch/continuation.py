"""Mid-stream continuation: what the client already has, the request that continues it,
and the splice that makes the new upstream stream look like the rest of the old one.

When a stream breaks after the client has received text, the same conversation is sent
again with that text as a final assistant message to be continued (vLLM:
`continue_final_message: true, add_generation_prompt: false`; Anthropic: assistant
prefill, which the adapter makes of a trailing assistant message). The new stream's
chunks are rewritten to carry the first stream's `id`/`created`/`model`, its role chunk
is dropped, and its usage becomes the sum over every segment, so the client sees one
continuous response. `StreamResume` drives it for the stream (`stream.py`): before any
content a broken stream is simply sent again; after it, continued on a deployment that
can (`Deployment.can_continue`). Nothing here runs unless a stream broke: the success
path only keeps references to the chunks it relays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    StreamChunk,
    UpstreamFailure,
    Usage,
    usage_json,
)
from gateway.dispatch.attempts import AttemptRecord, Segment
from gateway.dispatch.failover import Failover
from gateway.dispatch.run import Run
from policies.routing.base import Plan

if TYPE_CHECKING:  # the stream holds its resumer: a cycle at import time only
    from gateway.dispatch.stream import UpstreamStream


@dataclass(slots=True)
class Partial:
    """What the client received of a stream so far (choice 0)."""

    text: str = ""
    tokens: int = 0  # content chunks: one token each from vLLM and the simulator, else an estimate
    tool_calls: bool = False
    more_choices: bool = False  # n > 1
    finished: bool = False  # a finish_reason went out: the answer is complete
    id: str | None = None
    created: int | None = None
    model: str | None = None


def read_partial(seen: list[bytes]) -> Partial:
    """Parse the relayed chunks (serialized OpenAI chunks) once, after a failure."""
    out = Partial()
    texts: list[str] = []
    for data in seen:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if out.id is None and isinstance(obj.get("id"), str):
            out.id, out.created, out.model = obj["id"], obj.get("created"), obj.get("model")
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                out.more_choices = True
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if text is None:
                text = choice.get("text")  # a completions chunk
            if isinstance(text, str) and text:
                texts.append(text)
                out.tokens += 1
            if isinstance(delta, dict) and delta.get("tool_calls"):
                out.tool_calls = True
            if choice.get("finish_reason") is not None:
                out.finished = True
    out.text = "".join(texts)
    return out


def not_continuable(req: CanonicalRequest, partial: Partial) -> str | None:
    """Why this stream cannot be continued (None: it can)."""
    if partial.tool_calls:
        return "a tool call was being streamed"
    if req.operation != "chat":
        return "only chat streams can be continued"
    n = req.body.get("n")
    if partial.more_choices or (isinstance(n, int) and n > 1):
        return "it streamed more than one choice"
    return None


def continuation_request(req: CanonicalRequest, partial: Partial, *,
                         prefill_strip: bool) -> CanonicalRequest:
    """The conversation plus the partial answer as an assistant message to continue.

    `prefill_strip`: Anthropic rejects an assistant prefill that ends in whitespace, so
    the trailing whitespace is left out (and skipped again at the seam, see `Splice`).
    A client's own trailing assistant message (its prefill) is extended, not repeated.
    """
    body = dict(req.body)
    text = partial.text.rstrip() if prefill_strip else partial.text
    messages = list(body["messages"])
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(
            last.get("content"), str):
        messages[-1] = {**last, "content": last["content"] + text}
    else:
        messages.append({"role": "assistant", "content": text})
    body["messages"] = messages
    body["continue_final_message"] = True
    body["add_generation_prompt"] = False
    for key in ("max_completion_tokens", "max_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            body[key] = max(1, limit - partial.tokens)  # the total stays what was asked
    floor = body.get("min_tokens")
    if isinstance(floor, int) and not isinstance(floor, bool):
        body["min_tokens"] = max(0, floor - partial.tokens)
    return replace(req, body=body)


@dataclass(slots=True)
class CutSegment:
    """A segment that broke: how far into the answer it started, what it streamed."""

    record: AttemptRecord
    start_tokens: int
    tokens: int


class Splice:
    """Rewrites the chunks of a continuing stream so they read as the first stream's."""

    __slots__ = ("_created", "_cut", "_id", "_model", "_skip_ws")

    def __init__(self, first: Partial, cut: list[CutSegment], skip_ws: str) -> None:
        self._id, self._created, self._model = first.id, first.created, first.model
        self._cut = cut
        self._skip_ws = skip_ws  # whitespace the client has that the prefill left out

    def rewrite(self, chunk: StreamChunk) -> StreamChunk | None:
        """The chunk to relay instead, or None to drop it (the repeated role chunk)."""
        usage = self._summed(chunk.usage) if chunk.usage is not None else None
        if not chunk.data:  # usage kept for metering only
            return StreamChunk(b"", usage, chunk.usage_only)
        obj: Any = orjson.loads(chunk.data)
        if not isinstance(obj, dict):
            return chunk
        if self._id is not None:
            obj["id"] = self._id
            if self._created is not None:
                obj["created"] = self._created
            if self._model is not None:
                obj["model"] = self._model
        choices = obj.get("choices")
        if choices:
            for choice in choices:
                self._fix(choice)
            if all(_empty(c) for c in choices):
                return None
        if usage is not None and obj.get("usage") is not None:
            obj["usage"] = usage_json(usage)
        return StreamChunk(orjson.dumps(obj), usage if usage is not None else chunk.usage,
                           chunk.usage_only)

    def _fix(self, choice: Any) -> None:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            return
        delta.pop("role", None)
        content = delta.get("content")
        if self._skip_ws and isinstance(content, str) and content:
            i = 0
            while i < min(len(content), len(self._skip_ws)) and content[i] == self._skip_ws[i]:
                i += 1
            delta["content"] = content[i:]
            self._skip_ws = ""

    def _summed(self, last: Usage) -> Usage:
        """Usage over all segments. A broken segment reported none: its output is what it
        streamed, its prompt the last prompt less the partial answer that prompt held."""
        before = sum(c.tokens for c in self._cut)
        base = max(0, last.prompt_tokens - before)
        total = Usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
        for cut in self._cut:
            if cut.record.usage is None:
                cut.record.usage = Usage(base + cut.start_tokens, cut.tokens)
                cut.record.estimated = True
            total.prompt_tokens += cut.record.usage.prompt_tokens
            total.completion_tokens += cut.record.usage.completion_tokens
            total.cached_tokens += cut.record.usage.cached_tokens
        return total


def _empty(choice: Any) -> bool:
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return not (delta.get("content") or delta.get("tool_calls") or delta.get("refusal"))
    return not choice.get("text")


class StreamResume:
    """Keeps one client stream going when its upstream breaks: before any content the
    request is simply sent again; after it, the partial answer is continued on a
    deployment that can (see above)."""

    __slots__ = ("_cuts", "_fo", "_plan", "_req", "_runner", "_tokens")

    def __init__(self, runner: Opener, fo: Failover, req: CanonicalRequest,
                 plan: Plan) -> None:
        self._runner = runner
        self._fo = fo
        self._req = req
        self._plan = plan
        self._cuts: list[CutSegment] = []
        self._tokens = 0

    async def resume(self, failure: UpstreamFailure, stream: UpstreamStream
                     ) -> tuple[Segment, Splice, AttemptRecord | None] | None:
        fo = self._fo
        broken = stream.segment.attempt.deployment
        whole = read_partial(stream.seen or [])
        record = stream.record
        if record is None:
            record = AttemptRecord(broken, "cut")
            stream.history = [record]
        record.outcome = "cut"
        self._cuts.append(CutSegment(record, self._tokens, whole.tokens - self._tokens))
        self._tokens = whole.tokens
        if whole.finished:
            return None  # only the usage chunk or [DONE] was lost: the answer is whole
        continuing = bool(whole.text) or whole.tool_calls or whole.more_choices
        if continuing:
            why = None if fo.continuation else "continuation is switched off"
            why = why or not_continuable(self._req, whole)
            if why is not None:
                fo.counters.continuation_failures_total += 1
                raise _cannot(failure, why)
        runner = self._runner

        async def continue_on(r: CanonicalRequest, dep: Deployment, probe: bool) -> Segment:
            strip = dep.capabilities.prefill_trims_whitespace
            return await runner.open(continuation_request(r, whole, prefill_strip=strip), dep,
                                     probe)

        run: Run[Segment] = Run(fo, self._req, self._plan, tried=(broken.id,), annotate=False)
        try:
            if continuing:
                seg = await run.drive(continue_on, only=_can_continue, retry_first=True)
            else:
                seg = await run.drive(runner.open, retry_first=True)
        except UpstreamFailure as err:
            fo.counters.continuation_failures_total += 1
            raise _cannot(failure, f"no deployment could take it over ({err.message})") from None
        fo.counters.continuations_total += 1
        assert stream.history is not None
        stream.history.extend(run.history)
        trimmed = seg.attempt.deployment.capabilities.prefill_trims_whitespace
        skip_ws = whole.text[len(whole.text.rstrip()):] if trimmed else ""
        return seg, Splice(whole, self._cuts, skip_ws), run.winner


def _cannot(failure: UpstreamFailure, why: str) -> UpstreamFailure:
    return UpstreamFailure(failure.kind,
                           f"{failure.message}; the stream could not be continued: {why}",
                           status=failure.status)


def _can_continue(dep: Deployment) -> bool:
    return dep.can_continue


class Opener(Protocol):
    async def open(self, req: CanonicalRequest, dep: Deployment, probe: bool = False
                   ) -> Segment: ...
