"""The Files and Batch APIs in /openapi.json (gateway/http/openapi.py adds these paths
when `batch.enabled`), from the same tables the API checks against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.batch.lines import ENDPOINTS

Op = dict[str, Any]
_JSON = "application/json"


def _body(content: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {content: {"schema": schema}}}}


def openapi_paths(get: Callable[..., Op], param: Callable[..., Op]) -> dict[str, Any]:
    """`get` and `param`: openapi.py's builders of an operation and of a parameter."""
    file_id = [param("file_id", "path", {"type": "string", "minLength": 1})]
    batch_id = [param("batch_id", "path", {"type": "string", "minLength": 1})]
    limit = param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100})
    upload = {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "JSONL, a request a line"},
        "purpose": {"type": "string", "enum": ["batch"]}}}
    create = {"type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
              "properties": {
                  "input_file_id": {"type": "string"},
                  "endpoint": {"type": "string", "enum": list(ENDPOINTS)},
                  "completion_window": {"type": "string", "enum": ["24h"]},
                  "metadata": {"type": ["object", "null"], "maxProperties": 16,
                               "additionalProperties": {"type": "string", "maxLength": 512}}}}
    return {
        "/v1/files": {
            "get": get("the team's files", query=[
                param("purpose", "query", {"type": "string"}), limit,
                param("order", "query", {"enum": ["asc", "desc"]}),
                param("after", "query", {"type": "string"})]),
            "post": {**get("upload a batch input file (multipart)"),
                     **_body("multipart/form-data", upload)}},
        "/v1/files/{file_id}": {"parameters": file_id, "get": get("a file"),
                                "delete": get("delete a file and its content")},
        "/v1/files/{file_id}/content": {"parameters": file_id, "get": get(
            "a file's content", content="application/octet-stream")},
        "/v1/batches": {
            "get": get("the team's batches, newest first", query=[
                param("after", "query", {"type": "string"}), limit]),
            "post": {**get("create a batch from an input file"), **_body(_JSON, create)}},
        "/v1/batches/{batch_id}": {"parameters": batch_id, "get": get("a batch")},
        "/v1/batches/{batch_id}/cancel": {"parameters": batch_id,
                                          "post": get("cancel a batch")},
    }
