"""Chunks as files in a local folder: ``chunks/ab/abcdef...``; URL ``file:///ABS/PATH``.

A chunk streamed while it is written (see ``ChunkStream``) grows in
``streams/UUID.tmp`` and is renamed into place, fsynced, when it is named.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from .. import private
from ..durability import fsync_dir, write_atomically
from ..errors import ConfigError, NotFound, StoreFull, StoreUnavailable
from . import BlobStore, ChunkStream, register

T = TypeVar("T")
# The smallest part of a streamed chunk: any size would do here; this is the S3
# engine's.
_STREAM_PART = 8 << 20


def local_root(url: str) -> str:
    """The folder a ``file:///ABSOLUTE/PATH`` URL names; ConfigError for anything else."""
    parts = urlsplit(url)
    options = parse_qs(parts.query)
    if options:
        raise ConfigError(f"store URL {url!r} has unknown option(s): {', '.join(sorted(options))}")
    if parts.scheme != "file" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(f"store URL {url!r} must be file:///ABSOLUTE/PATH")
    return parts.path


def check_local_url(url: str) -> None:
    local_root(url)


def _is_chunk_name(name: str) -> bool:
    # Half-written chunks are dot files ending in .tmp (see _put).
    return not name.startswith(".") and not name.endswith(".tmp")


def _fan_out_folders(chunks: Path) -> builtins.list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(chunks) if entry.is_dir())
    except FileNotFoundError:
        return []


def _ids_in(folder: Path, prefix: str, after: str) -> builtins.list[str]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(
        name for name in names if _is_chunk_name(name) and name.startswith(prefix) and name > after
    )


def _store_error(root: Path, err: OSError) -> Exception:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the store {root} is full ({err.strerror})")
    return StoreUnavailable(f"cannot write to store folder {root}: {err.strerror}")


