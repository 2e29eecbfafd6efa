"""The pyfuse3 adapter of the :class:`~.vfs.VFS`: convert, call, convert back.

Handlers turn pyfuse3's arguments into plain ones, call the VFS and turn its records
into ``EntryAttributes``/``FileInfo``; every error becomes an errno here.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3

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
    StoreFull,
    StoreUnavailable,
)
from mediadrive.core.hashing import BLOCK_SIZE

from .entries import ATTR_TIMEOUT
from .fuse_wait import HANDLING
from .vfs import VFS, AttrChanges, Attributes, Caller, FsError, OpenResult

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_ERRNO: list[tuple[type[Exception], int]] = [
    (AlreadyExists, errno.EEXIST),
    (DirectoryNotEmpty, errno.ENOTEMPTY),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NotFound, errno.ENOENT),
    (InvalidPath, errno.EINVAL),
    (CorruptChunk, errno.EIO),
    (StoreFull, errno.ENOSPC),
    (StoreUnavailable, errno.EIO),
    (ConflictError, errno.EIO),
]


def errno_for(exc: Exception) -> int:
    if isinstance(exc, FsError):
        return exc.errno
    for kind, number in _ERRNO:
        if isinstance(exc, kind):
            return number
    return errno.EIO


def fuse_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Handlers may only raise FUSEError: map everything else to an errno (and a log line)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        HANDLING.count += 1
        HANDLING.started += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
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
        finally:
            HANDLING.count -= 1

    return wrapper


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def entry_attributes(attrs: Attributes) -> pyfuse3.EntryAttributes:
    inode, generation, mode, nlink, uid, gid, size, mtime_ns, ctime_ns, rdev = attrs
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = inode
    entry.generation = generation
    entry.entry_timeout = ATTR_TIMEOUT
    entry.attr_timeout = ATTR_TIMEOUT
    entry.st_mode = mode
    entry.st_nlink = nlink
    entry.st_uid = uid
    entry.st_gid = gid
    entry.st_rdev = rdev
    entry.st_size = size
    entry.st_blksize = BLOCK_SIZE
    entry.st_blocks = (size + 511) // 512
    entry.st_atime_ns = mtime_ns
    entry.st_mtime_ns = mtime_ns
    entry.st_ctime_ns = ctime_ns
    return entry


def file_info(opened: OpenResult) -> pyfuse3.FileInfo:
    if opened.backing_id:
        info = pyfuse3.FileInfo(fh=opened.fh, keep_cache=False)
        info.backing_id = opened.backing_id  # type: ignore[attr-defined, unused-ignore]
        return info
    return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)


def caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid)


class FuseKernel:
    """Invalidations and stores through pyfuse3, off the event loop (they may block on
    the kernel, which may be waiting for a reply from it)."""

    def __init__(self) -> None:
        self._can_store = True

    async def store(self, inode: int, offset: int, data: bytes) -> bool:
        if not self._can_store:
            return False
        try:
            await asyncio.to_thread(pyfuse3.notify_store, inode, offset, data)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._can_store = False
            elif exc.errno != errno.ENOENT:
                log.warning("cannot store pages of inode %d: %s", inode, exc)
            return False
        return True

    async def invalidate_inode(self, inode: int, attr_only: bool = False) -> None:
        try:
            await asyncio.to_thread(pyfuse3.invalidate_inode, inode, attr_only)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot invalidate inode %d: %s", inode, exc)

    async def invalidate_entry(self, parent_inode: int, name: str, deleted_inode: int) -> None:
        try:
            await asyncio.to_thread(
                pyfuse3.invalidate_entry, parent_inode, os.fsencode(name), deleted_inode
            )
        except OSError as exc:
            log.debug("invalidate %s in %d: %s", name, parent_inode, exc)
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBUSY):
                log.warning("cannot invalidate %s in %d: %s", name, parent_inode, exc)


def direct_io_mmap() -> bool:
    """Whether a file some handle opened with direct_io can still be mapped shared:
    Linux 6.6 or later, and the pyfuse3 build that asks for it (the passthrough one)."""
    release = os.uname().release.split("-")[0].split(".")
    try:
        kernel = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        return False
    return kernel >= (6, 6) and hasattr(pyfuse3, "session_fd")


class DriveFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, vfs: VFS) -> None:
        super().__init__()
        self.vfs = vfs
        # The kernel refuses backing files on a connection with the writeback cache.
        self.enable_writeback_cache = vfs.options.writeback_cache and vfs.views is None
        self.enable_passthrough = vfs.views is not None
        # Setuid and setgid bits are cleared here on write, truncate and chown (see
        # VFS.clear_setid): the kernel then no longer asks for security.capability
        # before every write(2), a round trip behind the writes queued ahead of it.
        self.handle_killpriv = True
        vfs.direct_edits = self.enable_writeback_cache and direct_io_mmap()

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        # The common lookup, of a name the mount holds, is answered here: fuse_errors
        # and the await chain behind it cost as much again as the answer.
        decoded = os.fsdecode(name)
        try:
            known = self.vfs.known_entry(parent_inode, decoded)
        except Exception:  # the long way says what went wrong
            known = None
        if known is None:
            return await self._lookup(parent_inode, decoded)
        HANDLING.started += 1
        return entry_attributes(known)

    @fuse_errors
    async def _lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        return entry_attributes(await self.vfs.lookup(parent_inode, name))

    @fuse_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return entry_attributes(await self.vfs.getattr(inode))

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes = AttrChanges(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return entry_attributes(await self.vfs.setattr(inode, changes, fh))

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.vfs.opendir(inode)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        reply = pyfuse3.readdir_reply
        for name, attrs, next_id in await self.vfs.readdir(fh, start_id):
            # str.encode is what os.fsencode does, without its per-call checks.
            if not reply(
                token, name.encode(_FS_ENCODING, _FS_ERRORS), entry_attributes(attrs), next_id
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        attrs = await self.vfs.mkdir(parent_inode, os.fsdecode(name), mode, caller(ctx))
        return entry_attributes(attrs)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.rmdir(parent_inode, os.fsdecode(name))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.unlink(parent_inode, os.fsdecode(name))

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
        await self.vfs.rename(
            parent_inode_old,
            os.fsdecode(name_old),
            parent_inode_new,
            os.fsdecode(name_new),
            exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
            no_replace=bool(flags & pyfuse3.RENAME_NOREPLACE),
        )

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        attrs = await self.vfs.symlink(
            parent_inode, os.fsdecode(name), os.fsdecode(target), caller(ctx)
        )
        return entry_attributes(attrs)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self.vfs.readlink(inode))

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        # A file has one path in a drive: hard links do not exist.
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        attrs = await self.vfs.mknod(parent_inode, os.fsdecode(name), mode, caller(ctx), rdev)
        return entry_attributes(attrs)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return file_info(await self.vfs.open(inode, flags))

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        opened, attrs = await self.vfs.create(
            parent_inode, os.fsdecode(name), mode, flags, caller(ctx)
        )
        return file_info(opened), entry_attributes(attrs)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # pyfuse3 replies from any buffer (its stub says bytes): a view of a cached
        # block goes to the kernel without a copy of its own.
        return cast("bytes", await self.vfs.read(fh, off, size))

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes | memoryview) -> int:
        # With the patched pyfuse3, ``buf`` is a view of the request libfuse read,
        # valid until this returns: whatever keeps bytes past that copies them.
        return await self.vfs.write(fh, off, buf)

    @fuse_errors
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        await self.vfs.fallocate(fh, mode, offset, length)

    async def flush(self, fh: int) -> None:
        # Nothing to do at each close (release commits): ENOSYS tells the kernel to
        # stop sending flushes, one round trip less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        self.vfs.release(fh)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        used = await self.vfs.used_bytes()
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
        return await self.vfs.getxattr(inode, os.fsdecode(name))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in await self.vfs.listxattr(inode)]

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.vfs.setxattr(inode, os.fsdecode(name), value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)
