"""A large file written through the mount sends its full chunks while it is still
open; closing it sends only the rest, and the version holds exactly its bytes."""

from __future__ import annotations

import os

from mediadrive.core.drive import Drive
from mediadrive.core.hashing import chunk_id

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
    m = mounts.mount(name)
    data = bytearray(os.urandom(3 * CHUNK + MiB))
    with open(m / "render.exr", "wb", buffering=0) as f:
        f.write(data[: 3 * CHUNK])
        # The pages reach the agent (fsync commits nothing under --commit-on close).
        os.fsync(f.fileno())
        wait_until(lambda: drive_call(name, _stored) == 3)
        assert m.status()["commits"] == 0
        f.write(data[3 * CHUNK :])
        # A chunk sent early and then changed is sent again by the commit.
        f.seek(CHUNK + 100)
        f.write(b"retouched")
        data[CHUNK + 100 : CHUNK + 109] = b"retouched"
    wait_until(lambda: m.status()["dirty_files"] == 0 and m.status()["commits"] == 1)
    content, ids = drive_call(name, lambda d: _read(d, "/render.exr"))
    assert content == bytes(data)
    assert ids == [chunk_id(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    # A commit counts the bytes of the chunks its version names, whenever they went.
    assert m.status()["bytes_uploaded"] == len(data)
