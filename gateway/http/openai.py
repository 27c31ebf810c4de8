"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. Errors in OpenAI's shape with OpenAI's status codes."""

from __future__ import annotations

import logging
import os
import time

import orjson

from gateway.canonical import CanonicalRequest, Operation, UpstreamFailure
from gateway.dispatch import UpstreamStream
from gateway.errors import GatewayError, from_upstream
from gateway.http.asgi import (
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    header,
    read_body,
    send_response,
)
from gateway.http.openai_schema import canonical, error_body
from gateway.services import Services
from gateway.sse import encode
from policies.routing.base import Plan

log = logging.getLogger("turnout.http")

_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies in front not to buffer
]
_DONE = b"data: [DONE]\n\n"


def request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isascii():
        return given.decode()
    return os.urandom(12).hex()


async def send_error(send: Send, err: GatewayError, rid: str) -> None:
    headers = [(b"x-request-id", rid.encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send_response(send, err.status, error_body(err), headers)


def _route_headers(rid: str, deployment_id: str, plan: Plan) -> Headers:
    return [
        (b"x-request-id", rid.encode()),
        (b"x-turnout-deployment", deployment_id.encode()),
        (b"x-turnout-route", f"{plan.policy}; {plan.reason}".encode()),
    ]


class OpenAIEndpoint:
    """One POST endpoint (raw ASGI: no per-request framework objects on the hot path)."""

    def __init__(self, op: Operation, services: Services) -> None:
        self.op = op
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        try:
            raw = await read_body(scope, receive, self.services.max_body)
            req = canonical(self.op, raw, rid)
            plan = self.services.pipeline.plan(req)
        except GatewayError as err:
            await send_error(send, err, rid)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        work = (self._stream if req.stream else self._complete)(req, plan, tracked)
        try:
            await cancel_on_disconnect(receive, work)
        except Exception:
            # A bug of ours: log it with the traceback, tell the client only that it happened.
            log.exception("unhandled error serving request %s", rid)
            if not started:
                await send_error(send, GatewayError(500, f"internal error (request {rid})",
                                                    type="server_error"), rid)

    async def _complete(self, req: CanonicalRequest, plan: Plan, send: Send) -> None:
        try:
            done = await self.services.pipeline.complete(req, plan)
        except UpstreamFailure as failure:
            await send_error(send, from_upstream(failure, plan.candidates[0].id), req.request_id)
            return
        await send_response(send, 200, done.body,
                            _route_headers(req.request_id, done.deployment.id, plan))

    async def _stream(self, req: CanonicalRequest, plan: Plan, send: Send) -> None:
        try:
            stream = await self.services.pipeline.open_stream(req, plan)
        except UpstreamFailure as failure:
            await send_error(send, from_upstream(failure, plan.candidates[0].id), req.request_id)
            return
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": _SSE_HEADERS + _route_headers(req.request_id, stream.deployment.id,
                                                         plan),
            })
            await self._relay(stream, send)
        finally:
            await stream.aclose()

    @staticmethod
    async def _relay(stream: UpstreamStream, send: Send) -> None:
        try:
            async for chunk in stream.chunks():
                if chunk.data:
                    await send({"type": "http.response.body", "body": encode(chunk.data),
                                "more_body": True})
        except UpstreamFailure as failure:
            # The 200 is already sent: end with an error event, which the SDKs raise on.
            err = from_upstream(failure, stream.deployment.id)
            await send({"type": "http.response.body", "body": encode(error_body(err))})
            return
        await send({"type": "http.response.body", "body": _DONE})


class ModelsEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = orjson.dumps({
            "object": "list",
            "data": [{"id": name, "object": "model", "created": self.created,
                      "owned_by": "turnout"}
                     for name in self.services.pipeline.registry.models],
        })
        await send_response(send, 200, body, [(b"x-request-id", request_id(scope).encode())])
