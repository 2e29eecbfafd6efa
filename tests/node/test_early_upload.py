"""A large file written through the mount sends its full chunks while it is still
open; closing it sends only the rest, and the version holds exactly its bytes."""

from __future__ import annotations

import os

import pytest

from mediadrive.core.drive import Drive
from mediadrive.core.hashing import chunk_id
from tests.servers import S3Server

from .conftest import DriveFactory, Mounts, drive_call, wait_until

MiB = 1 << 20
CHUNK = 4 * MiB


async def _stored(drive: Drive) -> int:
    count, _ = await drive.meta.chunk_stats()
    return count


async def _read(drive: Drive, path: str) -> tuple[bytes, list[str]]:
    reader = await drive.reader(path)
    return await reader.read(0, reader.size), [e.chunk_id for e in reader.extents]


def test_full_chunks_are_stored_before_close(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive(chunk_size=CHUNK)
    m = mounts.mount(name, commit_on="save")
    data = bytearray(os.urandom(3 * CHUNK + MiB))
    with open(m / "render.exr", "wb", buffering=0) as f:
        f.write(data[: 3 * CHUNK])
        # The pages reach the agent (fsync commits nothing under --commit-on save).
        os.fsync(f.fileno())
        wait_until(lambda: drive_call(name, _stored) == 3)
        assert m.status()["commits"] == 0
        f.write(data[3 * CHUNK :])
        # A chunk sent early and then changed is sent again by the commit.
        f.seek(CHUNK + 100)
        f.write(b"retouched")
        data[CHUNK + 100 : CHUNK + 109] = b"retouched"
    m.save("/render.exr")
    assert m.status()["dirty_files"] == 0 and m.status()["commits"] == 1
    content, ids = drive_call(name, lambda d: _read(d, "/render.exr"))
    assert content == bytes(data)
    assert ids == [chunk_id(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    # A commit counts the bytes of the chunks its version names, whenever they went.
    assert m.status()["bytes_uploaded"] == len(data)


def test_a_large_file_streams_into_s3_while_it_is_written(
    make_drive: DriveFactory,
    mounts: Mounts,
    minio_s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable, value in (
        ("AWS_ACCESS_KEY_ID", minio_s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", minio_s3.secret_key),
        ("AWS_DEFAULT_REGION", minio_s3.region),
    ):
        monkeypatch.setenv(variable, value)
    bucket = minio_s3.new_bucket("stream")
    chunk = 16 * MiB
    name = make_drive(
        chunk_size=chunk, store_url=f"s3://{bucket}/show?endpoint={minio_s3.endpoint_url}"
    )
    m = mounts.mount(name, stream_chunks=True)
    # Two whole chunks and a short last one, each long enough to go up in parts.
    data = os.urandom(2 * chunk + 10 * MiB)
    with open(m / "render.exr", "wb") as f:
        for offset in range(0, len(data), MiB):
            f.write(data[offset : offset + MiB])
    wait_until(lambda: m.status()["dirty_files"] == 0 and m.status()["commits"] == 1)
    status = m.status()
    assert status["bytes_uploaded"] == len(data)
    assert (status["chunks_streamed"], status["streams_dropped"]) == (3, 0)
    ids = [chunk_id(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    s3 = minio_s3.client()

    def listed(prefix: str) -> dict[str, int]:
        found = s3.list_objects_v2(Bucket=bucket, Prefix=f"show/{prefix}").get("Contents", [])
        return {item["Key"]: item["Size"] for item in found}

    # Each chunk's bytes are in the object it streamed into; its key names that object.
    streams = listed("streams/")
    assert sorted(streams.values()) == sorted([10 * MiB, chunk, chunk])
    chunks = listed("chunks/")
    assert sorted(key.rsplit("/", 1)[1] for key in chunks) == sorted(ids)
    for key in chunks:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["mediadrive-stream"] in streams
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # Read back as another machine would, with nothing remembered.
    content, named = drive_call(name, lambda d: _read(d, "/render.exr"))
    assert (content, named) == (data, ids)
    fresh = mounts.mount(name)
    assert (fresh / "render.exr").read_bytes() == data
