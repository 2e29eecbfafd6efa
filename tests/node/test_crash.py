"""kill -9 of the agent loses nothing that fsync acknowledged."""

from __future__ import annotations

import contextlib
import os

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
    m.kill()
    with contextlib.suppress(OSError):
        os.close(fd)
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
