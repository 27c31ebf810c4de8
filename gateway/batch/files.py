"""Files: records in the store (a HASH per team, file id → JSON), contents in the blob
store under `<team>/<file id>`. A team sees only its own files. Output and error files of
batches are files too (purpose `batch_output`), with ids derived from their batch's, so a
finalization that runs again writes the same files."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.batch.blobs import BlobStore, BlobWriter
from gateway.batch.settings import BatchConfig
from gateway.batch.upload import receive_upload
from gateway.errors import GatewayError
from gateway.http.asgi import Receive
from gateway.store import Store, layout

# Fields of a record that the API shows (the rest are ours: `lines`).
PUBLIC = ("id", "object", "bytes", "created_at", "filename", "purpose", "status",
          "expires_at", "status_details")


def new_file_id() -> str:
    return "file-" + os.urandom(12).hex()


def derived_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}\n{kind}".encode()).hexdigest()[:24]


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in PUBLIC}


def not_found(file_id: str) -> GatewayError:
    return GatewayError(404, f"No such File object: {file_id[:128]}", code="file_not_found",
                        param="file_id")


class Files:
    def __init__(self, store: Store, blobs: BlobStore, cfg: BatchConfig) -> None:
        self.store = store
        self.blobs = blobs
        self.cfg = cfg

    async def upload(self, team: str, receive: Receive, content_type: bytes | None
                     ) -> dict[str, Any]:
        file_id = new_file_id()
        key = f"{team}/{file_id}"

        async def writer() -> BlobWriter:
            return await self.blobs.writer(key)

        up = await receive_upload(receive, content_type, self.cfg.max_file_bytes,
                                  self.cfg.max_lines, writer)
        record = {"id": file_id, "object": "file", "bytes": up.size,
                  "created_at": int(time.time()), "filename": up.filename,
                  "purpose": up.purpose, "status": "processed", "expires_at": None,
                  "status_details": None, "lines": up.lines}
        await self.store.hset(layout.files(team), file_id, orjson.dumps(record))
        return record

    async def put(self, team: str, file_id: str, filename: str, data: bytes
                  ) -> dict[str, Any]:
        """A batch's output or error file, written whole."""
        writer = await self.blobs.writer(f"{team}/{file_id}")
        await writer.write(data)
        await writer.commit()
        record = {"id": file_id, "object": "file", "bytes": len(data),
                  "created_at": int(time.time()), "filename": filename,
                  "purpose": "batch_output", "status": "processed", "expires_at": None,
                  "status_details": None, "lines": data.count(b"\n")}
        await self.store.hset(layout.files(team), file_id, orjson.dumps(record))
        return record

    async def get(self, team: str, file_id: str) -> dict[str, Any]:
        raw = await self.store.hget(layout.files(team), file_id)
        if raw is None:
            raise not_found(file_id)
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def listing(self, team: str, *, purpose: str | None, limit: int,
                      after: str | None, ascending: bool) -> dict[str, Any]:
        records = [orjson.loads(v) for v in
                   (await self.store.hgetall(layout.files(team))).values()]
        records = [r for r in records if purpose is None or r["purpose"] == purpose]
        records.sort(key=lambda r: (r["created_at"], r["id"]), reverse=not ascending)
        if after is not None:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        page = records[:limit]
        return {"object": "list", "data": [public(r) for r in page],
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(records) > limit}

    async def delete(self, team: str, file_id: str) -> dict[str, Any]:
        await self.get(team, file_id)  # 404 when it is not the team's
        await self.store.hdel(layout.files(team), file_id)
        await self.blobs.delete(f"{team}/{file_id}")
        return {"id": file_id, "object": "file", "deleted": True}

    async def content(self, team: str, file_id: str) -> AsyncIterator[bytes]:
        await self.get(team, file_id)
        return self.blobs.stream(f"{team}/{file_id}")

    async def read(self, team: str, file_id: str) -> bytes:
        return await self.blobs.read(f"{team}/{file_id}")
