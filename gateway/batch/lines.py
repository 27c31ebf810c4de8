"""Batch input lines and what becomes of them: the input file checked line by line before
a batch runs, each line's request id (derived from the batch and its custom_id, so a line
run again after a crash is the same request), and the output and error files' lines in
OpenAI's format."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.canonical import Operation

# The batch endpoints served, and the operation each line runs as: in the OpenAI format,
# or for RESPONSES in the Responses API's (line_run.py), as POST /v1/responses runs.
RESPONSES = "/v1/responses"
ENDPOINTS: dict[str, Operation] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    RESPONSES: "chat",
}
MAX_CUSTOM_ID = 512
MAX_ERRORS = 100  # a failed validation lists this many problems at most


@dataclass(slots=True)
class Line:
    index: int  # among the file's non-empty lines, from 0
    custom_id: str
    body: dict[str, Any]


@dataclass(slots=True)
class InputFile:
    """A validated input file: each line's place in the raw bytes."""

    data: bytes
    spans: list[tuple[int, int]]
    model: str | None

    def line(self, index: int) -> Line:
        start, end = self.spans[index]
        obj = orjson.loads(self.data[start:end])
        return Line(index, obj["custom_id"], obj["body"])


def _error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_input(data: bytes, endpoint: str, max_lines: int
                ) -> tuple[InputFile, list[dict[str, Any]]]:
    """The file's lines and, when it cannot run, why (OpenAI's `errors.data`, line
    numbers from 1 counting every line of the file)."""
    spans: list[tuple[int, int]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    start = 0
    number = 0
    while start < len(data) and len(errors) < MAX_ERRORS:
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        number += 1
        raw = data[start:end]
        if raw.strip():
            problem = _check(raw, endpoint, seen)
            if problem is not None:
                errors.append(_error(number, *problem))
            else:
                spans.append((start, end))
                if model is None:
                    model = orjson.loads(raw)["body"].get("model")
        start = end + 1
    if not spans and not errors:
        errors.append(_error(1, "empty_file", "the input file has no requests"))
    if len(spans) > max_lines:
        errors.append(_error(number, "too_many_requests",
                             f"a batch holds at most {max_lines} requests"))
    return InputFile(data, spans, model if isinstance(model, str) else None), errors


def _check(raw: bytes, endpoint: str, seen: set[str]) -> tuple[str, str, str] | None:
    """(code, message, param) of what is wrong with one line, or None."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "invalid_json_line", "the line is not valid JSON", "line"
    if not isinstance(obj, dict):
        return "invalid_json_line", "the line is not a JSON object", "line"
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return ("missing_required_parameter", f"`custom_id` must be a string of 1 to"
                f" {MAX_CUSTOM_ID} characters", "custom_id")
    if custom_id in seen:
        return "duplicate_custom_id", f"the custom_id {custom_id[:64]!r} is not unique", \
            "custom_id"
    seen.add(custom_id)
    if obj.get("method") != "POST":
        return "invalid_method", "`method` must be POST", "method"
    if obj.get("url") != endpoint:
        return "invalid_url", f"`url` must be the batch's endpoint, {endpoint}", "url"
    if not isinstance(obj.get("body"), dict):
        return "missing_required_parameter", "`body` must be an object", "body"
    return None


def request_id(batch_id: str, custom_id: str) -> str:
    """A line's request id: the same every time the line runs (its usage event's id)."""
    digest = hashlib.sha256(f"{batch_id}\n{custom_id}".encode()).hexdigest()[:32]
    return "batch_req_" + digest


def answered(rid: str, custom_id: str, status: int, body: bytes) -> bytes:
    """An output line (2xx) or an error-file line (the error the line got)."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    return orjson.dumps({"id": rid, "custom_id": custom_id, "response": {
        "status_code": status, "request_id": rid, "body": parsed}, "error": None})


def never_ran(rid: str, custom_id: str, code: str, message: str) -> bytes:
    """An error-file line for a line that did not run (its batch expired)."""
    return orjson.dumps({"id": rid, "custom_id": custom_id, "response": None,
                         "error": {"code": code, "message": message}})
