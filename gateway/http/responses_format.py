"""The Responses API client format (POST /v1/responses): one `ResponsesFormat` per request,
since a response's id, its request's echo and its conversation belong to that request.

- `parse`: the body validated into the canonical request (and its native form);
  `expand` adds the conversation of `previous_response_id` once it is loaded;
- `completion_body`: a canonical chat completion → a Response object;
- `stream_encoder`: canonical chunks → the typed Responses events (responses_events.py);
- errors in OpenAI's shape (the Responses API's), in streams as `error` and
  `response.failed` events.

The finished Response (completed or incomplete) is kept in `final` for the stored
responses (responses_api.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.openai_responses import RESPONSES_API
from gateway.canonical import CanonicalRequest, NativeRequest, Operation, Usage, usage_from_json
from gateway.errors import GatewayError, bad_request
from gateway.http import responses_schema as schema
from gateway.http.openai_format import error_body
from gateway.http.responses_events import ResponsesEvents
from gateway.http.responses_objects import Echo, incomplete_reason, output_items, usage_object
from gateway.http.validation import check_fields, parse_json


class ResponsesFormat:
    """One Responses request's format (see the module's docstring)."""

    api_key_header: bytes | None = None

    def __init__(self) -> None:
        self.echo: Echo | None = None
        self.items: list[dict[str, Any]] = []  # the request's own input items
        self.conversation: list[dict[str, Any]] = []  # what the model is given: history + items
        self.final: dict[str, Any] | None = None  # the finished Response, to store

    @property
    def stored(self) -> bool:
        return self.echo is not None and self.echo.src.get("store") is not False

    def parse(self, op: Operation, raw: bytes, request_id: str) -> CanonicalRequest:
        src = parse_json(raw)
        model = src.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("`model` is required and must be a non-empty string",
                                     param="model")
        check_fields(src, schema.FIELDS)
        if src.get("background") is True:
            raise bad_request("background responses are not supported by this gateway",
                                     param="background")
        self.echo = Echo(src)
        self.items = schema.input_items(src.get("input"))
        stream = src.get("stream") is True
        req = CanonicalRequest("chat", model, {}, stream, False, request_id)
        self.expand(req, [])
        return req

    def expand(self, req: CanonicalRequest, history: list[dict[str, Any]]) -> None:
        """Set the request's conversation: `history` (a previous response's), then its own
        input items."""
        assert self.echo is not None
        src = self.echo.src
        self.conversation = [*history, *self.items]
        req.body = schema.chat_body(src, self.conversation)
        req.native = NativeRequest(RESPONSES_API, schema.native_body(src, self.conversation),
                                   req.body)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return error_body(err)

    def completion_body(self, req: CanonicalRequest, body: bytes) -> bytes:
        assert self.echo is not None
        obj = orjson.loads(body)
        choice = (obj.get("choices") or [{}])[0]
        reason = incomplete_reason(choice.get("finish_reason"))
        usage = usage_from_json(obj.get("usage")) or Usage()
        response = self.echo.response("incomplete" if reason else "completed",
                                      output_items(choice.get("message") or {}, bool(reason)),
                                      usage_object(usage), reason)
        response["completed_at"] = int(time.time())
        self.final = response
        return orjson.dumps(response)

    def stream_encoder(self, req: CanonicalRequest) -> ResponsesEvents:
        assert self.echo is not None
        return ResponsesEvents(self.echo, self)
