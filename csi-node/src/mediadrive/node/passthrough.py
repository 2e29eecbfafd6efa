"""FUSE passthrough on read-only mounts: reads of a cached file skip the agent.

With passthrough the kernel reads an open file straight from a local "backing" file,
as fast as the local disk; the agent answers only the open. A backing file must hold
the whole version, so when a file whose blocks are all in the block cache is opened,
its blocks are checked against their digests and joined into a view
(``views/<node>-<version>``) once; later opens of that version reuse it. Views are
bounded (least recently opened go first), never removed while open, and rebuilt
from the cache on demand.

The kernel keeps one backing file per inode: while a file is open through one, every
other open of it uses the same one, and an inode already open the usual way (through
the page cache) cannot start using one until those opens close.

Needs a kernel with FUSE passthrough (Linux 6.9+), CAP_SYS_ADMIN, and pyfuse3 built
with passthrough support (``scripts/build-fuse-passthrough.sh``). Without them, or
when the kernel refuses, files are read through the agent as on any mount.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3

from mediadrive.core import private
from mediadrive.core.errors import CorruptChunk
from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import verify_block

from .base_layout import BaseLayout
from .cache import BlockCache

# A chunk's block digests (None when the chunk has none recorded).
Digests = Callable[[str], Awaitable[bytes | None]]

log = logging.getLogger(__name__)

# <linux/fuse.h>: _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t).
_BACKING_OPEN = 0x4010E501
_BACKING_CLOSE = 0x4004E502


def supported() -> bool:
    """Whether the installed pyfuse3 can ask the kernel for passthrough."""
    return hasattr(pyfuse3, "session_fd")


def negotiated() -> bool:
    """Whether the kernel granted passthrough on this mount's connection."""
    granted: bool = pyfuse3.passthrough_enabled()  # type: ignore[attr-defined, unused-ignore]
    return granted


def _session_fd() -> int:
    fd: int = pyfuse3.session_fd()  # type: ignore[attr-defined, unused-ignore]
    return fd


def open_backing(fd: int) -> int:
    """Register ``fd`` with the kernel as a backing file; its id for open replies."""
    request = bytearray(struct.pack("=iIQ", fd, 0, 0))
    backing_id: int = fcntl.ioctl(_session_fd(), _BACKING_OPEN, request)
    return backing_id


def close_backing(backing_id: int) -> None:
    fcntl.ioctl(_session_fd(), _BACKING_CLOSE, bytearray(struct.pack("=I", backing_id)))


@dataclass
class _Backing:
    # The view it reads, and the id the kernel gave it.
    key: str
    backing_id: int
    opens: int = 0


class Views:
    """Views of cached files and the kernel backing files made of them, per node."""

    def __init__(self, root: Path, capacity: int, cache: BlockCache, digests: Digests) -> None:
        self.root = root
        self.capacity = capacity
        self.cache = cache
        self._digests = digests
        self.enabled = True
        self._backings: dict[int, _Backing] = {}
        # View file name -> size, least recently opened first.
        self._views: OrderedDict[str, int] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.opens = 0

    def start(self) -> None:
        # Views are only ever derived from the cache: start from none.
        shutil.rmtree(self.root, ignore_errors=True)
        private.make_dir(self.root)

    def close(self) -> None:
        self._backings.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def view_bytes(self) -> int:
        return sum(self._views.values())

    def opens_of(self, node_id: int) -> int:
        backing = self._backings.get(node_id)
        return backing.opens if backing is not None else 0

    async def open(self, node_id: int, content: ExtentMap, others_open: bool) -> int:
        """A backing id for a new open of ``node_id`` (0: read through the agent).

        ``others_open`` says the node has opens that do not use passthrough; the kernel
        refuses a backing file for it then.
        """
        backing = self._backings.get(node_id)
        if backing is not None:
            # The kernel wants every open of the inode on its one backing file, even
            # if the file changed since; the change shows once they are all closed.
            backing.opens += 1
            self.opens += 1
            return backing.backing_id
        if not self.enabled or others_open or content.version is None or not content.size:
            return 0
        if not negotiated():
            log.warning("the kernel did not grant FUSE passthrough; reading through the agent")
            self.enabled = False
            return 0
        key = f"{node_id}-{content.version}"
        path = await self._view(key, content)
        if path is None:
            return 0
        if node_id in self._backings:
            # Another open registered one while this view was being joined.
            return await self.open(node_id, content, others_open)
        fd = os.open(path, os.O_RDONLY)
        try:
            backing_id = open_backing(fd)
        except OSError as exc:
            log.warning("kernel refused a passthrough file (%s); reading via the agent", exc)
            self.enabled = False
            return 0
        finally:
            # The kernel holds its own reference to the file from here on.
            os.close(fd)
        self._backings[node_id] = _Backing(key, backing_id, opens=1)
        self.opens += 1
        return backing_id

    def release(self, node_id: int) -> None:
        backing = self._backings.get(node_id)
        if backing is None:
            return
        backing.opens -= 1
        self.opens -= 1
        if backing.opens > 0:
            return
        del self._backings[node_id]
        try:
            close_backing(backing.backing_id)
        except OSError as exc:
            log.warning("cannot close passthrough file %d: %s", backing.backing_id, exc)
        self._trim()

    async def _view(self, key: str, content: ExtentMap) -> Path | None:
        """The view of ``content``, joined from the cache unless it exists; None when a
        block is not cached (or the view would not fit)."""
        path = self.root / key
        if key in self._views:
            self._views.move_to_end(key)
            return path
        if content.size > self.capacity:
            return None
        blocks = BaseLayout.of(content)
        sources = [self.cache.block_path(b.chunk_id, b.index) for b in blocks]
        if any(source is None for source in sources):
            return None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._views:
                return path
            digests = {c: await self._digests(c) for c in {b.chunk_id for b in blocks}}
            joined = [
                _Part(b.offset, b.length, b.skip, s, b.chunk_id, b.index, digests[b.chunk_id])
                for b, s in zip(blocks, sources, strict=True)
                if s
            ]
            try:
                await asyncio.to_thread(_join, path, content.size, joined)
            except (OSError, CorruptChunk) as exc:
                # A block evicted meanwhile, damaged on disk, or a full disk: read
                # through the agent (which fetches a damaged block again).
                log.info("no passthrough view of %s: %s", key, exc)
                return None
            finally:
                self._locks.pop(key, None)
            self._views[key] = content.size
            self._trim()
        return path

    def _trim(self) -> None:
        in_use = {backing.key for backing in self._backings.values()}
        for key in list(self._views):
            if self.view_bytes <= self.capacity:
                break
            if key in in_use:
                continue
            del self._views[key]
            (self.root / key).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Part:
    offset: int
    length: int
    skip: int
    source: Path
    chunk_id: str
    index: int
    digests: bytes | None


def _join(path: Path, size: int, parts: list[_Part]) -> None:
    tmp = path.with_suffix(".tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(out, size)
        for part in parts:
            # Whole-block writes rather than copy_file_range: the page cache then holds
            # the view in large folios, which the kernel reads back much faster.
            data = part.source.read_bytes()
            if len(data) < part.skip + part.length:
                raise OSError(f"cached block {part.source.name} is short")
            if part.digests is not None:
                verify_block(part.chunk_id, part.index, part.digests, data)
            if part.skip or len(data) != part.length:
                data = data[part.skip : part.skip + part.length]
            os.pwrite(out, data, part.offset)
    except BaseException:
        os.close(out)
        tmp.unlink(missing_ok=True)
        raise
    os.close(out)
    os.replace(tmp, path)
