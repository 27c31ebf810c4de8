"""File contents behind one interface: a local folder (the embedded default) or an
S3-compatible bucket (production: every gateway and batch worker of a fleet sees the same
files). Metadata lives in the store (files.py); blobs are bytes under a key.

S3 is spoken through aiobotocore: botocore's request signing, retries and endpoint rules
(AWS and S3-compatible servers alike) on asyncio, kept by the botocore team's neighbours
and used under s3fs; boto3 itself is synchronous and would need a thread per call. It is
an optional dependency (`pip install turnout[s3]`), imported only when configured.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import IO, Any, Protocol

from gateway.batch.settings import StorageConfig

CHUNK = 1 << 20  # read and written in 1 MiB steps, in a thread: the loop never waits on disk


class BlobWriter(Protocol):
    """A blob being written; it exists (whole) only once committed."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    async def writer(self, key: str) -> BlobWriter: ...

    async def read(self, key: str) -> bytes: ...

    def stream(self, key: str) -> AsyncIterator[bytes]:
        """The blob in chunks (FileNotFoundError before the first when it is absent)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class _Spool:
    """What a writer has been given so far: in a temporary file, written in a thread."""

    def __init__(self, folder: str | None = None) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-")
        self.file: IO[bytes] = open(fd, "w+b")  # noqa: SIM115  (a real file: S3 reads it)
        self.name = name
        self._pending: list[bytes] = []
        self._size = 0

    async def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        data, self._pending, self._size = b"".join(self._pending), [], 0
        if data:
            await asyncio.to_thread(self.file.write, data)

    async def discard(self) -> None:
        await asyncio.to_thread(_remove, self.file, self.name)


def _remove(file: IO[bytes], name: str) -> None:
    file.close()
    with suppress(FileNotFoundError):
        os.unlink(name)


class LocalBlobs:
    """Blobs as files under one folder (keys are `<team>/<file id>`, names we make)."""

    def __init__(self, folder: str | None = None) -> None:
        self.root = Path(folder or Path(tempfile.gettempdir()) / "turnout-files")
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    async def writer(self, key: str) -> BlobWriter:
        return _LocalWriter(self._path(key), str(self.root))

    async def read(self, key: str) -> bytes:
        return await asyncio.to_thread(self._path(key).read_bytes)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(self._path(key).open, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def close(self) -> None:
        return None


class _LocalWriter:
    def __init__(self, path: Path, root: str) -> None:
        self.path = path
        self.spool = _Spool(root)  # same file system: committed by a rename, atomically

    async def write(self, data: bytes) -> None:
        await self.spool.write(data)

    async def commit(self) -> None:
        await self.spool.flush()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        self.spool.file.close()
        os.replace(self.spool.name, self.path)

    async def abort(self) -> None:
        await self.spool.discard()


class S3Blobs:
    """Blobs as objects `<prefix><key>` in a bucket. A writer spools to a temporary file
    and sends it in one PUT at commit (up to 5 GB: far above the upload cap)."""

    def __init__(self, cfg: StorageConfig) -> None:
        self.cfg = cfg
        assert cfg.bucket is not None
        self.bucket = cfg.bucket
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        from aiobotocore.session import get_session  # optional: only when configured

        cfg = self.cfg
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region or "us-east-1",
            aws_access_key_id=cfg.access_key_id or None,
            aws_secret_access_key=cfg.secret_access_key or None))

    def _key(self, key: str) -> str:
        return self.cfg.prefix + key

    async def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, self._key(key))

    async def read(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.stream(key)])

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        async with resp["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def close(self) -> None:
        await self._stack.aclose()


class _S3Writer:
    def __init__(self, blobs: S3Blobs, key: str) -> None:
        self.blobs, self.key = blobs, key
        self.spool = _Spool()

    async def write(self, data: bytes) -> None:
        await self.spool.write(data)

    async def commit(self) -> None:
        await self.spool.flush()
        f = self.spool.file
        try:
            size = f.tell()
            await asyncio.to_thread(f.seek, 0)
            await self.blobs._client.put_object(Bucket=self.blobs.bucket, Key=self.key,
                                                Body=f, ContentLength=size)
        finally:
            await self.spool.discard()

    async def abort(self) -> None:
        await self.spool.discard()


async def open_blobs(cfg: StorageConfig) -> BlobStore:
    if cfg.kind == "s3":
        blobs = S3Blobs(cfg)
        await blobs.start()
        return blobs
    return LocalBlobs(cfg.path)
