"""The simulator's HTTP behaviour: `Simulator` and its aiohttp low-level request handler.

Served by `selfhost.sim.serve` with aiohttp handler cancellation on: when a client goes away,
aiohttp cancels the handler wherever it waits (FIFO queue, TTFT, between tokens), which is how
cancellations are detected promptly; the raw transport is at hand to reset connections.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from selfhost.kv_blocks import BlockHasher
from selfhost.sim_content import (
    SSE_DONE,
    BadRequest,
    GenPlan,
    chunk,
    embeddings_body,
    error_body,
    plan_chat,
    plan_completion,
    plan_embeddings,
    role_choice,
    token_choice,
    tokens,
    usage,
    whole_body,
)
from selfhost.sim_exchange import DropNow, Exchange, SseOut, drop_connection
from selfhost.sim_kv import BlockCache, KvPublisher, body_tokens
from selfhost.sim_lora import Adapters
from selfhost.sim_metrics import VllmMetrics
from selfhost.sim_state import (
    FaultAction,
    Faults,
    FifoSlots,
    PrefixCache,
    SimProfile,
    SimStats,
    Timing,
)

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


class Simulator:
    """One simulated vLLM server: configuration, faults, stats and the request handlers.

    A simulator serves on one event loop at a time (`serve`, or `ThreadedSim` for sync code).
    """

    def __init__(
        self,
        profile: str | SimProfile = "instant",
        *,
        model: str = "sim-model",
        strict_model: bool = False,
        max_tokens_default: int = 16,
        embedding_dimensions: int = 16,
        seed: int = 0,
        faults: Faults | None = None,
        kv_blocks: int | None = None,
        block_size: int = 16,
        kv_ports: tuple[int, int] = (0, 0),
        adapters: Adapters | None = None,
    ) -> None:
        """`kv_blocks`: keep a block-level KV cache of that many blocks of `block_size`
        tokens and publish its events as vLLM does (`open_kv`), on `kv_ports` (event and
        replay ports; 0: free ones); `adapters`: serve LoRA adapters as vLLM with
        `--enable-lora` does."""
        self.profile = SimProfile.named(profile) if isinstance(profile, str) else profile
        self.model = model
        self.strict_model = strict_model  # else any model name is served, and echoed back
        self.max_tokens_default = max_tokens_default
        self.embedding_dimensions = embedding_dimensions
        self.faults = faults if faults is not None else Faults()
        self.stats = SimStats()
        self.metrics = VllmMetrics(model)
        self._slots = FifoSlots(self.profile.max_num_seqs, self.stats.set_load)
        self._cache = PrefixCache()
        self.kv_cache = BlockCache(kv_blocks, BlockHasher(block_size)) if kv_blocks else None
        self.kv_publisher: KvPublisher | None = None
        self._kv_ports = kv_ports
        self.adapters = adapters
        # Separate RNGs, so latency draws never shift which requests a fault rate picks.
        self._fault_rng = random.Random(seed)
        self._timing = Timing(self.profile, seed + 1)
        self._created = int(time.time())
        self._inference: dict[str, Callable[[Exchange], Awaitable[web.StreamResponse]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
        }
        self._plain: dict[tuple[str, str], Callable[[web.BaseRequest], Awaitable[web.Response]]]
        self._plain = {
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v1/models"): self._models,
            ("GET", "/sim/stats"): self._get_stats,
            ("GET", "/sim/faults"): self._get_faults,
            ("POST", "/sim/faults"): self._set_faults,
        }
        if adapters is not None and adapters.runtime_updates:
            self._plain[("POST", "/v1/load_lora_adapter")] = self._load_adapter
            self._plain[("POST", "/v1/unload_lora_adapter")] = self._unload_adapter

    async def open_kv(self, host: str = "127.0.0.1") -> None:
        """Start publishing KV events (`kv_publisher.port`, `.replay_port`)."""
        if self.kv_cache is not None and self.kv_publisher is None:
            self.kv_publisher = KvPublisher(host, *self._kv_ports)
            self.kv_publisher.start()

    async def close_kv(self) -> None:
        if self.kv_publisher is not None:
            await self.kv_publisher.close()
            self.kv_publisher = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp low-level request handler."""
        endpoint = self._inference.get(request.path)
        if endpoint is not None and request.method == "POST":
            return await self._track(request, endpoint)
        self.stats.count_path(request.path)
        plain = self._plain.get((request.method, request.path))
        if plain is None:
            message = f"No route for {request.method} {request.path}"
            return _json(error_body(message, "invalid_request_error"), 404)
        return await plain(request)

    # -- inference ---------------------------------------------------------------------------

    async def _track(
        self,
        request: web.BaseRequest,
        endpoint: Callable[[Exchange], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        arrival = time.monotonic()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.stats.begin(request.path, request.headers, body)
        ex = Exchange(request, body, arrival, self.stats)
        try:
            resp = await self._serve(ex, endpoint)
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client leaves
            ex.end_early(aborted=False)
            raise
        ex.finish(resp.status)
        return resp

    async def _serve(
        self,
        ex: Exchange,
        endpoint: Callable[[Exchange], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not isinstance(ex.body, dict):
            message = "The request body must be a JSON object."
            return _json(error_body(message, "invalid_request_error"), 400)
        stream = ex.body.get("stream") is True
        action = self.faults.draw(self._fault_rng, stream)
        if action is not None:
            self.stats.fault(action.label)
            if action.kind != "disconnect" or not stream:
                return await self._inject(ex, action)
            ex.drop_after = action.after_chunks
        try:
            return await endpoint(ex)
        except BadRequest as exc:
            body = error_body(exc.message, "invalid_request_error", exc.param, exc.code)
            return _json(body, exc.status)

    async def _inject(self, ex: Exchange, action: FaultAction) -> web.StreamResponse:
        if action.kind == "status":
            return self._fault_response(action.status)
        if action.kind == "hang":  # until the client leaves: aiohttp then cancels this wait
            await asyncio.Event().wait()
        # Left: reset, or a disconnect fault drawn for a non-stream request.
        ex.end_early(aborted=True)
        drop_connection(ex.request, reset=True)
        return web.Response()  # never reaches the wire: aiohttp ignores the dead transport

    def _fault_response(self, status: int) -> web.Response:
        if status == 429:
            wait = self.faults.retry_after_s
            headers = {
                "Retry-After": str(math.ceil(wait)),
                "retry-after-ms": str(round(wait * 1e3)),
            }
            body = error_body(
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                "rate_limit_exceeded",
            )
            return _json(body, 429, headers)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message = _SERVER_ERRORS.get(status, f"Injected failure (HTTP {status}).")
        return _json(error_body(message, kind), status)

    async def _chat(self, ex: Exchange) -> web.StreamResponse:
        return await self._generate(ex, plan_chat(ex.body, self.model, self.max_tokens_default))

    async def _completions(self, ex: Exchange) -> web.StreamResponse:
        plan = plan_completion(ex.body, self.model, self.max_tokens_default)
        return await self._generate(ex, plan)

    async def _embeddings(self, ex: Exchange) -> web.StreamResponse:
        plan = plan_embeddings(ex.body, self.model, self.embedding_dimensions)
        self._check_model(plan.model)
        await self._slots.acquire()
        try:
            await _sleep(self._timing.ttft(plan.prompt_tokens, self.faults.extra_ttft_ms))
        finally:
            self._slots.release()
        self.metrics.prompt_tokens += plan.prompt_tokens
        self.metrics.e2e.observe(time.monotonic() - ex.arrival)
        self.metrics.success["stop"] += 1
        return _json(embeddings_body(plan))

    def _check_model(self, model: str) -> None:
        known = model == self.model or (self.adapters is not None and model in self.adapters)
        if (self.strict_model or self.adapters is not None) and not known:
            raise BadRequest(
                f"The model `{model}` does not exist.", "model", status=404, code="model_not_found"
            )

    def _cached_tokens(self, ex: Exchange, plan: GenPlan) -> int:
        """Prompt tokens the prefix cache holds (block by block, with events, when the
        simulator keeps a KV cache); the prompt is cached for the next request."""
        kv = self.kv_cache
        tokens = body_tokens(ex.body, chat=plan.chat) if kv is not None else None
        if kv is None or tokens is None:
            return self._cache.lookup_insert(plan.prefixes)
        lora = self.adapters.key(plan.model) if self.adapters is not None else None
        cached = kv.lookup_insert(tokens, lora)
        events = kv.drain()
        if self.kv_publisher is not None:
            self.kv_publisher.publish(events)
        return cached

    async def _generate(self, ex: Exchange, plan: GenPlan) -> web.StreamResponse:
        self._check_model(plan.model)
        resp = web.StreamResponse(headers=_SSE_HEADERS) if plan.stream else None
        try:
            await self._slots.acquire()
            if self.adapters is not None:
                self.adapters.begin(plan.model)
            try:
                cached = self._cached_tokens(ex, plan)
                self.metrics.prefix_queries += plan.prompt_tokens
                self.metrics.prefix_hits += cached
                ttft = self._timing.ttft(plan.prompt_tokens - cached, self.faults.extra_ttft_ms)
                if resp is None:
                    return await self._whole(ex, plan, cached, ttft)
                await self._stream(ex, plan, resp, cached, ttft)
                return resp
            finally:
                if self.adapters is not None:
                    self.adapters.end(plan.model)
                self._slots.release()
        except asyncio.CancelledError:
            if ex.end_early(aborted=False):
                self.metrics.success["abort"] += 1
            raise
        except ConnectionError:  # a stream write found the client gone
            if ex.end_early(aborted=False):
                self.metrics.success["abort"] += 1
            assert resp is not None
            return resp  # aiohttp's own write_eof then fails quietly

    async def _whole(self, ex: Exchange, plan: GenPlan, cached: int, ttft: float) -> web.Response:
        itls = self._timing.itls(plan.max_new - 1)
        queued = time.monotonic() - ex.arrival
        await _sleep(ttft + sum(itls))
        body = whole_body(plan, _id(plan), int(time.time()), cached)
        self._record(plan, queued + ttft, itls, time.monotonic() - ex.arrival)
        return _json(body)

    async def _stream(
        self, ex: Exchange, plan: GenPlan, resp: web.StreamResponse, cached: int, ttft: float
    ) -> None:
        rid, created = _id(plan), int(time.time())
        out = SseOut(ex.request, resp, ex.drop_after)
        walks = [tokens(seed, plan.skip, plan.max_new) for seed in plan.seeds]
        itls = self._timing.itls(plan.max_new - 1)
        due, stamps = time.monotonic() + ttft, []
        try:
            for step in range(plan.max_new):
                due += itls[step - 1] if step else 0.0
                if due > time.monotonic():
                    await out.flush()
                    await asyncio.sleep(due - time.monotonic())
                stamps.append(time.monotonic())
                self._emit_step(out, plan, rid, created, walks, step, cached)
            if plan.include_usage:
                final = usage(plan.prompt_tokens, plan.max_new * len(walks), cached)
                out.add(chunk(plan, rid, created, [], final))
            out.add(SSE_DONE)
        except DropNow:
            await out.flush(headers=True)
            ex.end_early(aborted=True)
            drop_connection(ex.request, reset=False)  # FIN, so the k events surely arrive
            self.metrics.success["abort"] += 1
            return
        # Counted before [DONE] leaves, so a client that has read [DONE] sees it in the stats.
        ex.finish(200)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        self._record(plan, stamps[0] - ex.arrival, gaps, time.monotonic() - ex.arrival)
        await out.flush()
        await resp.write_eof()

    def _emit_step(
        self,
        out: SseOut,
        plan: GenPlan,
        rid: str,
        created: int,
        walks: list[list[str]],
        step: int,
        cached: int,
    ) -> None:
        finish = plan.finish_reason if step == plan.max_new - 1 else None
        so_far = None
        if plan.continuous_usage:
            so_far = usage(plan.prompt_tokens, (step + 1) * len(walks), cached)
        if plan.chat and step == 0:  # vLLM: a role-only chunk per choice opens the stream
            start = usage(plan.prompt_tokens, 0, cached) if so_far else None
            for i in range(len(walks)):
                out.add(chunk(plan, rid, created, [role_choice(i)], start))
        for i, walk in enumerate(walks):
            out.add(chunk(plan, rid, created, [token_choice(plan, i, walk[step], finish)], so_far))

    def _record(self, plan: GenPlan, ttft: float, itls: list[float], e2e: float) -> None:
        m = self.metrics
        m.prompt_tokens += plan.prompt_tokens
        m.generation_tokens += plan.max_new * len(plan.seeds)
        m.ttft.observe(ttft)
        for gap in itls:
            m.itl.observe(gap)
        m.e2e.observe(e2e)
        m.success[plan.finish_reason] += 1

    # -- plain endpoints -----------------------------------------------------------------------

    async def _health(self, request: web.BaseRequest) -> web.Response:
        return web.Response(status=503 if self.faults.unhealthy else 200)

    async def _metrics(self, request: web.BaseRequest) -> web.Response:
        running, waiting = self._slots.running, self._slots.waiting
        kv = self.kv_cache
        usage = (len(kv) / kv.capacity if kv is not None
                 else running / self.profile.max_num_seqs)
        text = self.metrics.render(running, waiting, usage)
        if self.adapters is not None:
            text += self.adapters.metric(waiting=())
        return web.Response(body=text, headers={"Content-Type": _METRICS_TYPE})

    async def _models(self, request: web.BaseRequest) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": self._created,
            "owned_by": "turnout-sim",
            "root": self.model,
            "parent": None,
        }
        cards = [card]
        if self.adapters is not None:
            cards += [{**card, "id": name, "root": path, "parent": self.model}
                      for name, path in self.adapters.loaded.items()]
        return _json({"object": "list", "data": cards})

    async def _load_adapter(self, request: web.BaseRequest) -> web.Response:
        assert self.adapters is not None
        status, message = self.adapters.load_request(await request.read())
        return web.Response(status=status, text=message)

    async def _unload_adapter(self, request: web.BaseRequest) -> web.Response:
        assert self.adapters is not None
        status, message = self.adapters.unload_request(await request.read())
        return web.Response(status=status, text=message)

    async def _get_stats(self, request: web.BaseRequest) -> web.Response:
        return _json(self.stats.as_dict())

    async def _get_faults(self, request: web.BaseRequest) -> web.Response:
        return _json(self.faults.to_dict())

    async def _set_faults(self, request: web.BaseRequest) -> web.Response:
        """Replace the faults: fields left out of the body return to their defaults."""
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            self.faults = Faults.from_dict(data)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            return _json(error_body(str(exc), "invalid_request_error"), 400)
        return _json(self.faults.to_dict())


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, headers={**_JSON_HEADERS, **(headers or {})})


def _id(plan: GenPlan) -> str:
    return ("chatcmpl-" if plan.chat else "cmpl-") + uuid.uuid4().hex


async def _sleep(seconds: float) -> None:
    if seconds > 0:  # the instant profile never yields to the loop for time
        await asyncio.sleep(seconds)
