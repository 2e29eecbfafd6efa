"""A killed upload leaves no half-version, and GC reclaims its chunks once its hold ends.

A separate process uploads a large file through ``Drive.write_file`` and is
killed with SIGKILL after some of its chunks are stored.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.errors import PathNotFound
from mediadrive.core.hashing import chunk_id
from mediadrive.core.meta.sql import CHUNK_HOLD
from tests.servers import S3Server, create_database

MIB = 1 << 20
CHUNK = 4 * MIB
BIG = 64 * MIB

# Uploads /big.bin from a source that delivers 4 MiB every 0.1 s, like a slow share.
UPLOADER = textwrap.dedent(
    """
    import asyncio
    import sys
    import time
    from pathlib import Path

    from mediadrive.core.drive import Drive


    class SlowSource:
        def __init__(self, path):
            self._f = open(path, "rb")

        def read(self, size=-1):
            time.sleep(0.1)
            return self._f.read(size)

        def tell(self):
            return self._f.tell()

        def seek(self, offset, whence=0):
            return self._f.seek(offset, whence)

        def seekable(self):
            return True


    async def main(meta_url, store_url, source):
        drive = await Drive.open("show", meta_url, store_url)
        await drive.write_file("/big.bin", SlowSource(source))
        print("upload finished", flush=True)


    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


@dataclass(frozen=True)
class Setup:
    meta_url: str
    store_url: str
    stored: Callable[[], set[str]]
    env: dict[str, str]


@pytest.fixture(
    params=[
        "sqlite+local",
        pytest.param(
            "postgres+minio", marks=[pytest.mark.postgres, pytest.mark.s3, pytest.mark.minio]
        ),
    ]
)
def setup(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    env = dict(os.environ)
    if request.param == "sqlite+local":
        store = tmp_path / "store"
        chunks = store / "chunks"

        def local() -> set[str]:
            return {p.name for p in chunks.glob("*/*") if not p.name.startswith(".")}

        return Setup(f"sqlite:///{tmp_path}/meta.db", f"file://{store}", local, env)
    server: S3Server = request.getfixturevalue("minio_s3")
    bucket = server.new_bucket("crash")
    for name, value in (
        ("AWS_ACCESS_KEY_ID", server.access_key),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key),
    ):
        monkeypatch.setenv(name, value)
        env[name] = value
    client = server.client()

    def in_bucket() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="show/")
        return {
            item["Key"].rsplit("/", 1)[1] for page in pages for item in page.get("Contents", [])
        }

    return Setup(
        create_database(request.getfixturevalue("postgres_url"), "crash"),
        f"s3://{bucket}/show?endpoint={server.endpoint_url}",
        in_bucket,
        env,
    )


async def wait_for(condition: Callable[[], bool], proc: asyncio.subprocess.Process) -> None:
    """Poll ``condition`` while the uploader runs; fail if it exits first."""
    while not condition():
        if proc.returncode is not None:
            out = await proc.stdout.read() if proc.stdout else b""
            pytest.fail(f"the uploader exited with {proc.returncode} early:\n{out.decode()}")
        await asyncio.sleep(0.02)


async def test_a_killed_upload_leaves_no_version(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = await Drive.create(
        "show", setup.meta_url, setup.store_url, DriveSettings(chunking="fixed", chunk_size=CHUNK)
    )
    keep = os.urandom(CHUNK + 1000)
    await drive.write_file("/keep.bin", io.BytesIO(keep))
    keep_ids = {chunk_id(keep[:CHUNK]), chunk_id(keep[CHUNK:])}
    last_seq = await drive.meta.last_event_seq()
    await drive.close()
    assert setup.stored() == keep_ids

    source = tmp_path / "big.bin"
    big = os.urandom(BIG)
    source.write_bytes(big)
    big_ids = {chunk_id(big[i : i + CHUNK]) for i in range(0, BIG, CHUNK)}

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        UPLOADER,
        setup.meta_url,
        setup.store_url,
        str(source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=setup.env,
    )
    try:
        async with asyncio.timeout(60):
            await wait_for(lambda: len(setup.stored() - keep_ids) >= 3, proc)
        assert proc.returncode is None, "the upload finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    orphans = setup.stored() - keep_ids
    assert 3 <= len(orphans) < len(big_ids)
    assert orphans <= big_ids

    drive = await Drive.open("show", setup.meta_url, setup.store_url)
    try:
        # No version, no file, no commit event: the upload never happened.
        with pytest.raises(PathNotFound):
            await drive.stat("/big.bin")
        with pytest.raises(PathNotFound):
            await drive.versions("/big.bin")
        assert [n.name for n in await drive.listdir("/")] == ["keep.bin"]
        assert await drive.meta.events_after(last_seq) == []
        out = io.BytesIO()
        await drive.read_to("/keep.bin", out)
        assert out.getvalue() == keep

        # The dead upload's claims still hold its chunks: GC leaves them for now.
        report = await drive.gc(grace=0)
        assert report.chunks_deleted == 0
        assert setup.stored() - keep_ids == orphans

        # Once the hold has run out, the same GC takes every orphan and nothing else.
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + CHUNK_HOLD + 60)
        report = await drive.gc(grace=0)
        assert report.chunks_deleted >= len(orphans)
        assert report.bytes_freed == report.chunks_deleted * CHUNK
        assert report.versions_pruned == 0
        assert setup.stored() == keep_ids
        assert await drive.meta.chunk_stats() == (2, len(keep))
        assert await drive.meta.gc_candidates(time.time()) == []
        out = io.BytesIO()
        await drive.read_to("/keep.bin", out)
        assert out.getvalue() == keep
    finally:
        await drive.close()

    # The drive accepts the same file again, whole.
    drive = await Drive.open("show", setup.meta_url, setup.store_url)
    try:
        with source.open("rb") as f:
            result = await drive.write_file("/big.bin", f)
        assert (result.version, result.chunks_total, result.bytes_uploaded) == (1, 16, BIG)
        reader = await drive.reader("/big.bin")
        assert await reader.read(BIG - CHUNK - 10, 20) == big[BIG - CHUNK - 10 : BIG - CHUNK + 10]
    finally:
        await drive.close()
