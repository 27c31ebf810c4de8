"""GET /openapi.json: the client and admin API as an OpenAPI 3.1 document, built from the
same rules that validate requests (`validation.Rule` tables and the schemas beside the
required-field checks of each client format; the config's pydantic models for the admin
API), so what is published cannot drift from what is enforced.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from pydantic import BaseModel

from gateway.batch.openapi_paths import openapi_paths
from gateway.config import Config
from gateway.config.accounts import TeamConfig
from gateway.http import anthropic_schema, openai_format, responses_schema
from gateway.http.admin import NewKey
from gateway.http.asgi import Receive, Scope, Send, send_response
from gateway.http.validation import JsonSchema, Rules, properties

_ERROR: JsonSchema = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                     "param": {"type": ["string", "null"]},
                                     "code": {"type": ["string", "null"]}}}}}
_JSON = "application/json"


def _version() -> str:
    try:
        return version("turnout")
    except PackageNotFoundError:  # run from a source tree without installing it
        return "0"


def _body(required: dict[str, JsonSchema], rules: Rules) -> JsonSchema:
    return {"type": "object", "required": list(required),
            "properties": {**required, **properties(rules)}}


def _llm(summary: str, body: JsonSchema, security: str = "bearer") -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    if security != "bearer":  # either header (Anthropic's SDKs send x-api-key)
        secured.append({security: []})
    return {"post": {
        "summary": summary, "security": secured,
        "requestBody": {"required": True, "content": {_JSON: {"schema": body}}},
        "responses": {
            "200": {"description": "the answer, or with `stream: true` a server-sent event "
                                   "stream", "content": {_JSON: {"schema": {"type": "object"}},
                                                         "text/event-stream": {}}},
            "default": {"description": "an error, in the format's own shape",
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}},
        }}}


def _get(summary: str, secured: bool = True, query: list[dict[str, Any]] | None = None,
         content: str = _JSON) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {content: {}}},
        "default": {"description": "an error",
                    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    if secured:
        op["security"] = [{"bearer": []}]
    if query:
        op["parameters"] = query
    return op


def _param(name: str, where: str, schema: JsonSchema, required: bool = False
           ) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema}


def _model_schema(model: type[BaseModel], defs: dict[str, JsonSchema], *,
                  patch: bool = False) -> JsonSchema:
    """A pydantic model's JSON Schema, its nested models moved to components; `patch`:
    every field optional (the admin API merges what is given into what is there)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    if patch:
        schema.pop("required", None)
    return schema


def document(cfg: Config) -> dict[str, Any]:
    models = sorted(cfg.models)
    model: JsonSchema = {"type": "string", "minLength": 1, "examples": models[:1]}
    name = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
    defs: dict[str, JsonSchema] = {"Error": _ERROR}
    team = _model_schema(TeamConfig, defs, patch=True)
    team["properties"].pop("name", None)  # the path names the team
    key = _model_schema(NewKey, defs)
    day = {"type": "string", "format": "date"}
    fmt = {"enum": ["json", "jsonl", "csv"]}
    team_q = _param("team", "query", name)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Turnout", "version": _version(),
                 "description": "An LLM inference gateway: OpenAI- and Anthropic-compatible "
                                "endpoints, and its admin API."},
        "components": {"schemas": defs, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
        "paths": {
            "/v1/chat/completions": _llm("OpenAI chat completions", _body(
                {"model": model, "messages": openai_format.MESSAGES_SCHEMA},
                openai_format.CHAT_FIELDS)),
            "/v1/completions": _llm("OpenAI legacy completions", _body(
                {"model": model, "prompt": openai_format.PROMPT.schema},
                openai_format.COMPLETIONS_FIELDS)),
            "/v1/embeddings": _llm("OpenAI embeddings", _body(
                {"model": model, "input": openai_format.PROMPT.schema},
                openai_format.EMBEDDINGS_FIELDS)),
            "/v1/messages": _llm("Anthropic Messages", _body(
                {**anthropic_schema.REQUIRED, "model": model}, anthropic_schema.FIELDS),
                security="x-api-key"),
            "/v1/messages/count_tokens": _llm("Anthropic token counting", _body(
                {k: v for k, v in {**anthropic_schema.REQUIRED, "model": model}.items()
                 if k != "max_tokens"}, anthropic_schema.FIELDS), security="x-api-key"),
            "/v1/responses": _llm("OpenAI Responses API", _body(
                {**responses_schema.REQUIRED, "model": model}, responses_schema.FIELDS)),
            "/v1/responses/{response_id}": {
                "parameters": [_param("response_id", "path", {"type": "string"})],
                "get": _get("a stored response"),
                "delete": _get("delete a stored response")},
            "/v1/responses/{response_id}/input_items": {
                "parameters": [_param("response_id", "path", {"type": "string"})],
                "get": _get("a stored response's input items", query=[
                    _param("limit", "query", {"type": "integer", "minimum": 1,
                                              "maximum": 100}),
                    _param("order", "query", {"enum": ["asc", "desc"]}),
                    _param("after", "query", {"type": "string"})])},
            "/v1/models": {"get": _get("the public models the key may use")},
            "/healthz": {"get": _get("liveness", secured=False)},
            "/readyz": {"get": _get("readiness", secured=False)},
            "/openapi.json": {"get": _get("this document", secured=False)},
            "/admin/teams": {"get": _get("teams, with their spend")},
            "/admin/teams/{team}": {
                "parameters": [_param("team", "path", name)],
                "get": _get("one team, with its spend"),
                "put": {**_get("create a team, or change the fields given"),
                        "requestBody": {"required": True,
                                        "content": {_JSON: {"schema": team}}}}},
            "/admin/teams/{team}/keys": {
                "parameters": [_param("team", "path", name)],
                "get": _get("the team's keys (no secrets)"),
                "post": {**_get("a new key: its secret is in this answer only"),
                         "requestBody": {"required": True,
                                         "content": {_JSON: {"schema": key}}}}},
            "/admin/teams/{team}/keys/{key_id}": {
                "parameters": [_param("team", "path", name), _param("key_id", "path", name)],
                "delete": _get("revoke a key, on every process before this returns")},
            "/admin/usage": {"get": _get("usage rollups", query=[
                team_q, _param("from", "query", day), _param("to", "query", day),
                _param("by", "query", {"type": "string"}), _param("format", "query", fmt)])},
            "/admin/events": {"get": _get("usage events", query=[
                team_q, _param("after", "query", {"type": "string",
                                                  "pattern": r"^\d{1,20}-\d{1,20}$"}),
                _param("limit", "query", {"type": "integer", "minimum": 1}),
                _param("format", "query", fmt)])},
            **(openapi_paths(_get, _param) if cfg.batch.enabled else {}),
        },
    }


class OpenApiEndpoint:
    """GET /openapi.json, serialized once."""

    def __init__(self, cfg: Config) -> None:
        self._body = orjson.dumps(document(cfg))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self._body, [])
