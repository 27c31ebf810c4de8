"""The Responses API's endpoints and its stored responses.

POST /v1/responses runs the pipeline like every LLM endpoint, with a format of its own per
request (responses_format.py) and one step after parsing: the conversation of
`previous_response_id` is loaded from the store and put before the request's own items.
A finished response (completed or incomplete) is stored, unless `store: false`, before
its last bytes go out: a client that continues it at once, on any replica, finds it.

Stored responses are per team (`layout.response`: under the team's hash tag, so a key of
another team cannot read them) and expire after `responses.store_ttl_s`. Each holds the
response and its conversation's input items (the previous responses' included), so
continuing one is one store read, whatever the conversation's length.

    GET /v1/responses/{id}               the response
    DELETE /v1/responses/{id}            {"id", "object": "response", "deleted": true}
    GET /v1/responses/{id}/input_items   its input items (`limit`, `order`, `after`)
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.canonical import CanonicalRequest
from gateway.errors import GatewayError, bad_request
from gateway.http.asgi import (
    Message,
    PublicNames,
    Receive,
    Scope,
    Send,
    client_address,
    header,
    request_id,
    send_response,
)
from gateway.http.client_format import send_error
from gateway.http.openai_format import OPENAI
from gateway.http.responses_format import ResponsesFormat
from gateway.http.responses_schema import history
from gateway.services import Services
from gateway.store import Store, StoreUnavailable, layout
from policies.keys import Principal

log = logging.getLogger("turnout.responses")

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _unavailable() -> GatewayError:
    return GatewayError(503, "the store of responses is unavailable; try again",
                        type="server_error", code="store_unavailable")


def _not_found(response_id: str, param: str | None = None) -> GatewayError:
    shown = response_id[:128]
    return GatewayError(404, f"Response with id '{shown}' not found.", code="not_found",
                        param=param)


class StoredResponses:
    def __init__(self, services: Services, ttl_s: float) -> None:
        self._services = services  # its store exists once the app has started
        self.ttl_s = ttl_s

    @property
    def store(self) -> Store:
        return self._services.store

    async def get(self, team: str, response_id: str) -> dict[str, Any] | None:
        if not _ID.match(response_id):
            return None
        try:
            raw = await self.store.get(layout.response(team, response_id))
        except StoreUnavailable:
            raise _unavailable() from None
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def put(self, team: str, response: dict[str, Any],
                  conversation: list[dict[str, Any]]) -> None:
        record = orjson.dumps({"response": response, "input": conversation})
        await self.store.set(layout.response(team, response["id"]), record, ttl_s=self.ttl_s)

    async def delete(self, team: str, response_id: str) -> bool:
        """True when it existed."""
        if await self.get(team, response_id) is None:
            return False
        try:
            await self.store.delete(layout.response(team, response_id))
        except StoreUnavailable:
            raise _unavailable() from None
        return True


class ResponsesEndpoint:
    """POST /v1/responses."""

    def __init__(self, services: Services, stored: StoredResponses,
                 public: PublicNames | None = None) -> None:
        self.services = services
        self.stored = stored
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.public is not None:
            send = self.public.wrap(send)
        fmt = ResponsesFormat()
        team: list[str] = []  # set once authenticated

        async def prepare(principal: Principal, req: CanonicalRequest) -> None:
            team.append(principal.team)
            assert fmt.echo is not None
            previous = fmt.echo.src.get("previous_response_id")
            if previous:
                stored = await self.stored.get(principal.team, previous)
                if stored is None:
                    raise _not_found(previous, "previous_response_id")
                fmt.expand(req, history(stored))

        async def storing(message: Message) -> None:
            if (fmt.final is not None and message["type"] == "http.response.body"
                    and not message.get("more_body")):
                final, fmt.final = fmt.final, None
                if fmt.stored and team:
                    await self._store(team[0], final, fmt.conversation)
            await send(message)

        await self.services.pipeline.serve(scope, receive, storing, "chat", fmt, prepare)

    async def _store(self, team: str, final: dict[str, Any],
                     conversation: list[dict[str, Any]]) -> None:
        try:
            await self.stored.put(team, final, conversation)
        except StoreUnavailable as err:  # the answer still goes out; it cannot be continued
            log.warning("response %s not stored (store unavailable: %s)", final["id"], err)


class StoredResponseEndpoint:
    """GET and DELETE /v1/responses/{response_id}, GET .../input_items."""

    def __init__(self, services: Services, stored: StoredResponses, items: bool = False) -> None:
        self.services = services
        self.stored = stored
        self.items = items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        try:
            principal = await self.services.authenticator.authenticate(
                header(scope, b"authorization"), client=client_address(scope))
            response_id = str(scope["path_params"]["response_id"])
            body = await self._answer(principal.team, response_id, scope)
        except GatewayError as err:
            await send_error(send, OPENAI, err, rid)
            return
        await send_response(send, 200, orjson.dumps(body), [(b"x-request-id", rid.encode())])

    async def _answer(self, team: str, response_id: str, scope: Scope) -> dict[str, Any]:
        if scope["method"] == "DELETE":
            if not await self.stored.delete(team, response_id):
                raise _not_found(response_id)
            return {"id": response_id, "object": "response", "deleted": True}
        stored = await self.stored.get(team, response_id)
        if stored is None:
            raise _not_found(response_id)
        if not self.items:
            response: dict[str, Any] = stored["response"]
            return response
        return page(stored.get("input") or [], parse_qs(scope.get("query_string", b"").decode()))


def page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    """A list page of input items, as OpenAI's list endpoints page: `order` (desc by
    default: newest first), `after` an item id, `limit` 1-100 (default 20)."""
    order = (query.get("order") or ["desc"])[-1]
    if order not in ("asc", "desc"):
        raise bad_request("`order` must be 'asc' or 'desc'", param="order")
    limit_text = (query.get("limit") or ["20"])[-1]
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise bad_request("`limit` must be an integer between 1 and 100", param="limit")
    ordered = items if order == "asc" else items[::-1]
    after = query["after"][-1] if query.get("after") else None
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise bad_request(f"`after`: no input item {after[:128]!r}", param="after")
        ordered = ordered[ids.index(after) + 1:]
    data = ordered[:int(limit_text)]
    return {"object": "list", "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": len(ordered) > len(data)}
