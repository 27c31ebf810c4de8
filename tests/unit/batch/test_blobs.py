"""The blob store: the same contract on local disk and on an S3-compatible server (moto in
server mode, a real HTTP endpoint): written whole or not at all, read back, streamed,
deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from gateway.batch.blobs import BlobStore, open_blobs
from gateway.batch.settings import StorageConfig
from tests.support.procs import answers_200, free_port, stop, wait_until

BUCKET = "turnout-test"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers_200(url + "/moto-api/"), "moto", proc, log)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
    yield url
    stop(proc)


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        cfg = StorageConfig(path=str(tmp_path / "blobs"))  # type: ignore[call-arg]
    else:
        url = request.getfixturevalue("s3_server")
        cfg = StorageConfig(kind="s3", bucket=BUCKET, endpoint_url=url,  # type: ignore[call-arg]
                            access_key_id="x", secret_access_key="x")
    store = await open_blobs(cfg)
    yield store
    await store.close()


async def test_written_whole_then_read_streamed_deleted(blobs: BlobStore) -> None:
    key = f"team/{os.urandom(4).hex()}"
    big = os.urandom(3 << 20)  # several chunks
    writer = await blobs.writer(key)
    for i in range(0, len(big), 100_000):
        await writer.write(big[i:i + 100_000])
    with pytest.raises(FileNotFoundError):
        await blobs.read(key)  # nothing is there before the commit
    await writer.commit()
    assert await blobs.read(key) == big
    chunks = [c async for c in blobs.stream(key)]
    assert len(chunks) > 1 and b"".join(chunks) == big
    await blobs.delete(key)
    with pytest.raises(FileNotFoundError):
        await blobs.read(key)


async def test_aborted_writer_leaves_nothing(blobs: BlobStore) -> None:
    key = f"team/{os.urandom(4).hex()}"
    writer = await blobs.writer(key)
    await writer.write(b"half an upload")
    await writer.abort()
    with pytest.raises(FileNotFoundError):
        await blobs.read(key)
