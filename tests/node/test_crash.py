"""kill -9 of the agent loses nothing that fsync acknowledged."""

from __future__ import annotations

import io
import os

import pytest

from .conftest import DriveFactory, Mounts, drive_call, wait_until

MiB = 1 << 20


def test_fsynced_data_survives_kill_and_is_committed(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name, commit_on="save", cache="crash")
    data = os.urandom(3 * MiB)
    fd = os.open(m / "precious.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    m.kill(fd)
    # Nothing was committed before the kill.
    assert drive_call(name, lambda d: d.stat("/precious.bin")).head_version is None

    m = mounts.mount(name, mountpoint=m.path, commit_on="save", cache="crash")
    assert (m / "precious.bin").read_bytes() == data
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert m.status()["recovered_files"] == 1
    reader = drive_call(name, lambda d: d.reader("/precious.bin"))
    assert reader.info.version == 1 and reader.size == len(data)
    versions = m.client().versions("/precious.bin")
    assert versions[0]["message"] == "recovered after restart"


def test_killed_agent_leaves_no_stale_mount_behind_a_remount(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name, cache="crash2")
    (m / "a.txt").write_text("a")
    wait_until(lambda: m.status()["dirty_files"] == 0)
    m.kill()
    m = mounts.mount(name, mountpoint=m.path, cache="crash2")
    assert (m / "a.txt").read_text() == "a"
    assert m.status()["recovered_files"] == 0


def test_an_unaligned_edit_of_blocks_never_fetched_survives_kill(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """The edit went into blocks the copy had not fetched: a restart must not copy the
    base over it, and the recovered commit keeps the rest of those blocks."""
    name = make_drive(chunk_size=4 * MiB)
    data = os.urandom(9 * MiB + 5)
    drive_call(name, lambda d: d.write_file("/take.mov", io.BytesIO(data)))
    m = mounts.mount(name, commit_on="save", cache="crash3")
    patch = os.urandom(MiB)
    offset = 5 * MiB + 777
    fd = os.open(m / "take.mov", os.O_WRONLY)
    os.pwrite(fd, patch, offset)
    os.fsync(fd)
    assert m.status()["bytes_fetched"] == 0
    m.kill(fd)

    expected = data[:offset] + patch + data[offset + MiB :]
    m = mounts.mount(name, mountpoint=m.path, commit_on="save", cache="crash3")
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert m.status()["recovered_files"] == 1
    assert drive_call(name, lambda d: d.reader("/take.mov")).info.version == 2
    assert (m / "take.mov").read_bytes() == expected
    mounts.umount(m)
    fresh = mounts.mount(name, cache="fresh")
    assert (fresh / "take.mov").read_bytes() == expected


@pytest.mark.parametrize("commit_on", ["close", "fsync"])
def test_what_fsync_acknowledged_survives_losing_the_machine(
    make_drive: DriveFactory, mounts: Mounts, commit_on: str
) -> None:
    """Unless versions come from saves only, fsync returns once its version is recorded
    and its chunks stored: a new machine (another cache, the first agent killed) reads
    the bytes without the first one."""
    name = make_drive()
    m = mounts.mount(name, commit_on=commit_on, cache="lost")
    data = bytearray(os.urandom(3 * MiB))
    fd = os.open(m / "shot.bin", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    patch = os.urandom(MiB)
    data[MiB + 4321 : 2 * MiB + 4321] = patch
    os.pwrite(fd, patch, MiB + 4321)
    os.fsync(fd)
    # Killed at once: no close, no save, no commit after the fsync.
    m.kill(fd)
    elsewhere = mounts.mount(name, commit_on=commit_on, cache="new-machine")
    assert (elsewhere / "shot.bin").read_bytes() == data
    assert drive_call(name, lambda d: d.stat("/shot.bin")).head_version == 2
    assert elsewhere.status()["recovered_files"] == 0


def test_under_commit_on_fsync_a_committed_copy_leaves_no_entry_until_it_changes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """Once an fsync recorded every byte of the copy, its journal entry goes (a power
    cut must not bring the copy back as a change); the next write brings it back, so a
    kill after it still loses nothing written and closed."""
    name = make_drive()
    m = mounts.mount(name, commit_on="fsync", cache="entries")
    staging = mounts.base / "entries" / "staging"
    data = bytearray(os.urandom(2 * MiB))
    fd = os.open(m / "take.bin", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    assert list(staging.glob("*.json")) == []
    os.pwrite(fd, b"late", 10)
    data[10:14] = b"late"
    # Closed (the kernel hands its pages over), not fsync'd, not committed.
    os.close(fd)
    assert len(list(staging.glob("*.json"))) == 1
    m.kill()
    m = mounts.mount(name, mountpoint=m.path, commit_on="fsync", cache="entries")
    assert (m / "take.bin").read_bytes() == data
    assert m.status()["recovered_files"] == 1


def test_a_save_of_an_open_file_leaves_no_entry_until_it_changes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """Any commit that leaves an open copy with nothing uncommitted (here a save, the
    fsync before it having flushed the copy here) removes its journal entry; the next
    write brings it back, so a kill after it still loses nothing written."""
    name = make_drive()
    m = mounts.mount(name, commit_on="save", cache="entries")
    staging = mounts.base / "entries" / "staging"
    data = bytearray(os.urandom(MiB))
    fd = os.open(m / "cut.bin", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    assert len(list(staging.glob("*.json"))) == 1
    (report,) = m.save("/cut.bin", "rough cut")
    assert report["committed"]
    assert list(staging.glob("*.json")) == []
    os.pwrite(fd, b"trim", 100)
    data[100:104] = b"trim"
    os.fsync(fd)
    assert len(list(staging.glob("*.json"))) == 1
    m.kill(fd)
    m = mounts.mount(name, mountpoint=m.path, commit_on="save", cache="entries")
    assert (m / "cut.bin").read_bytes() == data
    assert m.status()["recovered_files"] == 1
    assert drive_call(name, lambda d: d.stat("/cut.bin")).head_version >= 1
