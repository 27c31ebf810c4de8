"""Batches: creation (checked against the team's file and the endpoints served), reading,
listing and cancelling, and a record's OpenAI JSON. A batch's record is a store HASH
(`layout.batch`); the lanes move it through its statuses:

    validating → in_progress → finalizing → completed | expired | cancelled
    validating → failed (its input file cannot run);  validating | in_progress → cancelling
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from gateway.batch.files import Files
from gateway.batch.lines import ENDPOINTS
from gateway.batch.settings import BatchConfig
from gateway.errors import GatewayError, bad_request
from gateway.store import Store, layout
from policies.keys import Principal

TIMES = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
         "failed_at", "expired_at", "cancelling_at", "cancelled_at")
FINAL = ("completed", "failed", "expired", "cancelled")
_COUNTS = ("total", "completed", "failed")


def new_batch_id() -> str:
    return "batch_" + os.urandom(12).hex()


def not_found(batch_id: str) -> GatewayError:
    return GatewayError(404, f"No such Batch object: {batch_id[:128]}", code="batch_not_found",
                        param="batch_id")


def text(record: dict[str, bytes], name: str) -> str | None:
    value = record.get(name)
    return value.decode() if value else None


def number(record: dict[str, bytes], name: str) -> int:
    return int(record.get(name) or 0)


def to_json(record: dict[str, bytes]) -> dict[str, Any]:
    """The record as OpenAI's Batch object."""
    errors = record.get("errors")
    usage: dict[str, Any] = {"input_tokens": number(record, "prompt_tokens"),
             "input_tokens_details": {"cached_tokens": number(record, "cached_tokens")},
             "output_tokens": number(record, "completion_tokens"),
             "output_tokens_details": {"reasoning_tokens": 0}}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return {
        "id": text(record, "id"), "object": "batch", "endpoint": text(record, "endpoint"),
        "errors": {"object": "list", "data": orjson.loads(errors)} if errors else None,
        "input_file_id": text(record, "input_file_id"),
        "completion_window": text(record, "completion_window"),
        "status": text(record, "status"),
        "output_file_id": text(record, "output_file_id"),
        "error_file_id": text(record, "error_file_id"),
        **{t: int(record[t]) if record.get(t) else None for t in TIMES},
        "request_counts": {c: number(record, c) for c in _COUNTS},
        "metadata": orjson.loads(record["metadata"]) if record.get("metadata") else None,
        "model": text(record, "model"),
        "usage": usage,
    }


def _metadata(value: Any) -> bytes:
    if value is None:
        return b""
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                       and len(v) <= 512 for k, v in value.items())):
        raise bad_request("`metadata`: at most 16 string keys (64 characters) and string"
                          " values (512 characters)", param="metadata")
    return orjson.dumps(value)


class Batches:
    def __init__(self, store: Store, files: Files, cfg: BatchConfig) -> None:
        self.store = store
        self.files = files
        self.cfg = cfg

    async def create(self, principal: Principal, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise bad_request(f"`endpoint` must be one of {', '.join(ENDPOINTS)}",
                              param="endpoint")
        if body.get("completion_window") != "24h":
            raise bad_request("`completion_window` must be `24h`", param="completion_window")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise bad_request("`input_file_id` is required", param="input_file_id")
        metadata = _metadata(body.get("metadata"))
        team = principal.team
        try:
            record = await self.files.get(team, file_id)
        except GatewayError:
            raise GatewayError(404, f"No such File object: {file_id[:128]}",
                               code="file_not_found", param="input_file_id") from None
        if record["purpose"] != "batch":
            raise bad_request("the input file's purpose must be `batch`",
                              param="input_file_id")
        batch_id, now = new_batch_id(), time.time()
        fields = {"id": batch_id, "team": team, "key_id": principal.key_id,
                  "endpoint": endpoint, "input_file_id": file_id,
                  "completion_window": "24h", "status": "validating",
                  "created_at": str(int(now)),
                  "expires_at": str(int(now + self.cfg.completion_window_s))}
        record_bytes = {k: v.encode() for k, v in fields.items()}
        record_bytes.update({"metadata": metadata, "total": b"0", "next": b"0",
                             "completed": b"0", "failed": b"0"})
        created_ms = int(now * 1000)
        # Listed for the lanes first: a creation that dies half-way leaves a listing the
        # lanes drop, never a batch no lane would run.
        await self.store.batch_activate(team, batch_id, created_ms)
        await self.store.batch_create(team, batch_id, record_bytes, created_ms)
        return to_json(record_bytes)

    async def record(self, team: str, batch_id: str) -> dict[str, bytes]:
        record = await self.store.hgetall(layout.batch(team, batch_id))
        if not record:
            raise not_found(batch_id)
        return record

    async def get(self, team: str, batch_id: str) -> dict[str, Any]:
        return to_json(await self.record(team, batch_id))

    async def listing(self, team: str, after: str | None, limit: int) -> dict[str, Any]:
        ids = await self.store.batch_ids(team, after, limit + 1)
        page = [to_json(r) for r in [await self.store.hgetall(layout.batch(team, i))
                                     for i in ids[:limit]] if r]
        return {"object": "list", "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(ids) > limit}

    async def cancel(self, team: str, batch_id: str) -> dict[str, Any]:
        record = await self.record(team, batch_id)
        now = str(int(time.time())).encode()
        if not await self.store.batch_update(team, batch_id, ["validating", "in_progress"],
                                             {"status": b"cancelling", "cancelling_at": now}):
            status = text(record, "status")
            if status not in ("cancelling", "cancelled"):
                raise GatewayError(409, f"a batch that is {status} cannot be cancelled",
                                   code="batch_not_cancellable")
        return await self.get(team, batch_id)
