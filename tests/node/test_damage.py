"""Damaged and missing chunks through a real mount: EIO and a log line, never wrong
bytes or ENOENT; copying the good original back in heals the file."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from mediadrive.core.drive import Drive

from .conftest import DriveFactory, MountHandle, Mounts, drive_call, wait_until

MiB = 1 << 20


def only_chunk(home: Path, name: str) -> Path:
    (chunk,) = (home / "home" / name / "store" / "chunks").glob("*/*")
    return chunk


def read_error(path: Path, offset: int = 0) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as excinfo:
            os.pread(fd, MiB, offset)
    finally:
        os.close(fd)
    return excinfo.value.errno or 0


def agent_log(m: MountHandle) -> str:
    return (m.cache_dir / "agent.log").read_text(errors="replace")


def test_an_emptied_chunk_is_an_io_error_never_zeros(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    drive_call(name, lambda d: d.write_file("/e.bin", io.BytesIO(b"e" * (3 * MiB))))
    chunk = only_chunk(home, name)
    chunk.write_bytes(b"")
    m = mounts.mount(name)
    assert os.path.getsize(m / "e.bin") == 3 * MiB
    assert read_error(m / "e.bin", 2 * MiB) == errno.EIO
    wait_until(
        lambda: f"cannot read /e.bin at offset {2 * MiB}: chunk {chunk.name}" in agent_log(m)
    )


def test_a_chunk_missing_from_the_store_is_an_io_error_not_enoent(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    drive_call(name, lambda d: d.write_file("/gone.bin", io.BytesIO(b"g" * MiB)))
    chunk = only_chunk(home, name)
    chunk.unlink()
    m = mounts.mount(name)
    assert os.listdir(m.path) == ["gone.bin"]
    assert read_error(m / "gone.bin") == errno.EIO
    wait_until(lambda: f"cannot read /gone.bin at offset 0: chunk {chunk.name}" in agent_log(m))


@pytest.mark.parametrize("damage", ["empty", "delete"])
def test_copying_the_original_back_in_heals_a_damaged_chunk(
    make_drive: DriveFactory, mounts: Mounts, home: Path, damage: str
) -> None:
    name = make_drive()
    data = os.urandom(2 * MiB + 5)
    drive_call(name, lambda d: d.write_file("/h.bin", io.BytesIO(data)))
    chunk = only_chunk(home, name)
    if damage == "empty":
        chunk.write_bytes(b"")
    else:
        chunk.unlink()
    m = mounts.mount(name)
    assert read_error(m / "h.bin") == errno.EIO

    async def copy_back(d: Drive) -> int:
        result = await d.write_file("/h.bin", io.BytesIO(data))
        return result.bytes_uploaded

    # The read marked the chunk damaged: the same bytes are stored again, not deduped away.
    assert drive_call(name, copy_back) == len(data)
    assert chunk.read_bytes() == data
    wait_until(lambda: (m / "h.bin").read_bytes() == data)
