"""The Files and Batch APIs, in OpenAI's shapes (the official SDK's `client.files` and
`client.batches`), for the caller's team only:

    POST /v1/files  GET /v1/files  GET|DELETE /v1/files/{id}  GET /v1/files/{id}/content
    POST /v1/batches  GET /v1/batches  GET /v1/batches/{id}  POST /v1/batches/{id}/cancel

Errors in OpenAI's error shape; a progress summary of a batch in `x-turnout-batch-*`
headers of its GET."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.batch.system import BatchSystem
from gateway.errors import GatewayError, bad_request
from gateway.http.asgi import (
    Headers,
    Receive,
    Scope,
    Send,
    client_address,
    header,
    read_body,
    request_id,
    send_response,
)
from gateway.http.client_format import send_error
from gateway.http.openai_format import OPENAI
from gateway.services import Services
from policies.keys import Principal

_MAX_JSON = 1 << 20  # a batch creation's body
Handler = Callable[[Principal, Scope, Receive, Send, list[str]], Awaitable[None]]


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode(
        "latin-1")).items()}


def _limit(q: dict[str, str], most: int = 100) -> int:
    raw = q.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"`limit` must be an integer from 1 to {most}", param="limit")
    return int(raw)


async def _json(send: Send, status: int, obj: Any, headers: Headers | None = None) -> None:
    await send_response(send, status, orjson.dumps(obj), headers or [])


class BatchAPI:
    """One ASGI app for both APIs (routed at /v1/files… and /v1/batches…)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.routes: dict[tuple[str, str, int], Handler] = {
            ("files", "POST", 0): self._upload, ("files", "GET", 0): self._list_files,
            ("files", "GET", 1): self._get_file, ("files", "DELETE", 1): self._delete_file,
            ("files", "GET", 2): self._content, ("batches", "POST", 0): self._create,
            ("batches", "GET", 0): self._list_batches, ("batches", "GET", 1): self._get_batch,
            ("batches", "POST", 2): self._cancel,
        }

    @property
    def system(self) -> BatchSystem:
        batch = self.services.batch
        assert batch is not None  # routed only when the config serves it
        return batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        parts = scope["path"].strip("/").split("/")[1:]  # ["files", id, "content"]
        try:
            handler = self._route(scope["method"], parts)
            principal = await self.services.authenticator.authenticate(
                header(scope, b"authorization"), client=client_address(scope))
            await handler(principal, scope, receive, send, parts[1:2])
        except GatewayError as err:
            await send_error(send, OPENAI, err, rid)

    def _route(self, method: str, parts: list[str]) -> Handler:
        tail = parts[2:]
        if len(parts) > 3 or (tail and tail != [{"files": "content", "batches": "cancel"}[
                parts[0]]]) or (len(parts) > 1 and not parts[1]):
            raise GatewayError(404, f"no route for /v1/{'/'.join(parts)[:200]}",
                               code="not_found")
        handler = self.routes.get((parts[0], "GET" if method == "HEAD" else method,
                                   len(parts) - 1))
        if handler is None:
            raise GatewayError(405, f"method {method} is not allowed here")
        return handler

    # -- files ----------------------------------------------------------------------------

    async def _upload(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                      ids: list[str]) -> None:
        record = await self.system.files.upload(p.team, receive,
                                                header(scope, b"content-type"))
        await _json(send, 200, {k: v for k, v in record.items() if k != "lines"})

    async def _list_files(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                          ids: list[str]) -> None:
        q = _query(scope)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("`order` must be asc or desc", param="order")
        await _json(send, 200, await self.system.files.listing(
            p.team, purpose=q.get("purpose"), limit=_limit(q, 10_000), after=q.get("after"),
            ascending=order == "asc"))

    async def _get_file(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                        ids: list[str]) -> None:
        record = await self.system.files.get(p.team, ids[0])
        await _json(send, 200, {k: v for k, v in record.items() if k != "lines"})

    async def _delete_file(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                           ids: list[str]) -> None:
        await _json(send, 200, await self.system.files.delete(p.team, ids[0]))

    async def _content(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                       ids: list[str]) -> None:
        files = self.system.files
        record = await files.get(p.team, ids[0])
        chunks: AsyncIterator[bytes] = await files.content(p.team, ids[0])
        try:
            first = await anext(chunks, b"")
        except FileNotFoundError:
            raise GatewayError(404, "the file's content is gone", code="file_not_found",
                               param="file_id") from None
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(record["bytes"]).encode())]})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # -- batches --------------------------------------------------------------------------

    async def _create(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                      ids: list[str]) -> None:
        raw = await read_body(receive, _MAX_JSON, header(scope, b"content-length"))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request("the body is not valid JSON") from None
        await _json(send, 200, await self.system.batches.create(p, body))

    async def _list_batches(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                            ids: list[str]) -> None:
        q = _query(scope)
        await _json(send, 200, await self.system.batches.listing(p.team, q.get("after"),
                                                                 _limit(q)))

    async def _get_batch(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                         ids: list[str]) -> None:
        batch = await self.system.batches.get(p.team, ids[0])
        counts = batch["request_counts"]
        headers = [(b"x-turnout-batch-" + k.encode(), str(v).encode()) for k, v in (
            ("status", batch["status"]), ("total", counts["total"]),
            ("completed", counts["completed"]), ("failed", counts["failed"]),
            ("pending", counts["total"] - counts["completed"] - counts["failed"]))]
        await _json(send, 200, batch, headers)

    async def _cancel(self, p: Principal, scope: Scope, receive: Receive, send: Send,
                      ids: list[str]) -> None:
        await _json(send, 200, await self.system.batches.cancel(p.team, ids[0]))
