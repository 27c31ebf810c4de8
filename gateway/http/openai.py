"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. Errors in OpenAI's shape with OpenAI's status codes."""

from __future__ import annotations

import logging
import os
import time

import orjson

from gateway.canonical import Operation, UpstreamFailure
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
from gateway.metering import Ticket, text_chars
from gateway.routing import apply_request_headers
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


async def send_error(send: Send, err: GatewayError, rid: str,
                     extra: Headers | None = None) -> None:
    headers = [(b"x-request-id", rid.encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    headers += extra or []
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
        pipeline = self.services.pipeline
        try:
            principal = await pipeline.authenticate(header(scope, b"authorization"))
            raw = await read_body(scope, receive, self.services.max_body)
            req = canonical(self.op, raw, rid)
            apply_request_headers(req, header(scope, b"x-turnout-slo-ttft-ms"),
                                  header(scope, b"x-turnout-priority"))
            ticket, plan = await pipeline.admit(principal, req)
        except GatewayError as err:
            await send_error(send, err, rid)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        work = (self._stream if req.stream else self._complete)(ticket, plan, tracked)
        try:
            await cancel_on_disconnect(receive, work)
        except Exception:
            # A bug of ours: log it with the traceback, tell the client only that it happened.
            log.exception("unhandled error serving request %s", rid)
            ticket.status = 500
            if not started:
                await send_error(send, GatewayError(500, f"internal error (request {rid})",
                                                    type="server_error"), rid, ticket.headers)
        finally:
            pipeline.settle(ticket)  # exactly once, whatever happened (0 left: client gone)

    async def _failed(self, send: Send, ticket: Ticket, failure: UpstreamFailure,
                      plan: Plan) -> None:
        err = from_upstream(failure, plan.candidates[0].id)
        ticket.status = err.status
        await send_error(send, err, ticket.req.request_id, ticket.headers)

    async def _complete(self, ticket: Ticket, plan: Plan, send: Send) -> None:
        req = ticket.req
        try:
            done = await self.services.pipeline.complete(req, plan)
        except UpstreamFailure as failure:
            await self._failed(send, ticket, failure, plan)
            return
        ticket.deployment, ticket.usage, ticket.body = done.deployment, done.usage, done.body
        ticket.status = 200
        await send_response(send, 200, done.body,
                            _route_headers(req.request_id, done.deployment.id, plan)
                            + ticket.headers)

    async def _stream(self, ticket: Ticket, plan: Plan, send: Send) -> None:
        req = ticket.req
        try:
            stream = await self.services.pipeline.open_stream(req, plan)
        except UpstreamFailure as failure:
            await self._failed(send, ticket, failure, plan)
            return
        ticket.deployment = stream.deployment
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": _SSE_HEADERS + _route_headers(req.request_id, stream.deployment.id,
                                                         plan) + ticket.headers,
            })
            ticket.first_byte = time.monotonic()
            await self._relay(stream, send, ticket)
        finally:
            ticket.usage = stream.usage
            await stream.aclose()

    @staticmethod
    async def _relay(stream: UpstreamStream, send: Send, ticket: Ticket) -> None:
        try:
            async for chunk in stream.chunks():
                if chunk.data:
                    ticket.streamed_chars += text_chars(chunk.data)
                    await send({"type": "http.response.body", "body": encode(chunk.data),
                                "more_body": True})
        except UpstreamFailure as failure:
            # The 200 is already sent: end with an error event, which the SDKs raise on.
            err = from_upstream(failure, stream.deployment.id)
            ticket.status = err.status
            await send({"type": "http.response.body", "body": encode(error_body(err))})
            return
        ticket.status = 200
        await send({"type": "http.response.body", "body": _DONE})


class ModelsEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        pipeline = self.services.pipeline
        try:
            principal = await pipeline.authenticate(header(scope, b"authorization"))
        except GatewayError as err:
            await send_error(send, err, rid)
            return
        body = orjson.dumps({
            "object": "list",
            "data": [{"id": name, "object": "model", "created": self.created,
                      "owned_by": "turnout"} for name in pipeline.models(principal)],
        })
        await send_response(send, 200, body, [(b"x-request-id", rid.encode())])
