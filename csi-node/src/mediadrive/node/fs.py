"""The drive as a POSIX folder: pyfuse3 request handlers.

Listing and attributes come from the metadata store alone. Reads of committed content
go through the block cache; files opened for writing get a staged local copy that
commits become versions of (see :mod:`.writeback`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from mediadrive.core.drive import Drive, UploadResult
from mediadrive.core.errors import (
    AlreadyExists,
    ConflictError,
    CorruptChunk,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    MediadriveError,
    NotADirectory,
    NotFound,
    StoreUnavailable,
)
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import CommitOutcome, Node, NodeKind

from .cache import BlockCache
from .options import CommitOn, MountOptions
from .passthrough import Views
from .reading import Content, ReadAhead, read_content
from .staging import BaseBlock, StagedFile, Staging
from .tree import Tree
from .writeback import Writeback

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# How long the kernel may trust a lookup or attributes without asking again; changes
# from other machines are pushed to the kernel by the event follower anyway.
ATTR_TIMEOUT = 1.0
XATTR_VERSION = b"user.mediadrive.version"
XATTR_TIER = b"user.mediadrive.tier"
_KIND_BITS = {
    NodeKind.DIR: stat.S_IFDIR,
    NodeKind.FILE: stat.S_IFREG,
    NodeKind.SYMLINK: stat.S_IFLNK,
}
_ERRNO: list[tuple[type[Exception], int]] = [
    (AlreadyExists, errno.EEXIST),
    (DirectoryNotEmpty, errno.ENOTEMPTY),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NotFound, errno.ENOENT),
    (InvalidPath, errno.EINVAL),
    (CorruptChunk, errno.EIO),
    (StoreUnavailable, errno.EIO),
    (ConflictError, errno.EIO),
]


def errno_for(exc: Exception) -> int:
    for kind, number in _ERRNO:
        if isinstance(exc, kind):
            return number
    return errno.EIO


def fuse_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Handlers may only raise FUSEError: map everything else to an errno (and a log line)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except MediadriveError as exc:
            number = errno_for(exc)
            if number == errno.EIO:
                log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(number) from None
        except OSError as exc:
            log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class Handle:
    node_id: int
    writable: bool
    ahead: ReadAhead = field(default_factory=ReadAhead)
    # Read by the kernel from a backing file (see :mod:`.passthrough`).
    passthrough: bool = False


@dataclass
class DirHandle:
    node_id: int
    entries: list[Node] | None = None


class DriveFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(
        self,
        drive: Drive,
        tree: Tree,
        cache: BlockCache,
        staging: Staging,
        options: MountOptions,
        views: Views | None = None,
    ) -> None:
        super().__init__()
        self.views = views
        # The kernel refuses backing files on a connection with the writeback cache.
        self.enable_writeback_cache = options.writeback_cache and views is None
        self.enable_passthrough = views is not None
        self.drive = drive
        self.meta = drive.meta
        self.tree = tree
        self.cache = cache
        self.staging = staging
        self.options = options
        self.writeback = Writeback(drive, tree, staging, cache, options, self._committed)
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.open_counts: Counter[int] = Counter()
        self.contents: dict[int, Content] = {}
        # The version whose bytes the kernel's page cache holds, per node.
        self.kernel_version: dict[int, int | None] = {}
        # Versions this mount committed: the event follower skips them.
        self.own_versions: deque[tuple[int, int]] = deque(maxlen=4096)
        self._fh = itertools.count(1)
        self._stage_locks: dict[int, asyncio.Lock] = {}
        self._statfs_cache: tuple[float, int] = (0.0, 0)
        # Open files changed elsewhere: the kernel learns their new size once closed.
        self.stale: set[int] = set()
        # Bumped when a file changes elsewhere: the kernel then replaces its inode (and
        # with it the size it caches) at the next lookup.
        self.generations: Counter[int] = Counter()

    # -- attributes --------------------------------------------------------------------------

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self.tree.inode(node.id)
        entry.generation = self.generations[node.id]
        entry.entry_timeout = ATTR_TIMEOUT
        entry.attr_timeout = ATTR_TIMEOUT
        entry.st_mode = _KIND_BITS[node.kind] | stat.S_IMODE(node.mode)
        staged = self.staging.get(node.id)
        size = node.size
        mtime = node.mtime_ns
        if staged is not None and node.kind is NodeKind.FILE:
            size = staged.size()
            mtime = staged.mtime_ns
        entry.st_nlink = 2 if node.is_dir else (0 if node.deleted_ns is not None else 1)
        entry.st_uid = node.uid
        entry.st_gid = node.gid
        entry.st_rdev = 0
        entry.st_size = size
        entry.st_blksize = BLOCK_SIZE
        entry.st_blocks = (size + 511) // 512
        entry.st_atime_ns = mtime
        entry.st_mtime_ns = mtime
        entry.st_ctime_ns = max(node.ctime_ns, mtime)
        return entry

    async def _node(self, inode: int) -> Node:
        node = await self.meta.get_node(self.tree.node_id(inode))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _writable(self) -> None:
        if self.options.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent_id = self.tree.node_id(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return self.attrs(await self._node(parent_inode))
        node = await self.meta.lookup(parent_id, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        parent_path = await self.tree.path_of(parent_id)
        self.tree.remember(node.id, f"{parent_path.rstrip('/')}/{text}")
        return self.attrs(node)

    @fuse_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(await self._node(inode))

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self._node(inode)
        changes = (
            fields.update_size
            or fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_mtime
        )
        if changes:
            self._writable()
        staged = self.staging.get(node.id)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            staged = await self._stage(node, empty=attr.st_size == 0)
            await self._truncate(staged, attr.st_size)
            staged.touch()
            if fh is None and staged.writers == 0:
                self.writeback.schedule_on(CommitOn.CLOSE, node.id, "")
        meta_changes: dict[str, int] = {}
        if fields.update_mode:
            meta_changes["mode"] = stat.S_IMODE(attr.st_mode)
            if staged is not None:
                staged.mode = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            meta_changes["uid"] = attr.st_uid
        if fields.update_gid:
            meta_changes["gid"] = attr.st_gid
        if fields.update_mtime:
            # Times alone never make a new version: the kernel sends them late, on its own.
            if staged is not None:
                staged.mtime_ns = attr.st_mtime_ns
            if staged is None or not staged.dirty:
                meta_changes["mtime_ns"] = attr.st_mtime_ns
        if meta_changes:
            node = await self.meta.set_attrs(node.id, **meta_changes)
        return self.attrs(node)

    # -- folders ------------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = await self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(node.id)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        if handle.entries is None or start_id == 0:
            handle.entries = await self.meta.list_dir(handle.node_id)
            parent = await self.tree.path_of(handle.node_id)
            for node in handle.entries:
                self.tree.remember(node.id, f"{parent.rstrip('/')}/{node.name}")
        for index in range(start_id, len(handle.entries)):
            node = handle.entries[index]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(node.name), self.attrs(node), index + 1
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = await self._make(parent_inode, name, NodeKind.DIR, mode, ctx)
        return self.attrs(node)

    async def _make(
        self,
        parent_inode: int,
        name: bytes,
        kind: NodeKind,
        mode: int,
        ctx: pyfuse3.RequestContext,
        target: str | None = None,
    ) -> Node:
        parent_id = self.tree.node_id(parent_inode)
        parent_path = await self.tree.path_of(parent_id)
        text = os.fsdecode(name)
        node = await self.meta.make_node(
            parent_id,
            parent_path,
            text,
            kind,
            stat.S_IMODE(mode),
            self.drive.author,
            target=target,
            uid=ctx.uid,
            gid=ctx.gid,
        )
        self.tree.remember(node.id, f"{parent_path.rstrip('/')}/{text}")
        return node

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent_id = self.tree.node_id(parent_inode)
        node = await self.meta.lookup(parent_id, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        async with self.tree.names:
            await self.meta.remove(
                parent_id, await self.tree.path_of(parent_id), node.name, self.drive.author
            )
        self.tree.forget_one(node.id)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent_id = self.tree.node_id(parent_inode)
        node = await self.meta.lookup(parent_id, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        async with self.tree.names:
            await self.meta.remove(
                parent_id, await self.tree.path_of(parent_id), node.name, self.drive.author
            )
        self._orphan(node.id)

    def _orphan(self, node_id: int) -> None:
        """The file left the tree: its staged copy is never committed."""
        staged = self.staging.get(node_id)
        if staged is not None:
            staged.orphan = True
            if staged.writers == 0 and not staged.commit_lock.locked():
                self.staging.drop(staged)
        self.tree.forget_one(node_id)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        src_parent = self.tree.node_id(parent_inode_old)
        dst_parent = self.tree.node_id(parent_inode_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            await self._exchange(src_parent, name_old, dst_parent, name_new)
            return
        async with self.tree.names:
            src_path = await self.tree.child_path(src_parent, os.fsdecode(name_old))
            dst_path = await self.tree.child_path(dst_parent, os.fsdecode(name_new))
            existing = await self.meta.lookup(dst_parent, os.fsdecode(name_new))
            moved = await self.meta.rename(
                src_parent,
                src_path,
                dst_parent,
                dst_path,
                self.drive.author,
                replace=not flags & pyfuse3.RENAME_NOREPLACE,
            )
            if existing is not None and existing.id != moved.id:
                self._orphan(existing.id)
            if moved.is_dir:
                self.tree.forget()
            else:
                self.tree.remember(moved.id, dst_path)
        staged = self.staging.get(moved.id)
        if staged is not None:
            staged.path = dst_path

    async def _exchange(self, a_parent: int, a_name: bytes, b_parent: int, b_name: bytes) -> None:
        async with self.tree.names:
            a_path = await self.tree.child_path(a_parent, os.fsdecode(a_name))
            b_path = await self.tree.child_path(b_parent, os.fsdecode(b_name))
            a, b = await self.meta.exchange(a_parent, a_path, b_parent, b_path, self.drive.author)
            if a.is_dir or b.is_dir:
                self.tree.forget()
            else:
                self.tree.remember(a.id, b_path)
                self.tree.remember(b.id, a_path)
        for node, path in ((a, b_path), (b, a_path)):
            staged = self.staging.get(node.id)
            if staged is not None:
                staged.path = path

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = await self._make(
            parent_inode, name, NodeKind.SYMLINK, 0o777, ctx, target=os.fsdecode(target)
        )
        return self.attrs(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._node(inode)
        if node.kind is not NodeKind.SYMLINK or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        # A file has one path in a drive: hard links do not exist.
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        return self.attrs(await self._make(parent_inode, name, NodeKind.FILE, mode, ctx))

    # -- files ----------------------------------------------------------------------------------

    async def content(self, node: Node) -> Content:
        """The committed content of ``node``'s head, from memory when it is current."""
        known = self.contents.get(node.id)
        if known is not None and known.version == node.head_version:
            return known
        if node.head_version is None:
            content = Content.of(None, 0, [])
        else:
            info, extents = await self.meta.version(node.id, node.head_version)
            content = Content.of(node.head_version, info.size, extents)
        self.contents[node.id] = content
        return content

    async def _stage(self, node: Node, empty: bool = False) -> StagedFile:
        """The staged copy of a file, made when missing: the size of its head, lacking
        the head's blocks until something needs them (``empty``: no bytes at all)."""
        lock = self._stage_locks.setdefault(node.id, asyncio.Lock())
        async with lock:
            staged = self.staging.get(node.id)
            if staged is not None:
                return staged
            path = await self.tree.path_of(node.id)
            base: list[BaseBlock] = []
            size = 0
            if not empty and node.head_version is not None:
                content = await self.content(node)
                base = content.base_blocks()
                size = content.size
            return self.staging.create(
                node.id,
                path,
                node.head_version,
                stat.S_IMODE(node.mode),
                node.mtime_ns,
                base=base,
                size=size,
            )

    async def _truncate(self, staged: StagedFile, size: int) -> None:
        past = await staged.prepare_truncate(size, self.cache.get)
        if staged.copying is not None:
            await staged.copying.wait()
        os.ftruncate(staged.fd, size)
        staged.settle(past)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            self._writable()
            truncate = bool(flags & os.O_TRUNC)
            staged = await self._stage(node, empty=truncate)
            if truncate and (staged.size() or node.size):
                await self._truncate(staged, 0)
                staged.touch()
            staged.writers += 1
        elif self.staging.get(node.id) is None:
            content = await self.content(node)
            if self.views is not None:
                others = self.open_counts[node.id] - self.views.opens_of(node.id)
                backing_id = await self.views.open(node.id, content, others_open=others > 0)
                if backing_id:
                    return self._open_handle(node, writable, backing_id)
        return self._open_handle(node, writable)

    def _open_handle(self, node: Node, writable: bool, backing_id: int = 0) -> pyfuse3.FileInfo:
        fh = next(self._fh)
        self.handles[fh] = Handle(node.id, writable, passthrough=backing_id > 0)
        self.open_counts[node.id] += 1
        if backing_id:
            info = pyfuse3.FileInfo(fh=fh, keep_cache=False)
            info.backing_id = backing_id  # type: ignore[attr-defined, unused-ignore]
            return info
        known = node.id in self.kernel_version
        keep = known and self.kernel_version[node.id] == node.head_version
        if known and not keep and (node.id, node.head_version) not in self.own_versions:
            # Changed elsewhere, and the event follower has not told the kernel yet.
            self.stale.add(node.id)
        self.kernel_version[node.id] = node.head_version
        # The kernel may still hold an old size of a file changed elsewhere (the writeback
        # cache trusts its own): read around its page cache until it forgets the inode.
        direct = node.id in self.stale and not writable
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not direct, direct_io=direct)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        node = await self._make(parent_inode, name, NodeKind.FILE, mode, ctx)
        staged = self.staging.create(
            node.id, await self.tree.path_of(node.id), None, node.mode, node.mtime_ns
        )
        staged.writers += 1
        return self._open_handle(node, True), self.attrs(node)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        staged = self.staging.get(handle.node_id)
        if staged is not None:
            await staged.materialize_range(off, size, self.cache.get)
            return os.pread(staged.fd, size, off)
        content = self.contents.get(handle.node_id)
        if content is None:
            node = await self.meta.get_node(handle.node_id)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            content = await self.content(node)
        return await read_content(self.cache, content, off, size, handle.ahead)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        staged = self.staging.get(handle.node_id)
        if staged is None:
            staged = await self._stage(await self._node(self.tree.inode(handle.node_id)))
        whole = await staged.prepare_write(off, len(buf), self.cache.get)
        if staged.copying is not None:
            await staged.copying.wait()
        written = os.pwrite(staged.fd, buf, off)
        staged.settle(whole)
        staged.touch()
        return written

    async def flush(self, fh: int) -> None:
        pass

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle is None:
            return
        staged = self.staging.get(handle.node_id)
        if staged is None or staged.orphan:
            return
        await asyncio.to_thread(self.staging.sync, staged)
        if staged.dirty:
            self.writeback.schedule_on(CommitOn.FSYNC, staged.node_id, "")

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        self.open_counts[handle.node_id] -= 1
        if handle.passthrough and self.views is not None:
            self.views.release(handle.node_id)
        if self.open_counts[handle.node_id] <= 0:
            del self.open_counts[handle.node_id]
            if handle.node_id in self.stale:
                asyncio.get_running_loop().create_task(self.refresh_kernel(handle.node_id))
        if not handle.writable:
            return
        staged = self.staging.get(handle.node_id)
        if staged is None:
            return
        staged.writers = max(staged.writers - 1, 0)
        if staged.writers:
            return
        if staged.orphan:
            if not staged.commit_lock.locked():
                self.staging.drop(staged)
        elif staged.dirty:
            self.writeback.schedule_on(CommitOn.CLOSE, staged.node_id, "")
        elif not staged.commit_lock.locked():
            self.staging.drop(staged)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass

    # -- the rest --------------------------------------------------------------------------------

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stamp, used = self._statfs_cache
        if time.monotonic() - stamp > 10:
            _, used = await self.meta.chunk_stats()
            self._statfs_cache = (time.monotonic(), used)
        frsize = 4096
        total = (1 << 50) // frsize
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = frsize
        data.f_blocks = total
        data.f_bfree = data.f_bavail = max(total - used // frsize, 0)
        data.f_files = 1 << 32
        data.f_ffree = data.f_favail = 1 << 31
        data.f_namemax = 255
        return data

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._node(inode)
        if name not in (XATTR_VERSION, XATTR_TIER) or node.kind is not NodeKind.FILE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        staged = self.staging.get(node.id)
        if name == XATTR_TIER:
            if staged is not None and staged.dirty:
                return b"local"
            if node.head_version is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            info, _ = await self.meta.version(node.id, node.head_version)
            return info.tier.encode()
        if node.head_version is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return str(node.head_version).encode()

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = await self._node(inode)
        if node.kind is not NodeKind.FILE:
            return []
        staged = self.staging.get(node.id)
        names = []
        if node.head_version is not None:
            names.append(XATTR_VERSION)
        if node.head_version is not None or (staged is not None and staged.dirty):
            names.append(XATTR_TIER)
        return names

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- commits and collaborators ---------------------------------------------------------------

    def _committed(self, node_id: int, outcome: CommitOutcome, upload: UploadResult) -> None:
        self.own_versions.append((outcome.file_id, outcome.version))
        if outcome.file_id == node_id:
            self.contents[node_id] = Content.of(outcome.version, upload.size, upload.extents)
            self.kernel_version[node_id] = outcome.version
        else:
            # keep-both put our bytes elsewhere: this name shows the other writer's head.
            self.contents.pop(node_id, None)
            self.kernel_version.pop(node_id, None)
            asyncio.get_running_loop().create_task(self.refresh_kernel(node_id))

    async def refresh_kernel(self, node_id: int) -> None:
        """Make the kernel forget what it cached about a file changed elsewhere."""
        await self.invalidate_inode(node_id)
        if not self.options.writeback_cache:
            return
        if node_id in self.open_counts:
            # Open here: new opens read around the stale size until the last close.
            self.stale.add(node_id)
            return
        node = await self.meta.get_node(node_id)
        self.stale.discard(node_id)
        if node is None or node.parent_id is None or node.deleted_ns is not None:
            return
        # With the writeback cache the kernel keeps its own idea of a file's size; a new
        # generation makes it take a fresh inode (and the new size) at the next lookup.
        self.generations[node_id] += 1
        await self.invalidate_entry(node.parent_id, node.name)

    async def invalidate_inode(self, node_id: int) -> None:
        """Drop the kernel's cached attributes and pages of a node (never blocks the loop)."""
        inode = self.tree.inode(node_id)
        try:
            await asyncio.to_thread(pyfuse3.invalidate_inode, inode, False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot invalidate inode %d: %s", inode, exc)

    async def invalidate_entry(self, parent_id: int, name: str, deleted_id: int = 0) -> None:
        deleted = self.tree.inode(deleted_id) if deleted_id else 0
        try:
            await asyncio.to_thread(
                pyfuse3.invalidate_entry, self.tree.inode(parent_id), os.fsencode(name), deleted
            )
        except OSError as exc:
            log.debug("invalidate %s in %d: %s", name, parent_id, exc)
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBUSY):
                log.warning("cannot invalidate %s in %d: %s", name, parent_id, exc)
