"""The drive as a POSIX file system, apart from FUSE.

Listing and attributes come from the metadata store alone. Reads of committed content
go through the block cache; files opened for writing get a staged local copy that the
write-back engine (see :mod:`.writeback`) commits as versions.

Methods take inode numbers, names as ``str`` and plain flags, return plain records
(:class:`Attributes`, :class:`OpenResult`) and raise project errors (:class:`FsError`
carries an errno); :mod:`.fs` adapts them to pyfuse3. What the kernel caches is
invalidated through an injected :class:`Kernel`.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import stat
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from mediadrive.core.buffers import ALIGNMENT, direct_io_ready
from mediadrive.core.drive import Drive, UploadResult
from mediadrive.core.errors import CorruptChunk, MediadriveError, PathNotFound
from mediadrive.core.extents import BlockRef, ExtentMap
from mediadrive.core.meta import CommitOutcome, Node, NodeKind

from .base_layout import BaseLayout
from .cache import BlockCache
from .entries import Entries
from .options import CommitOn, MountOptions
from .reading import ReadAhead, read_content
from .staging import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    WRITE_BEHIND,
    StagedFile,
    Staging,
    fallocate,
)
from .tree import Tree
from .writeback import Writeback

if TYPE_CHECKING:
    # Only a type here: the VFS itself never touches pyfuse3.
    from .passthrough import Views

log = logging.getLogger(__name__)
_T = TypeVar("_T")

XATTR_VERSION = "user.mediadrive.version"
XATTR_TIER = "user.mediadrive.tier"
# Setting it saves the file (or everything under the folder), its value the message.
XATTR_SAVE = "user.mediadrive.save"
# What Linux answers for a missing extended attribute (ENOATTR elsewhere).
ENOATTR = errno.ENODATA
STATFS_REFRESH = 10.0
# Own deletes and renames remembered until their events come back.
_OWN_CHANGES = 4096
# What statfs advertises (f_namemax) and what every name is held to.
NAME_MAX = 255


def check_name(name: str) -> None:
    """Refuse a name the drive cannot store: longer than NAME_MAX bytes (it could never
    be committed), or not UTF-8 (the kernel's bytes arrive surrogate-escaped, and the
    metadata stores keep text)."""
    raw = os.fsencode(name)
    if len(raw) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not _utf8(raw):
        raise FsError(errno.EILSEQ)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class FsError(MediadriveError):
    """A file-system request refused with a specific errno."""

    def __init__(self, number: int, message: str = "") -> None:
        super().__init__(message or os.strerror(number))
        self.errno = number


class Kernel(Protocol):
    """What the VFS asks of the kernel: forget what it cached about a node or a name,
    or keep bytes of a file in its page cache."""

    async def invalidate_inode(self, inode: int, attr_only: bool = False) -> None: ...

    async def invalidate_entry(self, parent_inode: int, name: str, deleted_inode: int) -> None: ...

    async def store(self, inode: int, offset: int, data: bytes) -> bool:
        """Put ``data`` in the page cache of ``inode`` at ``offset``; False if the kernel
        cannot (then nothing more is sent)."""
        ...


class NoKernel:
    """No kernel caches to invalidate (the VFS used in process, by tests)."""

    async def invalidate_inode(self, inode: int, attr_only: bool = False) -> None:
        pass

    async def invalidate_entry(self, parent_inode: int, name: str, deleted_inode: int) -> None:
        pass

    async def store(self, inode: int, offset: int, data: bytes) -> bool:
        return False


class Attributes(NamedTuple):
    """What the kernel is told of a node (a tuple: a listing makes one per entry)."""

    inode: int
    generation: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0


@dataclass(frozen=True)
class OpenResult:
    fh: int
    keep_cache: bool = False
    direct_io: bool = False
    # Non-zero: the kernel reads the file from this backing file (see :mod:`.passthrough`).
    backing_id: int = 0


@dataclass(frozen=True)
class Caller:
    uid: int = 0
    gid: int = 0


# What a change of a file's bytes or owner may clear (see without_setid).
_SETID = stat.S_ISUID | stat.S_ISGID


def without_setid(mode: int) -> int:
    """``mode`` less what a write, truncate or chown clears: setuid, and setgid where
    group execute is set (without it, setgid marks mandatory locking, and stays)."""
    if mode & stat.S_IXGRP:
        return mode & ~_SETID
    return mode & ~stat.S_ISUID


@dataclass(frozen=True)
class AttrChanges:
    """What a setattr asks to change; None leaves a field as it is."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.size, self.mode, self.uid, self.gid, self.mtime_ns))


# A named tuple made without its generated __new__ (a Python frame per call): what a
# listing makes once per entry. The fields are given in order, all of them.
if TYPE_CHECKING:

    def _new_tuple(cls: type[_T], fields: tuple[Any, ...]) -> _T: ...

else:
    _new_tuple = tuple.__new__


class DirEntry(NamedTuple):
    name: str
    attrs: Attributes
    # Where the listing goes on after this entry.
    next_id: int


@dataclass
class Handle:
    node_id: int
    writable: bool
    ahead: ReadAhead = field(default_factory=ReadAhead)
    passthrough: bool = False
    # Counted in the staged copy's writers. Every writable handle is while its file
    # has a staged copy; one from a create is not until the file is staged.
    stages: bool = False


@dataclass
class DirHandle:
    node_id: int
    entries: list[Node] | None = None


