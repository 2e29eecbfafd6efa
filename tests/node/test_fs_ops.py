"""One test per POSIX operation on a real mount."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from mediadrive.core.drive import Drive
from mediadrive.core.errors import CorruptChunk

from .conftest import DriveFactory, Mounts, damage_stored_chunk, drive_call, wait_until

MiB = 1 << 20


def versions(mounts_handle_path: Path) -> list[int]:
    from mediadrive.cli.settings import cli_settings
    from mediadrive.node.client import find_mount
    from mediadrive.node.registry import MountRegistry

    found = find_mount(mounts_handle_path, MountRegistry(cli_settings().mounts_dir))
    assert found is not None
    mount_client, inner = found
    return [v["version"] for v in mount_client.versions(inner)]


def test_create_write_read_and_commit_on_close(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    data = os.urandom(3 * MiB + 17)
    (m / "a.bin").write_bytes(data)
    assert (m / "a.bin").read_bytes() == data
    assert os.stat(m / "a.bin").st_size == len(data)
    wait_until(lambda: versions(m / "a.bin") == [1])
    # Another machine reads the committed bytes.
    head = drive_call("media", lambda d: d.reader("/a.bin"))
    assert head.size == len(data)


def test_an_empty_file_created_and_closed_is_listed_with_no_version(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name)
    for index in range(20):
        os.close(os.open(m / f"empty{index}", os.O_CREAT | os.O_WRONLY, 0o640))
    assert sorted(os.listdir(m.path)) == sorted(f"empty{index}" for index in range(20))
    assert {(os.stat(p).st_size, stat.S_IMODE(os.stat(p).st_mode)) for p in m.path.iterdir()} == {
        (0, 0o640)
    }
    with pytest.raises(OSError) as raised:
        os.getxattr(m / "empty0", "user.mediadrive.version")
    assert raised.value.errno == errno.ENODATA
    # Two writers, the file's creator closing first: the other's bytes are committed.
    creator = os.open(m / "shared.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    other = os.open(m / "shared.txt", os.O_WRONLY)
    os.write(other, b"from the other writer")
    os.close(creator)
    os.close(other)
    wait_until(lambda: versions(m / "shared.txt") == [1])
    # The mount counts a commit once its transaction is back, a moment after the
    # version shows: wait for the count, then it must be that one commit alone.
    wait_until(lambda: m.status()["commits"] >= 1)
    assert m.status()["commits"] == 1
    assert versions(m / "shared.txt") == [1]
    # The empty files are in the drive itself, not only in this mount.
    mounts.umount(m)
    again = mounts.mount(name)
    assert os.stat(again / "empty7").st_size == 0
    assert (again / "shared.txt").read_bytes() == b"from the other writer"
    (again / "empty7").write_bytes(b"now with bytes")
    wait_until(lambda: versions(again / "empty7") == [1])


def test_write_at_offsets_and_append(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    path = m / "sparse.bin"
    with open(path, "wb") as f:
        f.seek(5 * MiB)
        f.write(b"tail")
    expected = bytearray(5 * MiB) + b"tail"
    assert path.read_bytes() == expected
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"middle")
    expected[1000:1006] = b"middle"
    with open(path, "ab") as f:
        f.write(b"more")
    expected += b"more"
    assert path.read_bytes() == bytes(expected)


def test_mkdir_readdir_rmdir(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    os.makedirs(m / "a" / "b" / "c")
    (m / "a" / "f.txt").write_text("x")
    assert sorted(os.listdir(m / "a")) == ["b", "f.txt"]
    assert stat.S_ISDIR(os.stat(m / "a" / "b").st_mode)
    with pytest.raises(OSError) as excinfo:
        os.rmdir(m / "a" / "b")
    assert excinfo.value.errno == errno.ENOTEMPTY
    os.rmdir(m / "a" / "b" / "c")
    os.rmdir(m / "a" / "b")
    assert os.listdir(m / "a") == ["f.txt"]
    with pytest.raises(NotADirectoryError):
        os.rmdir(m / "a" / "f.txt")


def test_rename_replaces_atomically(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    (m / "old.txt").write_text("old")
    (m / "new.tmp").write_text("new content")
    os.rename(m / "new.tmp", m / "old.txt")
    assert (m / "old.txt").read_text() == "new content"
    assert not (m / "new.tmp").exists()
    os.mkdir(m / "dir")
    (m / "dir" / "inner").write_text("inner")
    os.rename(m / "dir", m / "moved")
    assert (m / "moved" / "inner").read_text() == "inner"
    wait_until(lambda: m.status()["dirty_files"] == 0)
    # The drive agrees: one file, its history intact under the new name.
    node = drive_call("media", lambda d: d.stat("/moved/inner"))
    assert node.head_version == 1


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE), which os.rename cannot ask for."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_exchange_swaps_two_names(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    (m / "cut_a.edl").write_text("first cut")
    os.mkdir(m / "renders")
    (m / "renders" / "cut_b.edl").write_text("second cut, longer")
    wait_until(lambda: m.status()["dirty_files"] == 0)
    _exchange(m / "cut_a.edl", m / "renders" / "cut_b.edl")
    assert (m / "cut_a.edl").read_text() == "second cut, longer"
    assert (m / "renders" / "cut_b.edl").read_text() == "first cut"
    # The drive agrees, and each file keeps its own history under its new name.
    swapped = drive_call("media", lambda d: d.stat("/cut_a.edl"))
    assert (swapped.size, swapped.head_version) == (len("second cut, longer"), 1)
    # A folder cannot be swapped into itself.
    (m / "renders" / "deep.txt").write_text("x")
    with pytest.raises(OSError) as raised:
        _exchange(m / "renders", m / "renders" / "deep.txt")
    assert raised.value.errno == errno.EINVAL


def test_unlinked_open_file_is_never_committed(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    with open(m / "gone.txt", "w+b") as f:
        f.write(b"scratch")
        f.flush()
        os.unlink(m / "gone.txt")
        f.write(b" more")
        f.flush()
        f.seek(0)
        assert f.read() == b"scratch more"
    assert not (m / "gone.txt").exists()
    time.sleep(0.3)
    assert m.status()["commits"] == 0


def test_symlink_and_readlink(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    (m / "target.txt").write_text("pointed at")
    os.symlink("target.txt", m / "link")
    assert os.readlink(m / "link") == "target.txt"
    assert (m / "link").read_text() == "pointed at"
    assert stat.S_ISLNK(os.lstat(m / "link").st_mode)


def test_chmod_chown_truncate_utimens(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    path = m / "f.txt"
    path.write_bytes(b"0123456789")
    os.chmod(path, 0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.truncate(path, 4)
    assert path.read_bytes() == b"0123"
    os.truncate(path, 6)
    assert path.read_bytes() == b"0123\0\0"
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(path).st_mtime_ns == 2_000_000_000
    wait_until(lambda: m.status()["dirty_files"] == 0)
    node = drive_call("media", lambda d: d.stat("/f.txt"))
    assert (node.mode & 0o777, node.uid, node.gid, node.size) == (0o600, 1234, 5678, 6)


def test_version_and_tier_xattrs(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive(), commit_on="save")
    path = m / "x.bin"
    path.write_bytes(b"one")
    assert os.getxattr(path, "user.mediadrive.tier") == b"local"
    with pytest.raises(OSError):
        os.getxattr(path, "user.mediadrive.version")
    m.save("/x.bin")
    assert os.getxattr(path, "user.mediadrive.version") == b"1"
    assert os.getxattr(path, "user.mediadrive.tier") == b"cloud"
    assert set(os.listxattr(path)) == {"user.mediadrive.version", "user.mediadrive.tier"}
    with pytest.raises(OSError) as excinfo:
        os.setxattr(path, "user.other", b"v")
    assert excinfo.value.errno == errno.ENOTSUP


def test_xattr_namespaces_other_than_user_are_unsupported(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    path = m / "f.bin"
    path.write_bytes(b"data")
    for target in (path, m.path):
        for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
            with pytest.raises(OSError) as excinfo:
                os.getxattr(target, name)
            assert excinfo.value.errno == errno.EOPNOTSUPP, name
        with pytest.raises(OSError) as excinfo:
            os.getxattr(target, "user.other")
        assert excinfo.value.errno == errno.ENODATA
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert os.getxattr(path, "user.mediadrive.version") == b"1"


def test_statfs_and_no_hard_links(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    fs = os.statvfs(m.path)
    assert fs.f_namemax == 255 and fs.f_blocks > 0 and fs.f_bavail > 0
    (m / "a").write_text("a")
    with pytest.raises(OSError) as excinfo:
        os.link(m / "a", m / "b")
    assert excinfo.value.errno == errno.EPERM


def test_read_only_mount_refuses_writes(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    drive_call(name, lambda d: d.write_file("/r.txt", io.BytesIO(b"remote")))
    m = mounts.mount(name, read_only=True)
    assert (m / "r.txt").read_bytes() == b"remote"
    for attempt in (
        lambda: (m / "new").write_text("x"),
        lambda: os.mkdir(m / "d"),
        lambda: os.unlink(m / "r.txt"),
        lambda: open(m / "r.txt", "r+b").close(),
    ):
        with pytest.raises(OSError) as excinfo:
            attempt()
        assert excinfo.value.errno == errno.EROFS


def test_subdir_mount_shows_only_that_folder(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    drive_call(name, lambda d: d.mkdir("/proj/shots", parents=True))
    drive_call(name, lambda d: d.write_file("/proj/shots/a.txt", io.BytesIO(b"a")))
    drive_call(name, lambda d: d.write_file("/outside.txt", io.BytesIO(b"o")))
    m = mounts.mount(name, subdir="/proj")
    assert os.listdir(m.path) == ["shots"]
    (m / "shots" / "b.txt").write_text("b")
    wait_until(lambda: m.status()["dirty_files"] == 0)
    assert drive_call(name, lambda d: d.stat("/proj/shots/b.txt")).head_version == 1


def test_commit_on_save_waits_for_an_explicit_save(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive(), commit_on="save")
    (m / "s.txt").write_text("draft")
    time.sleep(0.5)
    assert versions(m / "s.txt") == [] and m.status()["dirty_files"] == 1
    (report,) = m.save("/s.txt", "done")
    assert report["committed"] and report["version"] == 1
    assert m.client().versions("/s.txt")[0]["message"] == "done"


def test_a_save_after_commit_on_close_names_that_version(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    (m / "shot.exr").write_bytes(b"final pixels")
    wait_until(lambda: versions(m / "shot.exr") == [1])
    (report,) = m.save("/shot.exr", "approved by the director")
    assert (report["version"], report["message"]) == (1, "approved by the director")
    listed = m.client().versions("/shot.exr")
    assert [(v["version"], v["message"]) for v in listed] == [(1, "approved by the director")]
    # A message someone gave stays: a second save of the same bytes does not replace it.
    m.save("/shot.exr", "again")
    assert m.client().versions("/shot.exr")[0]["message"] == "approved by the director"


def test_setting_the_save_xattr_saves_and_returns_once_saved(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive(), commit_on="save")
    (m / "shots").mkdir()
    (m / "shots" / "a.exr").write_bytes(b"frame a")
    (m / "shots" / "b.exr").write_bytes(b"frame b")
    (m / "notes.txt").write_bytes(b"notes")
    # A file: its version is recorded (with the value as its message) when setxattr
    # returns, with no wait and no call to the mount's API.
    os.setxattr(m / "shots" / "a.exr", "user.mediadrive.save", b"take 3")
    assert versions(m / "shots" / "a.exr") == [1]
    listed = m.client().versions("/shots/a.exr")
    assert [(v["version"], v["message"]) for v in listed] == [(1, "take 3")]
    assert os.getxattr(m / "shots" / "b.exr", "user.mediadrive.tier") == b"local"
    # A folder: everything under it, and nothing else.
    os.setxattr(m / "shots", "user.mediadrive.save", b"")
    assert versions(m / "shots" / "b.exr") == [1]
    assert os.getxattr(m / "notes.txt", "user.mediadrive.tier") == b"local"
    # Saving again names the version a save already made, as `mediadrive save -m` does.
    (m / "shots" / "a.exr").write_bytes(b"frame a, graded")
    os.setxattr(m / "shots" / "a.exr", "user.mediadrive.save", b"")
    os.setxattr(m / "shots" / "a.exr", "user.mediadrive.save", b"graded")
    listed = m.client().versions("/shots/a.exr")
    assert [(v["version"], v["message"]) for v in listed] == [(1, "take 3"), (2, "graded")]
    assert (m / "shots" / "a.exr").read_bytes() == b"frame a, graded"


def test_a_save_xattr_that_is_not_text_is_refused(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive(), commit_on="save")
    (m / "a.exr").write_bytes(b"frame")
    with pytest.raises(OSError) as excinfo:
        os.setxattr(m / "a.exr", "user.mediadrive.save", b"\xff\xfe")
    assert excinfo.value.errno == errno.EINVAL
    assert os.getxattr(m / "a.exr", "user.mediadrive.tier") == b"local"
    with pytest.raises(OSError) as excinfo:
        os.getxattr(m / "a.exr", "user.mediadrive.save")
    assert excinfo.value.errno == errno.ENODATA


def test_commit_on_fsync(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive(), commit_on="fsync")
    with open(m / "f.txt", "wb") as f:
        f.write(b"v1")
        f.flush()
        os.fsync(f.fileno())
        wait_until(lambda: versions(m / "f.txt") == [1])
        f.write(b" and more")
    time.sleep(0.3)
    assert versions(m / "f.txt") == [1]


def _cancelled_write_bytes(pid: int) -> int:
    """Bytes ``pid`` dirtied that were never written: their file went first."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("cancelled_write_bytes:"):
            return int(line.split()[1])
    raise AssertionError(f"no cancelled_write_bytes in /proc/{pid}/io")


