"""Files written while the drive's store cannot be reached are never lost: the mount
keeps their copies (an unmount is refused), a crash does not lose them, and they are
committed once the store is back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mediadrive.core.drive import Drive
from mediadrive.core.errors import MediadriveError
from mediadrive.node import client

from .conftest import DriveFactory, Mounts, drive_call, wait_until

MiB = 1 << 20


@contextmanager
def unreachable(store: Path) -> Iterator[None]:
    """The store's folder is a plain file meanwhile: every put fails (as root, taking
    its permissions away would not)."""
    away = store.with_name(store.name + ".away")
    store.rename(away)
    store.write_bytes(b"")
    try:
        yield
    finally:
        store.unlink()
        away.rename(store)


def committed(name: str, path: str) -> bytes:
    """The bytes of ``path``'s head version, read from the drive, not the mount."""

    async def read(drive: Drive) -> bytes:
        reader = await drive.reader(path)
        return bytes(await reader.read(0, reader.size))

    return bytes(drive_call(name, read))


def test_files_closed_while_the_store_is_down_survive_a_crash_and_are_committed(
    make_drive: DriveFactory, mounts: Mounts, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    name = make_drive(store_url=f"file://{store}")
    frames = {f"frame-{i}.exr": os.urandom(3 * MiB + i) for i in (1, 2, 3)}
    m = mounts.mount(name, cache="offline")
    (m / "renders").mkdir()
    with unreachable(store):
        for frame, data in frames.items():
            (m / "renders" / frame).write_bytes(data)
        wait_until(lambda: len(m.status()["errors"]) >= 3)
        assert m.status()["dirty_files"] == 3
        # Unmounting would strand them: refused, naming them; the mount stays.
        with pytest.raises(MediadriveError, match=r"frame-1\.exr.*could not be committed"):
            client.umount(m.path, m.registry)
        for frame, data in frames.items():
            assert (m / "renders" / frame).read_bytes() == data
        # Closed, never fsync'd, never committed: a crash now must not lose them.
        m.kill()
    m = mounts.mount(name, mountpoint=m.path, cache="offline")
    for frame, data in frames.items():
        assert (m / "renders" / frame).read_bytes() == data
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert m.status()["recovered_files"] == 3
    for frame, data in frames.items():
        assert committed(name, f"/renders/{frame}") == data


def test_a_commit_that_failed_while_the_store_was_down_is_retried_on_its_own(
    make_drive: DriveFactory, mounts: Mounts, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    name = make_drive(store_url=f"file://{store}")
    data = os.urandom(2 * MiB)
    m = mounts.mount(name)
    with unreachable(store):
        (m / "plate.exr").write_bytes(data)
        wait_until(lambda: bool(m.status()["errors"]))
    # Nobody saves or touches the file again: the mount retries by itself.
    wait_until(lambda: m.status()["dirty_files"] == 0, timeout=30)
    assert committed(name, "/plate.exr") == data
    mounts.umount(m)


def test_under_commit_on_fsync_an_fsync_while_the_store_is_down_keeps_the_copy_here(
    make_drive: DriveFactory, mounts: Mounts, tmp_path: Path
) -> None:
    """The fsync cannot record a version: it makes the copy durable on this machine
    instead and succeeds, a crash loses nothing, and the copy is committed once the
    store is back."""
    store = tmp_path / "store"
    name = make_drive(store_url=f"file://{store}")
    m = mounts.mount(name, commit_on="fsync", cache="offline-fsync")
    data = os.urandom(2 * MiB)
    with unreachable(store):
        fd = os.open(m / "take.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, data[:MiB])
        os.fsync(fd)
        os.write(fd, data[MiB:])
        os.fsync(fd)
        assert m.status()["errors"]
        m.kill(fd)
    assert drive_call(name, lambda d: d.stat("/take.bin")).head_version is None
    m = mounts.mount(name, mountpoint=m.path, commit_on="fsync", cache="offline-fsync")
    assert (m / "take.bin").read_bytes() == data
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert committed(name, "/take.bin") == data
