"""One batch line through the lane's pipeline: its request built from the line (its id
derived from the batch and custom_id, the lowest priority, no latency target), answered
through a `send` that collects the status and body (no HTTP), and what becomes of it: a
result for the output or error file, or the line given back to run again later (refused
for now: rate limits, shedding, an upstream outage).

A line is parsed and answered in its endpoint's client format: OpenAI's, or for
/v1/responses the Responses API's own (`ResponsesFormat`, as POST /v1/responses uses it),
so its output line's body is a Response object. Lines are stateless: a Responses line may
neither continue a stored response (`previous_response_id`) nor be stored (`store: true`);
without `store` it is not stored and says so (`"store": false`). Storing would leave a
response for every run of a line that runs twice (a crash, a lapsed lease) where the
output file names one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.batch import lines
from gateway.batch.lane_pipeline import HeldSettlements
from gateway.batch.settings import BatchConfig
from gateway.errors import GatewayError
from gateway.http.asgi import Message
from gateway.http.client_format import ClientFormat
from gateway.http.openai_format import OPENAI
from gateway.http.responses_format import ResponsesFormat
from gateway.pipeline import Pipeline
from gateway.store.batch_base import LineEnd
from policies.keys import Principal

# A line has no latency target: with one this loose, slo-cost routes it to the cheapest
# deployment (the self-hosted pool) and never sheds it for a slow prediction.
NO_SLO_MS = 24 * 3600 * 1000.0
_LATER = {"rate_limit_exceeded", "overloaded"}  # refused for now: not the line's fault
_UPSTREAM = {500, 502, 503, 504}  # an outage: tried again, up to max_line_attempts


@dataclass(slots=True)
class Verdict:
    result: bytes = b""  # empty: give the line back
    failed: bool = False
    status: int = 0
    hold_s: float = 0.0  # how long its batch should wait before taking more lines
    counted: bool = False  # an upstream failure: counts against max_line_attempts


@dataclass(slots=True)
class _Collected:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message.get("headers", ()))
        else:
            self.body.append(message.get("body", b""))


def _line_format(endpoint: str) -> ClientFormat:
    # A ResponsesFormat holds its request's echo and response id: one per line.
    return ResponsesFormat() if endpoint == lines.RESPONSES else OPENAI


def _unsupported(endpoint: str, body: dict[str, Any]) -> GatewayError | None:
    """Why a line asks what a batch does not do (the module's docstring), or None."""
    if body.get("stream"):
        return GatewayError(400, "`stream` is not supported in a batch", param="stream")
    if endpoint != lines.RESPONSES:
        return None
    # Truthy, as POST /v1/responses reads it: an empty id continues nothing.
    if body.get("previous_response_id"):
        return GatewayError(400, "`previous_response_id` is not supported in a batch: each"
                            " line is answered on its own, with no stored conversation",
                            param="previous_response_id")
    if body.get("store") is True:
        return GatewayError(400, "`store: true` is not supported in a batch: the responses"
                            " of batch lines are not stored", param="store")
    return None


def _code(body: bytes) -> str | None:
    try:
        err: Any = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return err.get("code") if isinstance(err, dict) else None


class LineRunner:
    def __init__(self, pipeline: Pipeline, held: HeldSettlements, cfg: BatchConfig) -> None:
        self.pipeline = pipeline
        self.held = held
        self.cfg = cfg

    async def run(self, batch_id: str, endpoint: str, line: lines.Line,
                  principal: Principal, *, held: LineEnd, model: str | None = None,
                  last_try: bool = False) -> Verdict:
        """`endpoint`: the batch's, one of lines.ENDPOINTS; `held`: gets the attempt's
        settlement, even when the line is cancelled on the way; `model`: run it on this
        model instead (spilled); `last_try`: an upstream failure is its result, not a
        reason to try again."""
        rid = lines.request_id(batch_id, line.custom_id)
        op, fmt = lines.ENDPOINTS[endpoint], _line_format(endpoint)
        body = dict(line.body)
        if model is not None:
            body["model"] = model
        unsupported = _unsupported(endpoint, body)
        if unsupported is not None:
            return self._failed(rid, line, unsupported.status, fmt.error_body(unsupported, rid))
        if endpoint == lines.RESPONSES:
            body.setdefault("store", False)  # not stored: the Response it answers says so
        try:
            req = fmt.parse(op, orjson.dumps(body), rid)
        except GatewayError as err:
            return self._failed(rid, line, err.status, fmt.error_body(err, rid))
        req.priority = self.cfg.priority
        req.slo_ttft_ms = NO_SLO_MS
        got = _Collected()
        telemetry = self.pipeline.telemetry
        # The span's path names the batch's endpoint (`/v1/batches/responses`, ...).
        path = "/v1/batches/" + endpoint.removeprefix("/v1/")
        trace = telemetry.begin({"type": "http", "path": path, "headers": []},
                                op) if telemetry is not None else None
        try:
            await self.pipeline.handle(principal, req, fmt, got.send,
                                       arrived=time.monotonic(), trace=trace)
        finally:
            held.settle = self.held.take(rid)
        raw = b"".join(got.body)
        out = self._judge(got, raw, last_try)
        if out.result == b"":
            return out
        out.result = lines.answered(rid, line.custom_id, got.status, raw)
        return out

    @staticmethod
    def _judge(got: _Collected, raw: bytes, last_try: bool) -> Verdict:
        status = got.status
        if 200 <= status < 300:
            return Verdict(b"-", False, status=status)
        if status == 429 and _code(raw) in _LATER:
            retry = got.headers.get(b"retry-after", b"1")
            return Verdict(status=status, hold_s=float(retry) if retry.isdigit() else 1.0)
        if status in _UPSTREAM and not last_try:
            return Verdict(status=status, counted=True)
        return Verdict(b"-", True, status=status)

    @staticmethod
    def _failed(rid: str, line: lines.Line, status: int, body: bytes) -> Verdict:
        return Verdict(lines.answered(rid, line.custom_id, status, body), True, status=status)
