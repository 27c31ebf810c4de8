"""GET /v1/models: the public models the caller's key may use, in OpenAI's list shape."""

from __future__ import annotations

import time

import orjson

from gateway.errors import GatewayError
from gateway.http.asgi import (
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
from gateway.services import Services


class ModelsEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        try:
            principal = await self.services.authenticator.authenticate(
                header(scope, b"authorization"), client=client_address(scope))
        except GatewayError as err:
            await send_error(send, OPENAI, err, rid)
            return
        models = self.services.registry.models
        body = orjson.dumps({
            "object": "list",
            "data": [{"id": name, "object": "model", "created": self.created,
                      "owned_by": "turnout"} for name in models if principal.may_use(name)],
        })
        await send_response(send, 200, body, [(b"x-request-id", rid.encode())])
