"""Read-only mounts: the kernel reads cached files from a local view (FUSE passthrough)."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest

from mediadrive.node import passthrough

from .conftest import (
    DriveFactory,
    MountHandle,
    Mounts,
    drive_call,
    edited_inside_blocks,
    wait_until,
)

MiB = 1 << 20

if not passthrough.supported():
    pytest.fail(
        "pyfuse3 lacks passthrough support: run `make install` (scripts/build-fuse-passthrough.sh)",
        pytrace=False,
    )


def _served(m: MountHandle) -> int:
    """Block reads the agent answered (from its cache or the store)."""
    status = m.status()
    return int(status["cache_hits"]) + int(status["cache_misses"])


def _settled(m: MountHandle, cached: int) -> None:
    """Wait until the agent has heard of every close (the kernel sends release late;
    until then the agent reads through itself rather than risk a refused open) and
    has ``cached`` bytes on disk (blocks are written there after readers got them)."""
    wait_until(lambda: m.status()["open_files"] == 0 and m.status()["cache_bytes"] >= cached)


def _write(name: str, path: str, data: bytes) -> None:
    drive_call(name, lambda d: d.write_file(path, io.BytesIO(data)))


def _remote_file_read_only(
    make_drive: DriveFactory, mounts: Mounts, path: str, size: int, **options: Any
) -> tuple[str, bytes, MountHandle]:
    """A drive with ``size`` random bytes at ``path``, mounted read-only, the file read
    once (cold, through the agent)."""
    name = make_drive(chunk_size="4MiB")
    data = os.urandom(size)
    _write(name, path, data)
    m = mounts.mount(name, read_only=True, **options)
    assert (m / path.lstrip("/")).read_bytes() == data
    return name, data, m


def test_a_cached_file_is_read_by_the_kernel_without_the_agent(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    # Cold: the blocks are not cached yet, so the agent serves (and caches) them.
    _, data, m = _remote_file_read_only(make_drive, mounts, "/plate.exr", 10 * MiB + 123)
    assert m.status()["passthrough"] is True
    assert m.status()["bytes_fetched"] >= len(data)
    _settled(m, len(data))
    served = _served(m)
    with open(m / "plate.exr", "rb") as f:
        assert m.status()["passthrough_opens"] == 1
        assert f.read() == data
        f.seek(5 * MiB + 7)
        assert f.read(MiB) == data[5 * MiB + 7 : 6 * MiB + 7]
    assert _served(m) == served
    assert m.status()["passthrough_opens"] == 0


def test_a_change_elsewhere_shows_at_the_next_open(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, old, m = _remote_file_read_only(make_drive, mounts, "/comp.nk", 6 * MiB)
    _settled(m, len(old))
    held = open(m / "comp.nk", "rb")  # noqa: SIM115
    try:
        assert m.status()["passthrough_opens"] == 1
        assert held.read() == old
        new = os.urandom(5 * MiB)
        _write(name, "/comp.nk", new)
        time.sleep(2)
        # Opens while one is held share its backing file: they see the old version.
        held.seek(0)
        assert held.read(MiB) == old[:MiB]
    finally:
        held.close()
    # Once closed, the next open reads the new version (fetched, then passed through).
    wait_until(lambda: (m / "comp.nk").read_bytes() == new)
    _settled(m, len(old) + len(new))
    served = _served(m)
    assert (m / "comp.nk").read_bytes() == new
    assert _served(m) == served


def test_without_passthrough_the_agent_serves_every_read(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    _, data, m = _remote_file_read_only(make_drive, mounts, "/ref.mov", 4 * MiB, passthrough=False)
    assert m.status()["passthrough"] is False
    # The kernel keeps the pages; drop them so the next read asks again.
    fd = os.open(m / "ref.mov", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    served = _served(m)
    assert (m / "ref.mov").read_bytes() == data
    assert _served(m) > served


def test_a_damaged_cached_block_never_reaches_a_view(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data, m = _remote_file_read_only(make_drive, mounts, "/grade.cube", 6 * MiB, cache="kept")
    _settled(m, len(data))
    mounts.umount(m)
    (block,) = sorted((m.cache_dir / "blocks").glob("*/*.2"))
    raw = bytearray(block.read_bytes())
    raw[0] ^= 0xFF
    block.write_bytes(bytes(raw))
    m = mounts.mount(name, mountpoint=m.path, read_only=True, cache="kept")
    # The view is refused; the agent finds the damage, fetches the block again.
    assert (m / "grade.cube").read_bytes() == data
    assert m.status()["cache_corrupt"] == 1
    _settled(m, len(data))
    with open(m / "grade.cube", "rb") as f:
        assert m.status()["passthrough_opens"] == 1
        assert f.read() == data


def test_a_file_edited_inside_blocks_is_joined_from_the_windows_of_its_blocks(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """Slices that start and end inside a block (an unaligned edit) make a view of
    the file's bytes, not of the whole blocks they share."""
    offset = 5 * MiB + 12345
    name, expected = edited_inside_blocks(
        make_drive, mounts, "/grade.exr", 9 * MiB + 321, offset, MiB // 2
    )

    m = mounts.mount(name, read_only=True)
    assert (m / "grade.exr").read_bytes() == expected
    _settled(m, len(expected))
    served = _served(m)
    with open(m / "grade.exr", "rb") as f:
        assert m.status()["passthrough_opens"] == 1
        assert f.read() == expected
        f.seek(offset - 100)
        assert f.read(MiB // 2 + 200) == expected[offset - 100 : offset + MiB // 2 + 100]
    assert _served(m) == served
