"""A lookup of a name the mount holds is answered without a wait (``known_entry``);
any other goes the long way, and both give the same answer."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest

from mediadrive.node.fs import DriveFS
from mediadrive.node.tree import ROOT_INODE
from mediadrive.node.vfs import FsError
from tests.unit.node.vfs_harness import TestVFS, make_test_vfs


@pytest.fixture
async def fs(tmp_path: Path) -> AsyncIterator[TestVFS]:
    mounted = await make_test_vfs(tmp_path)
    try:
        yield mounted
    finally:
        await mounted.close()


async def test_a_file_made_here_is_answered_as_the_long_lookup_answers(fs: TestVFS) -> None:
    await fs.mkdir("shots")
    await fs.write_file("shots/a.exr", b"x" * 5000)
    folder = await fs.inode("shots")
    known = fs.vfs.known_entry(folder, "a.exr")
    assert known is not None and known.size == 5000
    assert known == await fs.vfs.lookup(folder, "a.exr")
    assert fs.parts.tree.known_path(known.inode) == "/shots/a.exr"


async def test_a_name_not_held_goes_the_long_way(fs: TestVFS) -> None:
    await fs.mkdir("shots")
    folder = await fs.inode("shots")
    assert fs.vfs.known_entry(folder, "missing.exr") is None
    assert fs.vfs.known_entry(folder, ".") is None
    with pytest.raises(FsError) as raised:
        await fs.vfs.lookup(folder, "missing.exr")
    assert raised.value.errno == errno.ENOENT
    # The long way still refuses a name the drive cannot hold.
    with pytest.raises(FsError) as raised:
        await fs.vfs.lookup(folder, "n" * 256)
    assert raised.value.errno == errno.ENAMETOOLONG


async def test_a_removed_or_renamed_file_is_no_longer_answered_by_its_old_name(
    fs: TestVFS,
) -> None:
    await fs.write_file("a.exr", b"a")
    await fs.write_file("b.exr", b"b")
    await fs.rename("a.exr", "c.exr")
    await fs.unlink("b.exr")
    assert fs.vfs.known_entry(ROOT_INODE, "a.exr") is None
    assert fs.vfs.known_entry(ROOT_INODE, "b.exr") is None
    moved = await fs.vfs.lookup(ROOT_INODE, "c.exr")
    assert fs.vfs.known_entry(ROOT_INODE, "c.exr") == moved
    assert fs.parts.tree.known_path(moved.inode) == "/c.exr"


async def test_a_folder_whose_path_is_forgotten_is_walked_up_once(fs: TestVFS) -> None:
    await fs.mkdir("a")
    await fs.mkdir("a/b")
    await fs.write_file("a/b/c.exr", b"c")
    folder = await fs.inode("a/b")
    fs.parts.tree.forget()  # as after a folder moved
    assert fs.vfs.known_entry(folder, "c.exr") is None
    found = await fs.vfs.lookup(folder, "c.exr")
    assert fs.parts.tree.known_path(found.inode) == "/a/b/c.exr"
    assert fs.vfs.known_entry(folder, "c.exr") == found


async def test_a_failure_on_the_short_way_is_answered_as_an_error(
    fs: TestVFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fs.write_file("a.exr", b"a")
    drive_fs = DriveFS(fs.vfs)

    def broken(parent_id: int, name: str) -> None:
        raise RuntimeError("entries cache broken")

    # Both ways ask the entries: the short way's failure must not escape, and the long
    # way's is answered as an error.
    monkeypatch.setattr(fs.vfs.entries, "child", broken)
    # pyfuse3's worker only survives a FUSEError: anything else would end the mount.
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await drive_fs.lookup(ROOT_INODE, b"a.exr")
    assert raised.value.errno == errno.EIO