def _cancelled_since(pid: int, start: int, least: int) -> bool:
    return _cancelled_write_bytes(pid) - start >= least


def test_under_commit_on_fsync_written_files_never_reach_the_cache_disk(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive(), commit_on="fsync")
    pid = m.pid()
    # A new file, then the same file written again over O_TRUNC: each copy is dropped
    # once its commit is recorded, its pages still dirty (neither written behind nor
    # flushed when the copy is closed).
    for version in (1, 2):
        start = _cancelled_write_bytes(pid)
        with open(m / "render.exr", "wb", buffering=0) as f:
            for _ in range(16):
                f.write(os.urandom(MiB))
            os.fsync(f.fileno())
        assert versions(m / "render.exr") == list(range(1, version + 1))
        wait_until(partial(_cancelled_since, pid, start, 12 * MiB))


def test_checkpoint_commits_an_open_file(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive(), commit_on="save", checkpoint_interval="0.5s")
    with open(m / "long.txt", "wb") as f:
        f.write(b"written while open")
        f.flush()
        # The kernel's writeback cache hands dirty pages over on fsync (or on its own).
        os.fsync(f.fileno())
        wait_until(lambda: versions(m / "long.txt") == [1], timeout=5)
    head = drive_call("media", lambda d: d.reader("/long.txt"))
    assert head.size == len(b"written while open")