class _LocalStream(ChunkStream):
    def __init__(self, store: LocalBlobStore, part_size: int) -> None:
        self._store = store
        self.part_size = max(part_size, _STREAM_PART)
        self.min_part = 1
        self.path = store._streams / f"{uuid.uuid4().hex}.tmp"
        self._fd: int | None = None
        self._opening = asyncio.Lock()
        # Bytes of the parts written (they do not overlap): a part missing leaves a
        # hole, which the file's size does not show.
        self._written = 0
        self._writing: set[asyncio.Future[None]] = set()

    async def _file(self) -> int:
        async with self._opening:
            if self._fd is None:

                def open_() -> int:
                    private.make_dir(self.path.parent)
                    return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

                self._fd = await self._run(open_)
            return self._fd

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(work)
        except OSError as err:
            raise _store_error(self._store.root, err) from None

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        # A caller that stops waiting does not stop the thread: abort waits for it
        # before it closes the descriptor (which another file could then reuse) and
        # removes the file (which an open still on its way would make again).
        writing = asyncio.ensure_future(self._write(offset, data))
        self._writing.add(writing)
        writing.add_done_callback(self._writing.discard)
        await asyncio.shield(writing)

    async def _write(self, offset: int, data: bytes | memoryview) -> None:
        fd = await self._file()

        def write() -> None:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)

        await self._run(write)
        self._written += len(data)

    async def finish(self, chunk_id: str, size: int) -> None:
        fd = await self._file()
        final = self._store._path(chunk_id)

        def finish() -> None:
            if self._written != size or os.fstat(fd).st_size != size:
                raise StoreUnavailable(
                    f"streamed chunk {chunk_id} has {self._written} bytes in {self.path}, "
                    f"not {size}"
                )
            os.fsync(fd)
            private.make_dir(final.parent)
            os.replace(self.path, final)
            fsync_dir(final.parent)

        try:
            await self._run(finish)
        except BaseException:
            await self.abort()
            raise
        await self.abort()

    async def abort(self) -> None:
        await asyncio.gather(*self._writing, return_exceptions=True)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.path.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    def __init__(self, url: str, root: str, *, create: bool = False) -> None:
        self.url = url
        self.root = Path(root)
        self._chunks = self.root / "chunks"
        self._streams = self.root / "streams"
        self._create = create

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> LocalBlobStore:
        return cls(url, local_root(url), create=create)

    def _path(self, chunk_id: str) -> Path:
        return self._chunks / chunk_id[:2] / chunk_id

    def _put(self, chunk_id: str, data: bytes | memoryview) -> None:
        final = self._path(chunk_id)
        # Written even if a file of that name is there: a put follows a claim that
        # said the chunk is missing or damaged, and a damaged file must be replaced.
        # Unique: two uploads of the same bytes may write at once.
        tmp = final.with_name(f".{chunk_id}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            # Chunks are file contents: owner-only; renamed after fsync, so a reader
            # sees the whole chunk or none of it, and a full disk leaves no half chunk.
            write_atomically(final, data, tmp)
        except OSError as err:
            raise _store_error(self.root, err) from None

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        # A caller that stops waiting does not stop the thread: the put ends (its
        # ``.tmp`` renamed or removed) before the cancellation is passed on, so a
        # failed upload that cancels its other puts leaves nothing half-written.
        putting = asyncio.ensure_future(asyncio.to_thread(self._put, chunk_id, data))
        try:
            await asyncio.shield(putting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await putting
            raise

    def stream(self, part_size: int = 0) -> ChunkStream:
        return _LocalStream(self, part_size)

    def _read(self, chunk_id: str, offset: int, length: int | None) -> bytes:
        try:
            with open(self._path(chunk_id), "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFound(f"chunk {chunk_id} is not in {self.root}") from None

    async def get(self, chunk_id: str) -> bytes:
        return await asyncio.to_thread(self._read, chunk_id, 0, None)

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, chunk_id, offset, length)

    async def exists(self, chunk_id: str) -> bool:
        return await asyncio.to_thread(self._path(chunk_id).exists)

    async def delete(self, chunk_id: str) -> None:
        await asyncio.to_thread(self._path(chunk_id).unlink, True)

    async def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        # One fan-out folder is one page: ids in folder "ab" all start with "ab", so
        # walking the folders in order yields every id in order.
        for folder in await asyncio.to_thread(_fan_out_folders, self._chunks):
            if not folder.startswith(prefix[:2]) or folder < after[:2]:
                continue
            for chunk_id in await asyncio.to_thread(_ids_in, self._chunks / folder, prefix, after):
                yield chunk_id

    def _debris(self, older_than: float) -> builtins.list[Path]:
        cutoff = time.time() - older_than
        found = []
        folders = [self._chunks / folder for folder in _fan_out_folders(self._chunks)]
        if self._streams.is_dir():
            folders.append(self._streams)
        for folder in folders:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not _is_chunk_name(entry.name) and entry.name.endswith(".tmp"):
                        with contextlib.suppress(FileNotFoundError):
                            if entry.stat().st_mtime < cutoff:
                                found.append(Path(entry.path))
        return sorted(found)

    async def debris(self, older_than: float) -> builtins.list[str]:
        """Half-written ``.tmp`` files a crashed or failed put or stream left behind."""
        return [str(p) for p in await asyncio.to_thread(self._debris, older_than)]

    async def remove_debris(self, older_than: float) -> int:
        def remove() -> int:
            removed = 0
            for path in self._debris(older_than):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
            return removed

        return await asyncio.to_thread(remove)

    async def check(self) -> None:
        def probe() -> None:
            if self._create:
                try:
                    private.make_dir(self._chunks)
                except OSError as err:
                    raise StoreUnavailable(
                        f"cannot create store folder {self.root}: {err.strerror}"
                    ) from None
            if not self._chunks.is_dir():
                raise StoreUnavailable(f"store folder {self.root} does not exist")
            if not os.access(self._chunks, os.W_OK):
                raise StoreUnavailable(f"store folder {self.root} is not writable")

        await asyncio.to_thread(probe)


register("file", LocalBlobStore.from_url, check_local_url)
