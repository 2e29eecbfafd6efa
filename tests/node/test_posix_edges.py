"""Edges of POSIX on a real mount: long and non-UTF-8 names, special files, link
counts, fallocate, unmounting with writers, a full cache or store."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mediadrive.core.drive import Drive
from mediadrive.core.errors import MediadriveError, StoreFull
from mediadrive.node import client
from mediadrive.node.client import MountError
from mediadrive.node.staging import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate

from .conftest import DriveFactory, MountHandle, Mounts, drive_call, wait_until

LONG = "x" * 256
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10


def _errno_of(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno is not None
    return info.value.errno


def test_names_longer_than_255_bytes_are_refused(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    ok = m / ("y" * 255)
    ok.write_bytes(b"fits")
    assert ok.read_bytes() == b"fits"
    # 128 two-byte characters: 256 bytes, not 128 characters.
    wide = "é" * 128
    for name in (LONG, wide):
        long_path = str(m.path / name)
        assert _errno_of(os.open, long_path, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
        assert _errno_of(os.mkdir, long_path) == errno.ENAMETOOLONG
        assert _errno_of(os.symlink, "target", long_path) == errno.ENAMETOOLONG
        assert _errno_of(os.rename, str(ok), long_path) == errno.ENAMETOOLONG
        assert _errno_of(os.stat, long_path) == errno.ENAMETOOLONG
    assert ok.read_bytes() == b"fits"


def test_names_that_are_not_utf8_are_refused_with_eilseq(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    bad = os.fsencode(m.path) + b"/caf\xe9.txt"
    assert _errno_of(os.open, bad, os.O_CREAT | os.O_WRONLY) == errno.EILSEQ
    assert _errno_of(os.stat, bad) == errno.EILSEQ
    assert _errno_of(os.mkdir, bad) == errno.EILSEQ
    assert _errno_of(os.symlink, b"t\xff", os.fsencode(m.path) + b"/link") == errno.EILSEQ
    (m / "ok.txt").write_bytes(b"1")
    assert _errno_of(os.rename, os.fsencode(m / "ok.txt"), bad) == errno.EILSEQ
    # Valid UTF-8 beyond ASCII is kept as it is.
    (m / "café ☕.txt").write_bytes(b"2")
    assert sorted(os.listdir(m.path)) == ["café ☕.txt", "ok.txt"]


def test_fifos_devices_and_sockets_are_metadata_nodes_that_survive_a_remount(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    drive = make_drive()
    m = mounts.mount(drive, cache="c1")
    os.mkfifo(m / "pipe", 0o640)
    os.mknod(m / "fifo2", stat.S_IFIFO | 0o600)
    os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(m / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(m / "plain", stat.S_IFREG | 0o644)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(m / "sock"))
    finally:
        server.close()
    # A FIFO works (the kernel serves it): a writer and a reader meet.
    reader = os.open(m / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(m / "pipe", os.O_WRONLY)
    os.write(writer, b"through the pipe")
    assert os.read(reader, 100) == b"through the pipe"
    os.close(writer)
    os.close(reader)

    def check(root: Path) -> None:
        st = os.lstat(root / "pipe")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert stat.S_ISFIFO(os.lstat(root / "fifo2").st_mode)
        st = os.lstat(root / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        st = os.lstat(root / "loop")
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
        assert stat.S_ISSOCK(os.lstat(root / "sock").st_mode)
        assert stat.S_ISREG(os.lstat(root / "plain").st_mode)
        # (FUSE mounts are nodev: opening the device itself is refused by the kernel.)

    check(m.path)
    mounts.umount(m)
    m2 = mounts.mount(drive, cache="c2")
    check(m2.path)
    assert (m2 / "plain").read_bytes() == b""
    os.unlink(m2 / "pipe")
    assert not (m2 / "pipe").exists()


def test_a_folders_link_count_is_two_plus_its_subfolders(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    os.mkdir(m / "d")
    assert os.stat(m / "d").st_nlink == 2
    for name in ("a", "b", "c"):
        os.mkdir(m / "d" / name)
    (m / "d" / "file").write_bytes(b"x")
    os.mkfifo(m / "d" / "fifo")
    assert os.stat(m / "d").st_nlink == 5
    os.rmdir(m / "d" / "c")
    assert os.stat(m / "d").st_nlink == 4
    os.rename(m / "d" / "b", m / "b")
    assert os.stat(m / "d").st_nlink == 3
    assert os.stat(m.path).st_nlink == 4
    assert os.stat(m / "d" / "a").st_nlink == 2


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def _read_all(drive: Drive, path: str) -> bytes:
    reader = await drive.reader(path)
    return await reader.read(0, reader.size)


def _status(m: MountHandle) -> dict[str, Any]:
    return m.status()


def test_a_write_into_a_full_cache_is_never_committed(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    drive = make_drive()
    with small_tmpfs(home / "smallcache", "3m") as cache:
        m = mounts.mount(drive, cache="smallcache", checkpoint_interval="1s")
        assert m.cache_dir == cache
        data = os.urandom(6 << 20)
        with pytest.raises(OSError) as info, open(m / "big.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        assert info.value.errno == errno.ENOSPC
        time.sleep(2.5)  # two checkpoints
        assert drive_call(drive, lambda d: d.meta.resolve("/big.bin")).head_version is None
        status = _status(m)
        assert status["commits"] == 0
        assert any("big.bin" in line and "write failed" in line for line in status["errors"])
        # Unmounting would lose the file silently: refused, naming it; the mount stays.
        with pytest.raises(MediadriveError, match=r"big\.bin"):
            client.umount(m.path, m.registry)
        assert os.path.ismount(m.path)
        # Emptying the file starts over; then it commits and the unmount goes ahead.
        with open(m / "big.bin", "wb") as f:
            f.write(b"small")
        wait_until(lambda: drive_call(drive, lambda d: d.meta.resolve("/big.bin")).size == 5)
        mounts.umount(m)


def test_a_full_store_is_one_clear_error_and_leaves_no_tmp_files(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    with small_tmpfs(home / "smallstore", "2m") as store:
        drive = make_drive(store_url=f"file://{store}", chunk_size="1MiB")
        m = mounts.mount(drive, commit_on="save")
        (m / "big.bin").write_bytes(os.urandom(5 << 20))
        with pytest.raises(StoreFull, match=f"store {store} is full"):
            m.save("/big.bin")
        assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mediadrive"), "save", str(m / "big.bin")],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "full" in result.stderr
        # Unmounting now would strand the file in the cache: refused, naming it.
        with pytest.raises(MediadriveError, match=r"big\.bin"):
            client.umount(m.path, m.registry)
        subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        mounts.umount(m)
        assert drive_call(drive, lambda d: d.meta.resolve("/big.bin")).head_version == 1


def test_umount_refuses_while_a_file_is_open_for_writing_unless_forced(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    drive = make_drive()
    m = mounts.mount(drive)
    (m / "r.txt").write_bytes(b"r")
    held = open(m / "held.txt", "wb")  # noqa: SIM115
    try:
        held.write(b"written, neither closed nor fsync'd")
        held.flush()
        with pytest.raises(MountError, match=rf"process {os.getpid()} .*held\.txt"):
            client.umount(m.path, m.registry)
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mediadrive"), "umount", str(m.path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "held.txt" in result.stderr and "--force" in result.stderr
        assert os.path.ismount(m.path)
        # Readers do not block an unmount; --force saves the writer's bytes first.
        reader = os.open(m / "r.txt", os.O_RDONLY)
        client.umount(m.path, m.registry, force=True)
        mounts.active.remove(m.path)
        with contextlib.suppress(OSError):
            os.close(reader)
    finally:
        with contextlib.suppress(OSError):
            held.close()
    head = drive_call(drive, lambda d: d.meta.resolve("/held.txt"))
    assert head.head_version is not None
    read = drive_call(drive, lambda d: _read_all(d, "/held.txt"))
    assert read == b"written, neither closed nor fsync'd"


def test_fallocate_reserves_keeps_size_and_punches_holes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    drive = make_drive(chunk_size="1MiB")
    m = mounts.mount(drive, cache="c1")
    data = bytearray(os.urandom(3 << 20))
    (m / "f.bin").write_bytes(data)
    mounts.umount(m)
    m = mounts.mount(drive, cache="c2")  # nothing of the file in the cache
    fd = os.open(m / "f.bin", os.O_RDWR)
    try:
        fallocate(fd, 0, (3 << 20) - 10, 1 << 20)  # grows the file
        data.extend(bytes((1 << 20) - 10))
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 8 << 20)  # reserves, same size
        assert os.fstat(fd).st_size == len(data)
        # A hole across a block boundary of a block not fetched yet.
        fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, (1 << 20) - 100, 5000)
        data[(1 << 20) - 100 : (1 << 20) + 4900] = bytes(5000)
        assert os.pread(fd, len(data) + 1, 0) == data
        for mode in (FALLOC_FL_ZERO_RANGE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE):
            assert _errno_of(fallocate, fd, mode, 0, 4096) == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    mounts.umount(m)
    m = mounts.mount(drive, cache="c3")
    assert (m / "f.bin").read_bytes() == data


def test_a_write_truncate_or_chown_clears_setuid_and_setgid(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name)
    path = m / "render.sh"
    path.write_bytes(b"#!/bin/sh\n")

    def after(mode: int, change: Callable[[], object]) -> int:
        os.chmod(path, mode)
        assert stat.S_IMODE(path.stat().st_mode) == mode
        change()
        return stat.S_IMODE(path.stat().st_mode)

    def write() -> None:
        with open(path, "r+b") as f:
            f.write(b"#")

    # Setuid goes, and setgid with group execute; setgid without it (mandatory
    # locking) stays. Root writes here: the mount cannot tell who writes.
    assert after(0o6755, write) == 0o755
    assert after(0o2644, write) == 0o2644
    assert after(0o4755, lambda: os.truncate(path, 4)) == 0o755
    assert after(0o4755, lambda: open(path, "wb").close()) == 0o755
    assert after(0o6775, lambda: os.chown(path, 1234, 1234)) == 0o775
    # A chmod alone keeps them, and so does a folder's owner change.
    assert after(0o4755, lambda: os.chmod(path, 0o4750)) == 0o4750
    folder = m / "shots"
    folder.mkdir(mode=0o2775)
    os.chmod(folder, 0o2775)
    os.chown(folder, 1234, 1234)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o2775
    mounts.umount(m)
    m = mounts.mount(name)
    assert stat.S_IMODE((m / "render.sh").stat().st_mode) == 0o4750


def test_writes_are_not_preceded_by_a_request_for_security_capability(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    before = m.status()["xattr_reads"]
    with open(m / "plate.exr", "wb", buffering=0) as f:
        for _ in range(64):
            f.write(b"x" * 65536)
    # At most the first write of the file asks (then the kernel knows it has none).
    assert m.status()["xattr_reads"] - before <= 1
    assert os.getxattr(m / "plate.exr", "user.mediadrive.tier") == b"local"
    assert m.status()["xattr_reads"] - before <= 2
