"""The whole VFS of a mount, in process and without a kernel (no root, no /dev/fuse).

``make_test_vfs`` builds a drive on SQLite and a local folder store, a block cache,
staging, the write-back engine and the tree, and returns a :class:`TestVFS` whose
helpers take mount paths (``a/b``) the way a program would use a mounted folder.
"""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path

from mediadrive.core.config import ConflictPolicy, DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.node.assembly import MountParts, open_parts
from mediadrive.node.options import CommitOn, MountOptions
from mediadrive.node.tree import ROOT_INODE
from mediadrive.node.vfs import VFS, AttrChanges, Caller, FsError, NoKernel

CALLER = Caller(os.getuid(), os.getgid())
READ_STEP = 1 << 20


def drive_urls(base: Path) -> tuple[str, str]:
    return f"sqlite:///{base / 'meta.db'}", f"file://{base / 'store'}"


async def create_test_drive(
    base: Path,
    name: str = "media",
    chunk_size: int | str = 4096,
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS,
) -> None:
    meta_url, store_url = drive_urls(base)
    settings = DriveSettings(chunking="fixed", chunk_size=chunk_size, conflict=conflict)
    drive = await Drive.create(name, meta_url, store_url, settings)
    await drive.close()


class TestVFS:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, parts: MountParts) -> None:
        self.parts = parts
        self.vfs: VFS = parts.vfs

    async def close(self) -> None:
        """Commit what is pending and release everything (as an unmount does)."""
        await self.parts.close()

    async def follow(self) -> None:
        """Apply the changes made elsewhere since the last call, as the mount's event
        follower does within its interval."""
        while await self.parts.follower.catch_up():
            pass

    # -- paths ---------------------------------------------------------------------------------

    async def inode(self, path: str) -> int:
        inode = ROOT_INODE
        for name in [p for p in path.split("/") if p]:
            inode = (await self.vfs.lookup(inode, name)).inode
        return inode

    async def _parent(self, path: str) -> tuple[int, str]:
        folder, name = posixpath.split(path.strip("/"))
        return await self.inode(folder), name

    # -- file operations -----------------------------------------------------------------------

    async def read_file(self, path: str) -> bytes:
        inode = await self.inode(path)
        return await self.read_inode(inode, (await self.vfs.getattr(inode)).size)

    async def read_inode(self, inode: int, size: int) -> bytes:
        opened = await self.vfs.open(inode, os.O_RDONLY)
        try:
            parts = [
                await self.vfs.read(opened.fh, offset, READ_STEP)
                for offset in range(0, size, READ_STEP)
            ]
        finally:
            self.vfs.release(opened.fh)
        return b"".join(parts)

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a file, as ``open(path, "wb").write(data)`` does."""
        parent, name = await self._parent(path)
        try:
            inode = await self.inode(path)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            inode = 0
        if inode:
            opened = await self.vfs.open(inode, os.O_WRONLY | os.O_TRUNC)
        else:
            opened, _ = await self.vfs.create(parent, name, 0o644, os.O_WRONLY, CALLER)
        try:
            if data:
                await self.vfs.write(opened.fh, 0, data)
        finally:
            self.vfs.release(opened.fh)

    async def write_at(self, path: str, offset: int, data: bytes) -> None:
        opened = await self.vfs.open(await self.inode(path), os.O_RDWR)
        try:
            await self.vfs.write(opened.fh, offset, data)
        finally:
            self.vfs.release(opened.fh)

    async def truncate(self, path: str, size: int) -> None:
        await self.vfs.setattr(await self.inode(path), AttrChanges(size=size), None)

    async def mkdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.vfs.mkdir(parent, name, 0o755, CALLER)

    async def rename(self, src: str, dst: str) -> None:
        src_parent, src_name = await self._parent(src)
        dst_parent, dst_name = await self._parent(dst)
        await self.vfs.rename(src_parent, src_name, dst_parent, dst_name)

    async def unlink(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.vfs.unlink(parent, name)

    async def save(self, path: str = "/") -> None:
        await self.parts.writeback.save(self.parts.tree.to_drive(path), "")

    async def tree(self) -> tuple[dict[str, bytes], set[str]]:
        """Every file with its bytes, and every folder ("" is the root), as listed."""
        files: dict[str, bytes] = {}
        folders = {""}
        stack = [("", ROOT_INODE)]
        while stack:
            folder, inode = stack.pop()
            fh = await self.vfs.opendir(inode)
            try:
                entries = list(await self.vfs.readdir(fh, 0))
            finally:
                self.vfs.releasedir(fh)
            for entry in entries:
                path = posixpath.join(folder, entry.name) if folder else entry.name
                if entry.attrs.mode & 0o040000:
                    folders.add(path)
                    stack.append((path, entry.attrs.inode))
                else:
                    files[path] = await self.read_inode(entry.attrs.inode, entry.attrs.size)
        return files, folders


async def make_test_vfs(
    base: Path,
    *,
    name: str = "media",
    cache: str = "cache",
    chunk_size: int | str = 4096,
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS,
    commit_on: CommitOn = CommitOn.CLOSE,
    cache_size: int = 64 << 20,
    author: str = "tester@vfs",
    subdir: str = "/",
    pod_url: str | None = None,
    stream_chunks: bool = False,
) -> TestVFS:
    """A VFS on the drive in ``base`` (made on first use) with the cache ``base/cache``."""
    if not (base / "meta.db").exists():
        await create_test_drive(base, name, chunk_size, conflict)
    meta_url, store_url = drive_urls(base)
    options = MountOptions(
        drive=name,
        meta_url=meta_url,
        store_url=store_url,
        pod_url=pod_url,
        mountpoint=base / "mnt",
        cache_dir=base / cache,
        run_dir=base / "run",
        author=author,
        cache_size=cache_size,
        checkpoint_interval=None,
        commit_on=commit_on,
        subdir=subdir,
        passthrough=False,
        stream_chunks=stream_chunks,
    )
    parts = await open_parts(options, NoKernel())
    parts.start()
    # The follower is not started: a test applies the events with ``follow``.
    parts.follower.since = await parts.drive.meta.last_event_seq()
    for staged in parts.recovered:
        parts.writeback.schedule(staged.node_id)
    return TestVFS(parts)