def test_listing_fetches_no_chunk_data(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    for i in range(5):

        async def fill(d: Drive, i: int = i) -> None:
            await d.mkdir(f"/d{i}/sub", parents=True)
            await d.write_file(f"/d{i}/sub/f.bin", io.BytesIO(b"x" * MiB))

        drive_call(name, fill)
    m = mounts.mount(name)
    sizes = [os.stat(Path(root) / f).st_size for root, _, files in os.walk(m.path) for f in files]
    assert sizes == [MiB] * 5
    status = m.status()
    assert status["bytes_fetched"] == 0 and status["cache_bytes"] == 0


def test_cold_read_at_offset_fetches_only_covering_blocks(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive(chunk_size="16MiB")
    data = os.urandom(96 * MiB)
    drive_call(name, lambda d: d.write_file("/large.bin", io.BytesIO(data)))
    m = mounts.mount(name)
    with open(m / "large.bin", "rb") as f:
        f.seek(70 * MiB)
        assert f.read(MiB) == data[70 * MiB : 71 * MiB]
    fetched = m.status()["bytes_fetched"]
    assert MiB <= fetched <= 16 * MiB, fetched


def test_concurrent_readers_share_one_fetch(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    data = os.urandom(8 * MiB)
    drive_call(name, lambda d: d.write_file("/shared.bin", io.BytesIO(data)))
    m = mounts.mount(name)
    results: list[bytes] = []

    def reader() -> None:
        fd = os.open(m / "shared.bin", os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap

            buf = mmap.mmap(-1, MiB)
            os.preadv(fd, [buf], 3 * MiB)
            results.append(bytes(buf))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[3 * MiB : 4 * MiB]] * 8
    assert m.status()["bytes_fetched"] == MiB


def test_corrupt_chunk_is_an_io_error(make_drive: DriveFactory, mounts: Mounts, home: Path) -> None:
    name = make_drive()
    drive_call(name, lambda d: d.write_file("/c.bin", io.BytesIO(b"z" * (2 * MiB))))
    damage_stored_chunk(home, name, MiB + 5)
    m = mounts.mount(name)
    with open(m / "c.bin", "rb") as f:
        assert f.read(1024) == b"z" * 1024
        f.seek(MiB)
        with pytest.raises(OSError) as excinfo:
            f.read(1024)
    assert excinfo.value.errno == errno.EIO


def test_a_damaged_cached_block_is_fetched_again(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    data = os.urandom(3 * MiB)
    drive_call(name, lambda d: d.write_file("/c.bin", io.BytesIO(data)))
    m = mounts.mount(name, cache="kept")
    assert (m / "c.bin").read_bytes() == data
    mounts.umount(m)
    # Bit rot on the local disk, behind the agent's back.
    blocks = sorted((m.cache_dir / "blocks").glob("*/*.1"))
    assert len(blocks) == 1
    raw = bytearray(blocks[0].read_bytes())
    raw[77] ^= 0xFF
    blocks[0].write_bytes(bytes(raw))
    m = mounts.mount(name, mountpoint=m.path, cache="kept")
    assert (m / "c.bin").read_bytes() == data
    status = m.status()
    assert (status["cache_corrupt"], status["bytes_fetched"]) == (1, MiB)


def test_coalesced_fetch_verifies_each_block(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    data = os.urandom(16 * MiB)
    drive_call(name, lambda d: d.write_file("/run.bin", io.BytesIO(data)))
    chunk_id = damage_stored_chunk(home, name, 5 * MiB + 7)

    async def ranges(d: Drive) -> list[bytes]:
        with pytest.raises(CorruptChunk):
            await d.read_blocks(chunk_id, 2, 6)
        return await d.read_blocks(chunk_id, 6, 4)

    blocks = drive_call(name, ranges)
    assert blocks == [data[i * MiB : (i + 1) * MiB] for i in range(6, 10)]

    m = mounts.mount(name)
    # A sequential reader: read-ahead fetches runs of blocks that include the bad one.
    fd = os.open(m / "run.bin", os.O_RDONLY)
    try:
        for i in range(16):
            if i == 5:
                with pytest.raises(OSError) as excinfo:
                    os.pread(fd, MiB, i * MiB)
                assert excinfo.value.errno == errno.EIO
            else:
                assert os.pread(fd, MiB, i * MiB) == data[i * MiB : (i + 1) * MiB], i
    finally:
        os.close(fd)
    assert m.status()["bytes_fetched"] <= 16 * MiB


def test_cache_is_bounded_and_pins_stay(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    for n in ("pinned.bin", "a.bin", "b.bin"):

        async def write(d: Drive, n: str = n) -> None:
            await d.write_file(f"/{n}", io.BytesIO(os.urandom(4 * MiB)))

        drive_call(name, write)
    m = mounts.mount(name, cache_size="6MiB")
    result = m.client().pin("/pinned.bin")
    assert result["bytes_fetched"] == 4 * MiB
    for n in ("a.bin", "b.bin"):
        (m / n).read_bytes()
    status = m.status()
    assert status["pinned_bytes"] == 4 * MiB
    assert status["cache_bytes"] <= 6 * MiB
    m.client().unpin("/pinned.bin")
    assert m.status()["pinned_bytes"] == 0


def test_cache_is_kept_across_remounts(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive()
    data = os.urandom(5 * MiB)
    drive_call(name, lambda d: d.write_file("/k.bin", io.BytesIO(data)))
    m = mounts.mount(name, cache="keep")
    assert (m / "k.bin").read_bytes() == data
    assert m.status()["bytes_fetched"] == 5 * MiB
    mounts.umount(m)
    m = mounts.mount(name, mountpoint=m.path, cache="keep")
    assert (m / "k.bin").read_bytes() == data
    assert m.status()["bytes_fetched"] == 0