def _unchanged_dropped(changes: dict[str, int], node: Node) -> dict[str, int]:
    """The changes that change something: the kernel also sends times it only kept."""
    return {key: value for key, value in changes.items() if getattr(node, key) != value}


_KIND_BITS = {
    NodeKind.DIR: stat.S_IFDIR,
    NodeKind.FILE: stat.S_IFREG,
    NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.FIFO: stat.S_IFIFO,
    NodeKind.CHAR: stat.S_IFCHR,
    NodeKind.BLOCK: stat.S_IFBLK,
    NodeKind.SOCKET: stat.S_IFSOCK,
}
# What mknod(2) makes, by file type: nodes the kernel serves itself (it never asks us
# to open them), kept as metadata only.
_MKNOD_KINDS = {
    stat.S_IFREG: NodeKind.FILE,
    stat.S_IFIFO: NodeKind.FIFO,
    stat.S_IFCHR: NodeKind.CHAR,
    stat.S_IFBLK: NodeKind.BLOCK,
    stat.S_IFSOCK: NodeKind.SOCKET,
}


class VFS:
    def __init__(
        self,
        drive: Drive,
        tree: Tree,
        cache: BlockCache,
        staging: Staging,
        writeback: Writeback,
        options: MountOptions,
        kernel: Kernel,
        views: Views | None = None,
    ) -> None:
        self.drive = drive
        self.meta = drive.meta
        self.tree = tree
        self.cache = cache
        self.staging = staging
        self.writeback = writeback
        self.options = options
        self.kernel = kernel
        self.views = views
        writeback.on_commit.append(self._committed)
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.open_counts: Counter[int] = Counter()
        self._contents: dict[int, ExtentMap] = {}
        # The version whose bytes the kernel's page cache holds, per node.
        self._kernel_version: dict[int, int | None] = {}
        # Versions this mount committed: the event follower skips them.
        self._own_versions: deque[tuple[int, int]] = deque(maxlen=4096)
        # Deletes and renames this mount made, by (event kind, node id), until the event
        # follower meets them: the kernel knows of them already.
        self._own_changes: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._fh = itertools.count(1)
        self._stage_locks: dict[int, asyncio.Lock] = {}
        self._statfs_cache: tuple[float, int] = (0.0, 0)
        # Open files changed elsewhere: the kernel learns their new size once closed.
        self._stale: set[int] = set()
        # Bumped when a file changes elsewhere: the kernel then replaces its inode (and
        # with it the size it caches) at the next lookup.
        self._generations: Counter[int] = Counter()
        # The head version whose size the kernel's inode of a file holds, per node. With
        # the writeback cache the kernel takes a file's size only when it makes the inode
        # (an entry reply with a generation it has not seen) and keeps it after: this is
        # recorded at the first entry reply of each generation, and a file whose head is
        # another version is read around the kernel's size (see ``_open_handle``).
        self._kernel_sized: dict[int, int | None] = {}
        # Answers the kernel's lookups and getattrs without a metadata round trip.
        self.entries = Entries()
        # Held while bytes go into a file's page cache and while it is told to drop
        # them, so that a drop never comes before a store of the bytes it replaces.
        self._page_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.pages_stored = 0
        self.xattr_reads = 0
        # Handles that edit a file in place skip the page cache (see ``open``); set by
        # the FUSE layer where the kernel still allows shared mmap of such files.
        self.direct_edits = False
        # The mount's save (mount path, message), for a save asked through setxattr:
        # one request to the file system, no connection to the mount's API.
        self.saver: Callable[[str, str], Awaitable[object]] | None = None

    # -- attributes --------------------------------------------------------------------------

    def attrs(self, node: Node) -> Attributes:
        # Made once per entry of a listing, whose cost is mostly this: the fields are
        # read once each and the tuple made directly (see _new_tuple).
        node_id = node.id
        kind = node.kind
        size = node.size
        mtime = node.mtime_ns
        if kind is NodeKind.DIR:
            # A folder is linked from its parent, from its own "." and from each
            # subfolder's "..", as on ext4.
            nlink = 2 + node.subdirs
        else:
            nlink = 0 if node.deleted_ns is not None else 1
            staged = self.staging.get(node_id)
            if staged is not None and kind is NodeKind.FILE:
                size = staged.size()
                mtime = staged.mtime_ns
        return _new_tuple(
            Attributes,
            (
                self.tree.inode(node_id),
                self._generations.get(node_id, 0),
                _KIND_BITS[kind] | (node.mode & 0o7777),
                nlink,
                node.uid,
                node.gid,
                size,
                mtime,
                node.ctime_ns if node.ctime_ns > mtime else mtime,
                node.rdev,
            ),
        )

    async def _node(self, inode: int) -> Node:
        node = await self.meta.get_node(self.tree.node_id(inode))
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def _writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS)

    def known_entry(self, parent_inode: int, name: str) -> Attributes | None:
        """The lookup of a child the mount holds, with its folder's path: answered
        without a wait (a ``stat`` of every file in a folder is a lookup each). None
        when the lookup has to go the long way."""
        parent_id = self.tree.node_id(parent_inode)
        # The path first: a lookup that goes the long way asks the entries once.
        parent_path = self.tree.known_path(parent_id)
        if parent_path is None:
            return None
        node = self.entries.child(parent_id, name)
        if node is None:
            return None
        # A name held as a child passed check_name when it was made or read.
        self.tree.remember(node.id, f"{parent_path.rstrip('/')}/{name}")
        return self._entry(node)

    async def lookup(self, parent_inode: int, name: str) -> Attributes:
        parent_id = self.tree.node_id(parent_inode)
        if name == ".":
            return self.attrs(await self._node(parent_inode))
        check_name(name)
        node = self.entries.child(parent_id, name)
        if node is None:
            if self.entries.absent(parent_id, name):
                raise FsError(errno.ENOENT)
            read_at = self.entries.epoch
            node = await self.meta.lookup(parent_id, name)
            if node is None:
                raise FsError(errno.ENOENT)
            self.entries.put(node, read_at)
        parent_path = await self.tree.path_of(parent_id)
        self.tree.remember(node.id, f"{parent_path.rstrip('/')}/{name}")
        return self._entry(node)

    def _entry(self, node: Node) -> Attributes:
        """The attributes of an entry reply (lookup, readdirplus, create): the kernel may
        make its inode of ``node`` from them."""
        if node.kind is NodeKind.FILE:
            self._kernel_sized.setdefault(node.id, node.head_version)
        return self.attrs(node)

    async def getattr(self, inode: int) -> Attributes:
        node = self.entries.node(self.tree.node_id(inode))
        if node is None:
            read_at = self.entries.epoch
            node = await self._node(inode)
            self.entries.put(node, read_at)
        return self.attrs(node)

    async def setattr(self, inode: int, changes: AttrChanges, fh: int | None) -> Attributes:
        node = await self._node(inode)
        if changes.any:
            self._writable()
        cleared = without_setid(node.mode)
        if (
            changes.mode is None
            and (changes.size is not None or changes.uid is not None or changes.gid is not None)
            and not node.is_dir
            and cleared != node.mode
        ):
            # The reply carries the new mode: the kernel takes it from there.
            changes = replace(changes, mode=cleared)
        staged = self.staging.get(node.id)
        if changes.size is not None:
            staged = await self._resize(node, changes.size, fh)
            await self._pages_settled(node.id)
        meta_changes = _unchanged_dropped(self._apply_attr_changes(changes, staged), node)
        # A removed file's attributes are nobody's business any more: the kernel sends
        # the times it kept of an unlinked inode as it lets it go.
        if meta_changes and node.deleted_ns is None:
            # Noted first: the event follower may meet the event before this resumes.
            # What is known of the node stays until the new attributes replace it (its
            # folder stays complete here); a read meanwhile is not kept.
            self.note_own_change("attrs", node.id)
            self.entries.changing()
            try:
                node = await self.meta.set_attrs(
                    node.id,
                    **meta_changes,
                    path=await self._path_or_blank(node.id),
                    actor=self.drive.author,
                )
            except BaseException:
                self.take_own_change("attrs", node.id)
                self.entries.drop(node.id)
                raise
            self.entries.put(node)
        return self.attrs(node)

    async def _resize(self, node: Node, size: int, fh: int | None) -> StagedFile:
        """Truncate (or extend) the staged copy of a file to ``size``, staging it first."""
        if node.is_dir:
            raise FsError(errno.EISDIR)
        staged = await self._stage(node, empty=size == 0)
        await self._truncate(staged, size)
        staged.touch()
        # A truncate by path: no handle will close to commit it, so do what a close would.
        if fh is None and staged.writers == 0:
            self.writeback.schedule_on(CommitOn.CLOSE, node.id, "")
        return staged

    async def _path_or_blank(self, node_id: int) -> str:
        """A node's drive path for an event, or "" when it is in no folder now."""
        try:
            return await self.tree.path_of(node_id)
        except PathNotFound:
            return ""

    @staticmethod
    def _apply_attr_changes(changes: AttrChanges, staged: StagedFile | None) -> dict[str, int]:
        """Set mode and mtime on the staged copy, if any; returns what goes to the metadata."""
        meta_changes: dict[str, int] = {}
        if changes.mode is not None:
            meta_changes["mode"] = stat.S_IMODE(changes.mode)
            if staged is not None:
                staged.mode = stat.S_IMODE(changes.mode)
        if changes.uid is not None:
            meta_changes["uid"] = changes.uid
        if changes.gid is not None:
            meta_changes["gid"] = changes.gid
        if changes.mtime_ns is not None:
            # Times alone never make a new version: the kernel sends them late, on its own.
            if staged is not None:
                staged.mtime_ns = changes.mtime_ns
            if staged is None or not staged.dirty:
                meta_changes["mtime_ns"] = changes.mtime_ns
        return meta_changes

    # -- folders ------------------------------------------------------------------------------

    async def opendir(self, inode: int) -> int:
        # No query: the kernel opens only what it knows to be a folder, and a folder
        # removed meanwhile lists empty.
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(self.tree.node_id(inode))
        return fh

    async def readdir(self, fh: int, start_id: int) -> Iterator[DirEntry]:
        """The entries of an open folder from ``start_id`` on (0: list it afresh), made
        as they are taken: the kernel takes a few dozen per request."""
        handle = self.dirs[fh]
        if handle.entries is None or start_id == 0:
            handle.entries = self.entries.listing(handle.node_id)
        if handle.entries is None:
            read_at = self.entries.epoch
            handle.entries = await self.meta.list_dir(handle.node_id)
            parent = await self.tree.path_of(handle.node_id)
            for node in handle.entries:
                self.tree.remember(node.id, f"{parent.rstrip('/')}/{node.name}")
                self.entries.put(node, read_at)
            self.entries.complete(handle.node_id, read_at)
        entries = handle.entries
        entry = self._entry
        return (
            _new_tuple(DirEntry, (node.name, entry(node), index))
            for index, node in enumerate(entries[start_id:], start_id + 1)
        )

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def mkdir(self, parent_inode: int, name: str, mode: int, caller: Caller) -> Attributes:
        self._writable()
        return self.attrs(await self._make(parent_inode, name, NodeKind.DIR, mode, caller))

    async def _make(
        self,
        parent_inode: int,
        name: str,
        kind: NodeKind,
        mode: int,
        caller: Caller,
        target: str | None = None,
        rdev: int = 0,
    ) -> Node:
        check_name(name)
        parent_id = self.tree.node_id(parent_inode)
        parent_path = await self.tree.path_of(parent_id)
        node = await self.meta.make_node(
            parent_id,
            parent_path,
            name,
            kind,
            stat.S_IMODE(mode),
            self.drive.author,
            target=target,
            uid=caller.uid,
            gid=caller.gid,
            rdev=rdev,
        )
        self.tree.remember(node.id, f"{parent_path.rstrip('/')}/{name}")
        self.note_own_change("made", node.id)
        self.entries.folder_changed(parent_id, node.ctime_ns, 1 if node.is_dir else 0)
        self.entries.put(node)
        if node.is_dir:
            self.entries.complete(node.id)
        return node

    async def rmdir(self, parent_inode: int, name: str) -> None:
        node = await self._remove(parent_inode, name, folder=True)
        self.tree.forget_one(node.id)

    async def unlink(self, parent_inode: int, name: str) -> None:
        node = await self._remove(parent_inode, name, folder=False)
        self.forget_content(node.id)
        self._orphan(node.id)

    async def _remove(self, parent_inode: int, name: str, folder: bool) -> Node:
        """Remove a child that must be a folder (rmdir) or must not be one (unlink)."""
        self._writable()
        check_name(name)
        parent_id = self.tree.node_id(parent_inode)
        async with self.tree.names:
            parent_path = await self.tree.path_of(parent_id)
            node = await self.meta.remove(
                parent_id, parent_path, name, self.drive.author, folder=folder
            )
        self.note_own_change("delete", node.id)
        # The removed node replaces what was known of it, kept by id (the kernel may
        # still ask after an inode it holds): its folder stays complete here.
        self.entries.put(node)
        if node.deleted_ns is not None:
            self.entries.folder_changed(parent_id, node.deleted_ns, -1 if node.is_dir else 0)
        return node

    def _orphan(self, node_id: int) -> None:
        """The file left the tree: its staged copy is never committed."""
        staged = self.staging.get(node_id)
        if staged is not None:
            staged.orphan = True
            if staged.writers == 0 and not staged.commit_lock.locked():
                self.staging.drop(staged)
        self.tree.forget_one(node_id)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: str,
        parent_inode_new: int,
        name_new: str,
        *,
        exchange: bool = False,
        no_replace: bool = False,
    ) -> None:
        self._writable()
        check_name(name_old)
        check_name(name_new)
        src_parent = self.tree.node_id(parent_inode_old)
        dst_parent = self.tree.node_id(parent_inode_new)
        if exchange:
            await self._exchange(src_parent, name_old, dst_parent, name_new)
            return
        async with self.tree.names:
            src_path = await self.tree.child_path(src_parent, name_old)
            dst_path = await self.tree.child_path(dst_parent, name_new)
            existing = await self.meta.lookup(dst_parent, name_new)
            moved = await self.meta.rename(
                src_parent,
                src_path,
                dst_parent,
                dst_path,
                self.drive.author,
                replace=not no_replace,
            )
            self.note_own_change("rename", moved.id)
            # Names and folder times moved on both sides.
            self.entries.clear()
            if existing is not None and existing.id != moved.id:
                self._orphan(existing.id)
            if moved.is_dir:
                self.tree.forget()
            else:
                self.tree.remember(moved.id, dst_path)
        staged = self.staging.get(moved.id)
        if staged is not None:
            staged.path = dst_path

    async def _exchange(self, a_parent: int, a_name: str, b_parent: int, b_name: str) -> None:
        async with self.tree.names:
            a_path = await self.tree.child_path(a_parent, a_name)
            b_path = await self.tree.child_path(b_parent, b_name)
            a, b = await self.meta.exchange(a_parent, a_path, b_parent, b_path, self.drive.author)
            self.note_own_change("rename", a.id)
            self.note_own_change("rename", b.id)
            self.entries.clear()
            if a.is_dir or b.is_dir:
                self.tree.forget()
            else:
                self.tree.remember(a.id, b_path)
                self.tree.remember(b.id, a_path)
        for node, path in ((a, b_path), (b, a_path)):
            staged = self.staging.get(node.id)
            if staged is not None:
                staged.path = path

    async def symlink(
        self, parent_inode: int, name: str, target: str, caller: Caller
    ) -> Attributes:
        self._writable()
        if not _utf8(os.fsencode(target)):
            # A target that is not UTF-8 cannot be stored as text either.
            raise FsError(errno.EILSEQ)
        node = await self._make(parent_inode, name, NodeKind.SYMLINK, 0o777, caller, target)
        return self.attrs(node)

    async def readlink(self, inode: int) -> str:
        node = await self._node(inode)
        if node.kind is not NodeKind.SYMLINK or node.target is None:
            raise FsError(errno.EINVAL)
        return node.target

    async def mknod(
        self, parent_inode: int, name: str, mode: int, caller: Caller, rdev: int = 0
    ) -> Attributes:
        self._writable()
        kind = _MKNOD_KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            raise FsError(errno.EINVAL)
        rdev = rdev if kind in (NodeKind.CHAR, NodeKind.BLOCK) else 0
        return self._entry(await self._make(parent_inode, name, kind, mode, caller, rdev=rdev))

    # -- files ----------------------------------------------------------------------------------

    async def content(self, node: Node) -> ExtentMap:
        """The committed content of ``node``'s head, from memory when it is current."""
        known = self._contents.get(node.id)
        if known is not None and known.version == node.head_version:
            return known
        if node.head_version is None:
            content = ExtentMap.of(None, 0, [])
        else:
            info, extents = await self.meta.version(node.id, node.head_version)
            content = ExtentMap.of(node.head_version, info.size, extents)
        self._contents[node.id] = content
        return content

    async def _stage(self, node: Node, empty: bool = False) -> StagedFile:
        """The staged copy of a file, made when missing: the size of its head, lacking
        the head's blocks until something needs them (``empty``: no bytes at all)."""
        lock = self._stage_locks.setdefault(node.id, asyncio.Lock())
        async with lock:
            staged = self.staging.get(node.id)
            if staged is not None:
                return staged
            # Removed while open (a new file is staged at its first write, which the
            # kernel may send after an unlink): a copy that is never committed.
            removed = node.deleted_ns is not None
            path = "" if removed else await self.tree.path_of(node.id)
            base: BaseLayout | None = None
            size = 0
            if not empty and node.head_version is not None:
                content = await self.content(node)
                base = BaseLayout.of(content)
                size = content.size
            staged = self.staging.create(
                node.id,
                path,
                node.head_version,
                stat.S_IMODE(node.mode),
                node.mtime_ns,
                base=base,
                size=size,
            )
            staged.orphan = removed
            for handle in self.handles.values():
                if handle.node_id == node.id and handle.writable and not handle.stages:
                    handle.stages = True
                    staged.writers += 1
            return staged

    async def _truncate(self, staged: StagedFile, size: int) -> None:
        past = await staged.prepare_truncate(size, self.cache.get)
        await staged.held_back()
        if size or staged.size():
            # An empty copy is not cut to 0 again: ext4 would flush it on close (see
            # Staging.create).
            os.ftruncate(staged.fd, size)
        staged.settle(past)
        if size == 0 and staged.failed:
            # Emptied: whatever a failed write left behind is gone, start over.
            staged.failed = ""
            self.staging.write_journal(staged)

    async def open(self, inode: int, flags: int) -> OpenResult:
        node = await self._node(inode)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            self._writable()
            truncate = bool(flags & os.O_TRUNC)
            if truncate:
                await self.clear_setid(inode, node.mode)
            staged = await self._stage(node, empty=truncate)
            if truncate and (staged.size() or node.size):
                await self._truncate(staged, 0)
                staged.touch()
            # The copy exists now, so no store into the page cache starts; one under
            # way ends before the writer can dirty a page.
            await self._pages_settled(node.id)
            staged.writers += 1
            # Through the writeback cache, a write that covers a page in part makes the
            # kernel read that page first: an edit of a remote file would wait for the
            # blocks around it. A direct handle hands the agent the bytes as written.
            edit = self.direct_edits and not truncate and node.size > 0
            return self._open_handle(node, writable, stages=True, direct=edit)
        if self.staging.get(node.id) is None:
            content = await self.content(node)
            if self.views is not None:
                others = self.open_counts[node.id] - self.views.opens_of(node.id)
                backing_id = await self.views.open(node.id, content, others_open=others > 0)
                if backing_id:
                    return self._open_handle(node, writable, backing_id)
        return self._open_handle(node, writable)

    def _open_handle(
        self,
        node: Node,
        writable: bool,
        backing_id: int = 0,
        stages: bool = False,
        direct: bool = False,
    ) -> OpenResult:
        fh = next(self._fh)
        self.handles[fh] = Handle(node.id, writable, passthrough=backing_id > 0, stages=stages)
        self.open_counts[node.id] += 1
        if backing_id:
            return OpenResult(fh, keep_cache=False, backing_id=backing_id)
        known = node.id in self._kernel_version
        keep = known and self._kernel_version[node.id] == node.head_version
        if known and not keep and (node.id, node.head_version) not in self._own_versions:
            # Changed elsewhere, and the event follower has not told the kernel yet.
            self._stale.add(node.id)
        if (
            self.options.writeback_cache
            and self._kernel_sized.get(node.id, -1) != node.head_version
        ):
            # The kernel's inode holds the size of another version, or predates the last
            # new generation (a restore here, a commit elsewhere): its reads would stop at
            # that size or pad to it.
            self._stale.add(node.id)
        self._kernel_version[node.id] = node.head_version
        # The kernel may still hold an old size of a file changed elsewhere (the writeback
        # cache trusts its own): read around its page cache until it forgets the inode.
        direct = direct or (node.id in self._stale and not writable)
        return OpenResult(fh, keep_cache=keep and not direct, direct_io=direct)

    async def create(
        self, parent_inode: int, name: str, mode: int, flags: int, caller: Caller
    ) -> tuple[OpenResult, Attributes]:
        self._writable()
        node = await self._make(parent_inode, name, NodeKind.FILE, mode, caller)
        # No staged copy yet: a new file is recorded empty, and one closed without a
        # write stays so. The first write (or truncate) stages it.
        # The entry first: the kernel makes its inode from this reply, so the handle
        # must not take the file for one whose size the kernel does not know.
        attributes = self._entry(node)
        return self._open_handle(node, True), attributes

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        try:
            return await self._read(fh, offset, size)
        except CorruptChunk as exc:
            # EIO for the reader; the log names what is damaged and where.
            node_id = self.handles[fh].node_id
            try:
                path = await self.tree.path_of(node_id)
            except MediadriveError:
                path = f"(node {node_id})"
            where = exc.offset if exc.offset is not None else offset
            log.error(
                "cannot read %s at offset %d: chunk %s is damaged: %s", path, where, exc.chunk, exc
            )
            raise

    async def _read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self.handles[fh]
        staged = self.staging.get(handle.node_id)
        while staged is not None:
            await staged.materialize_range(offset, size, self.cache.get)
            # A commit that finished meanwhile may have dropped the copy (its bytes are
            # the head's now): read that copy only while it is still the file's.
            if self.staging.get(handle.node_id) is staged:
                return os.pread(staged.fd, size, offset)
            staged = self.staging.get(handle.node_id)
        content = self._contents.get(handle.node_id)
        if content is None:
            node = await self.meta.get_node(handle.node_id)
            if node is None:
                raise FsError(errno.ENOENT)
            content = await self.content(node)
        node_id = handle.node_id
        return await read_content(
            self.cache,
            content,
            offset,
            size,
            handle.ahead,
            # A background fill of the file stops once it has a new version.
            lambda: self._contents.get(node_id) is content,
            lambda blocks: self._store_pages(node_id, content, blocks),
        )

    def _page_lock(self, node_id: int) -> asyncio.Lock:
        lock = self._page_locks.get(node_id)
        if lock is None:
            lock = self._page_locks[node_id] = asyncio.Lock()
        return lock

    async def _store_pages(self, node_id: int, content: ExtentMap, blocks: list[BlockRef]) -> None:
        """A file filled into the block cache for a random reader goes into the kernel's
        page cache as well: its later reads never reach the agent."""
        inode = self.tree.inode(node_id)
        for block in blocks:
            async with self._page_lock(node_id):
                if not self._may_store_pages(node_id, content):
                    return
                try:
                    data = await self.cache.view(block.chunk_id, block.block)
                except MediadriveError:
                    return
                piece = bytes(content.slice_of(block, memoryview(data), block.start, content.size))
                if not await self.kernel.store(inode, block.start, piece):
                    return
                self.pages_stored += len(piece)

    def _may_store_pages(self, node_id: int, content: ExtentMap) -> bool:
        """Whether the kernel's page cache of the file may take ``content``'s bytes: it
        is still the file's head, the kernel's inode holds its version and size, and no
        one here writes the file (a store would overwrite pages written since)."""
        return (
            self._contents.get(node_id) is content
            and self._kernel_version.get(node_id, -1) == content.version
            and (
                not self.options.writeback_cache
                or self._kernel_sized.get(node_id, -1) == content.version
            )
            and node_id not in self._stale
            and self.staging.get(node_id) is None
            and not any(h.node_id == node_id and h.writable for h in self.handles.values())
        )

    async def _pages_settled(self, node_id: int) -> None:
        """Wait for a store into the file's page cache under way (before a change)."""
        async with self._page_lock(node_id):
            pass

    async def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        handle = self.handles[fh]
        staged = self.staging.get(handle.node_id)
        if staged is None:
            staged = await self._stage(await self._node(self.tree.inode(handle.node_id)))
        try:
            # A block the write covers in part is copied in from the cache, not fetched
            # for it (see staging).
            whole = await staged.prepare_write(
                offset, len(data), self.cache.get, local=self.cache.at_hand
            )
            await staged.held_back(direct=True)
            written, direct = await self._write_into(staged, offset, data)
        except OSError as exc:
            self._write_failed(staged, exc)
            raise
        staged.settle(whole + staged.whole_in_parts(offset, written))
        staged.touch(offset, written)
        self.staging.wrote(staged, written - direct)
        if staged.mode & _SETID:
            await self.clear_setid(self.tree.inode(handle.node_id), staged.mode)
        return written

    async def clear_setid(self, inode: int, mode: int) -> None:
        """After a write or a truncate: clear the file's setuid and setgid bits, as the
        kernel would for a writer without CAP_FSETID (the mount asks it to leave that
        here, see ``DriveFS.handle_killpriv``; what the writer may do is not known
        here, so the bits go whoever writes)."""
        cleared = without_setid(mode)
        if cleared != mode:
            await self.setattr(inode, AttrChanges(mode=cleared), None)
            self._attrs_changed(inode)

    def _attrs_changed(self, inode: int) -> None:
        """The kernel's attributes of ``inode`` are stale: it asks again (told from a
        task, not from inside the request it may be serving)."""
        asyncio.get_running_loop().create_task(self.kernel.invalidate_inode(inode, attr_only=True))

    async def _write_into(
        self, staged: StagedFile, offset: int, data: bytes | memoryview
    ) -> tuple[int, int]:
        """Write ``data`` into the copy; returns the bytes written and how many of them
        went past the page cache. Bytes that continue a chunk written in order are
        gathered in memory for its early send (``EarlyUploads.gather``), and those past
        a copy's first WRITE_BEHIND bytes are written from there with direct I/O:
        through the page cache each byte is copied once more, into a page the kernel
        has to find for it, the most CPU a large write cost the agent. The first bytes
        go through the page cache as before (a small file's copy may be dropped before
        they are written back; past them, write-behind sends the pages to disk within
        a few megabytes anyway), and so does all of a copy wherever an fsync commits
        (every mode but ``--commit-on save``): it is dropped with its pages
        unwritten."""
        placed = self.writeback.early.gather(staged, offset, data)
        if (
            self.staging.write_behind
            and offset >= WRITE_BEHIND
            # Over a base block the copy lacks, a fill may be under way: written at once
            # and settled before anything else runs, the write cannot land under it.
            and not staged.lacking(offset, len(data))
            and sum(len(view) for _, view in placed) == len(data)
            and all(at % ALIGNMENT == 0 and direct_io_ready(view) for at, view in placed)
            and await self.staging.write_direct(staged, placed)
        ):
            return len(data), len(data)
        await staged.direct_settled()
        written = os.pwrite(staged.fd, data, offset)
        if written < len(data):
            # Only a full disk makes a regular file's pwrite short.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written, 0

    def _write_failed(self, staged: StagedFile, exc: OSError) -> None:
        """The copy now holds part of a write at most: never commit it as it is."""
        staged.failed = f"a write failed ({exc.strerror or exc})"
        staged.touch()
        self.writeback.write_failed(staged)

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """Mode 0 (reserve room, growing the file), KEEP_SIZE (reserve only) and
        PUNCH_HOLE|KEEP_SIZE (zero a range) on the staged copy; nothing else."""
        handle = self.handles[fh]
        if not handle.writable:
            raise FsError(errno.EBADF)
        if mode not in (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE):
            raise FsError(errno.EOPNOTSUPP)
        staged = self.staging.get(handle.node_id)
        if staged is None:
            staged = await self._stage(await self._node(self.tree.inode(handle.node_id)))
        try:
            if mode & FALLOC_FL_PUNCH_HOLE:
                await self._punch(staged, offset, length)
                return
            if mode == 0 and offset + length > staged.size():
                await self._truncate(staged, offset + length)
                staged.touch()
            # Reserving room changes no byte: blocks still to come from the base are
            # copied over what this allocates.
            await asyncio.to_thread(fallocate, staged.fd, mode, offset, length)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._write_failed(staged, exc)
            raise

    async def _punch(self, staged: StagedFile, offset: int, length: int) -> None:
        length = min(offset + length, staged.size()) - offset
        if length <= 0:
            return
        # Like a write of zeros: blocks cut in part come from the base first.
        whole = await staged.prepare_write(offset, length, self.cache.get)
        await staged.held_back()
        fallocate(staged.fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)
        staged.settle(whole)
        staged.touch()

    async def fsync(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is None:
            return
        staged = self.staging.get(handle.node_id)
        if staged is None or staged.orphan:
            return
        if staged.failed:
            # What the application wrote is not all there: fsync must not say it is.
            raise FsError(errno.ENOSPC)
        # What the commit will send starts travelling beside the local sync; the rest
        # waits until the bytes of its puts are sent (see Uploader._put_first), since
        # they are what a commit soon after waits for.
        sending = await self.writeback.send_ahead(staged)
        if sending is not None:
            await asyncio.shield(sending)
        if await self.writeback.commit_for_fsync(staged):
            # A version in the metadata store, its chunks stored: nothing for a local
            # flush to keep.
            return
        await asyncio.to_thread(self.staging.sync, staged)
        if staged.dirty and self.options.commit_on.on_fsync:
            # The commit this fsync could not make, once it can.
            self.writeback.schedule(staged.node_id)

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        self.open_counts[handle.node_id] -= 1
        handle.ahead.stop()
        if handle.passthrough and self.views is not None:
            self.views.release(handle.node_id)
        if self.open_counts[handle.node_id] <= 0:
            del self.open_counts[handle.node_id]
            if handle.node_id in self._stale:
                asyncio.get_running_loop().create_task(self.refresh_kernel(handle.node_id))
        if not handle.stages:
            # Read only, or a new file never staged (nothing written through it).
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

    @property
    def open_files(self) -> int:
        return sum(self.open_counts.values())

    # -- the rest --------------------------------------------------------------------------------

    async def used_bytes(self) -> int:
        """Bytes the drive's chunks take (for statfs), refreshed every few seconds."""
        stamp, used = self._statfs_cache
        if time.monotonic() - stamp > STATFS_REFRESH:
            _, used = await self.meta.chunk_stats()
            self._statfs_cache = (time.monotonic(), used)
        return used

    async def getxattr(self, inode: int, name: str) -> bytes:
        self.xattr_reads += 1
        if name not in (XATTR_VERSION, XATTR_TIER):
            # Only the user namespace is supported, and this answers without a query.
            # Refusing the others (ACLs, security labels) as unsupported rather than
            # absent lets `ls -l` and `cp -a` stop asking after the first entry.
            raise FsError(ENOATTR if name.startswith("user.") else errno.EOPNOTSUPP)
        node = await self._node(inode)
        if node.kind is not NodeKind.FILE:
            raise FsError(ENOATTR)
        staged = self.staging.get(node.id)
        if name == XATTR_TIER:
            if staged is not None and staged.dirty:
                return b"local"
            if node.head_version is None:
                raise FsError(ENOATTR)
            info, _ = await self.meta.version(node.id, node.head_version)
            return info.tier.encode()
        if node.head_version is None:
            raise FsError(ENOATTR)
        return str(node.head_version).encode()

    async def setxattr(self, inode: int, name: str, value: bytes) -> None:
        """Only :data:`XATTR_SAVE` can be set: it saves the file or folder as ``mediadrive
        save`` does and returns once that is done (the value is the message)."""
        if name != XATTR_SAVE or self.saver is None:
            raise FsError(errno.ENOTSUP)
        try:
            message = value.decode()
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL) from None
        node = await self._node(inode)
        path = self.tree.to_mount(await self.tree.path_of(node.id))
        if path is None:
            raise FsError(errno.ENOENT)
        await self.saver(path, message)

    async def listxattr(self, inode: int) -> list[str]:
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

    # -- commits and collaborators ---------------------------------------------------------------

    def _committed(self, node_id: int, outcome: CommitOutcome, upload: UploadResult) -> None:
        self.note_own_version(outcome.file_id, outcome.version)
        if outcome.file_id == node_id:
            self._contents[node_id] = ExtentMap.of(outcome.version, upload.size, upload.extents)
            self._kernel_version[node_id] = outcome.version
            # The kernel wrote these bytes through its inode: it knows their size.
            self._kernel_sized[node_id] = outcome.version
        else:
            # keep-both put our bytes elsewhere: this name shows the other writer's head.
            self.entries.clear()
            self._contents.pop(node_id, None)
            self._kernel_version.pop(node_id, None)
            asyncio.get_running_loop().create_task(self.refresh_kernel(node_id))

    def note_own_version(self, file_id: int, version: int) -> None:
        """A version this mount made (a commit, a restore): not news from elsewhere."""
        self.entries.drop(file_id)
        self._own_versions.append((file_id, version))

    def is_own_version(self, file_id: int, version: int) -> bool:
        return (file_id, version) in self._own_versions

    def note_own_change(self, kind: str, node_id: int) -> None:
        """A change to the tree this mount made: its event is no news to the kernel.
        (The caller updates the entry cache: it replaces the node, or clears it all.)"""
        key = (kind, node_id)
        self._own_changes[key] = self._own_changes.get(key, 0) + 1
        while len(self._own_changes) > _OWN_CHANGES:
            self._own_changes.popitem(last=False)

    def take_own_change(self, kind: str, node_id: int) -> bool:
        """Whether an event of ``kind`` on ``node_id`` is one this mount made (each one
        answers yes once)."""
        key = (kind, node_id)
        left = self._own_changes.get(key, 0)
        if left <= 0:
            return False
        if left == 1:
            del self._own_changes[key]
        else:
            self._own_changes[key] = left - 1
        return True

    def forget_content(self, file_id: int) -> None:
        """Drop what this mount knows of a file's committed content."""
        self._contents.pop(file_id, None)

    async def content_changed(self, file_id: int, version: int | None) -> None:
        """A new head of a file was recorded elsewhere: drop what this mount and the
        kernel cached of the old one."""
        known = self._contents.get(file_id)
        if (
            known is not None
            and known.version == version
            and self._kernel_sized.get(file_id, -1) == version
        ):
            # An open here met this version first and the kernel has its size already.
            return
        self._contents.pop(file_id, None)
        await self.refresh_kernel(file_id)

    async def head_replaced(self, file_id: int) -> None:
        """This mount replaced a file's head itself (a restore)."""
        # A restore may bring a removed file back: its folder changed too.
        self.entries.clear()
        self._contents.pop(file_id, None)
        self._kernel_version.pop(file_id, None)
        await self.refresh_kernel(file_id)

    async def refresh_kernel(self, node_id: int) -> None:
        """Make the kernel forget what it cached about a file changed elsewhere."""
        async with self._page_lock(node_id):
            await self.kernel.invalidate_inode(self.tree.inode(node_id))
        if not self.options.writeback_cache:
            return
        if node_id in self.open_counts:
            # Open here: new opens read around the stale size until the last close.
            self._stale.add(node_id)
            return
        node = await self.meta.get_node(node_id)
        if node is None or node.parent_id is None or node.deleted_ns is not None:
            self._stale.discard(node_id)
            return
        # With the writeback cache the kernel keeps its own idea of a file's size; a new
        # generation makes it take a fresh inode (and the new size) at the next lookup.
        # Until that lookup, opens reach the old inode: they read around it.
        self._generations[node_id] += 1
        self._kernel_sized.pop(node_id, None)
        self._stale.discard(node_id)
        await self.invalidate_entry(node.parent_id, node.name)

    async def invalidate_entry(self, parent_id: int, name: str, deleted_id: int = 0) -> None:
        deleted = self.tree.inode(deleted_id) if deleted_id else 0
        await self.kernel.invalidate_entry(self.tree.inode(parent_id), name, deleted)
