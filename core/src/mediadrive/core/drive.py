"""A drive: the folder tree, versions and chunks, on one metadata and one blob store.

Writing a file is two steps. :meth:`Drive.upload` chunks and hashes the bytes and
stores the chunks the drive lacks; :meth:`Drive.commit` then records a version that
points at them. A version therefore never names a chunk that is not durably stored,
and an upload killed half-way leaves no version behind, only chunks for GC.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import shutil
import stat as stat_mode
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import paths
from .blob import BlobStore, open_store
from .chunking import Piece, make_chunker
from .config import (
    DriveRef,
    DriveSettings,
    check_drive_name,
    env_author,
    home,
    load_ref,
    parse_store_url,
)
from .errors import (
    AlreadyExists,
    ChunkMissing,
    CorruptChunk,
    IsADirectory,
    NotADirectory,
    PathNotFound,
    VersionNotFound,
)
from .hashing import BLOCK_SIZE, block_digests, chunk_id, verify, verify_block
from .meta import (
    CommitOutcome,
    CommitRequest,
    Event,
    Extent,
    MetaStore,
    Node,
    NodeKind,
    VersionInfo,
    connect,
)
from .meta.sql import CHUNK_HOLD

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
_DIGEST_CACHE = 4096


@dataclass(frozen=True)
class UploadResult:
    extents: list[Extent]
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    # Names this upload's holds on its chunks; the commit releases them.
    token: str = ""


# What the upload's chunking thread hands over: a new piece (with its id and block
# digests), or a chunk of an earlier version kept as it is.
_Item = tuple[Piece, str, bytes] | Extent


@dataclass(frozen=True)
class CommitResult:
    path: str
    file_id: int
    version: int
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    conflict: bool


@dataclass(frozen=True)
class GcReport:
    versions_pruned: int
    chunks_deleted: int
    bytes_freed: int


@dataclass(frozen=True)
class DriveStats:
    files_bytes: int
    stored_bytes: int
    stored_chunks: int

    @property
    def dedup_ratio(self) -> float:
        return self.files_bytes / self.stored_bytes if self.stored_bytes else 1.0


BlockFetcher = Callable[[str, int], Awaitable[bytes]]


class VersionReader:
    """Reads one immutable version: verified byte ranges, or whole verified chunks."""

    def __init__(
        self,
        blobs: BlobStore,
        fetch_block: BlockFetcher,
        info: VersionInfo,
        extents: list[Extent],
    ) -> None:
        self.blobs = blobs
        self.fetch_block = fetch_block
        self.info = info
        self.extents = extents
        self.size = info.size
        self._starts = [e.offset for e in extents]

    def blocks_for(self, offset: int, size: int) -> list[tuple[Extent, int]]:
        """The (extent, block index) pairs covering ``size`` bytes at ``offset``."""
        end = min(offset + size, self.size)
        covering: list[tuple[Extent, int]] = []
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while i < len(self.extents) and self.extents[i].offset < end:
            extent = self.extents[i]
            first = max(offset - extent.offset, 0) // BLOCK_SIZE
            last = (min(end, extent.offset + extent.length) - extent.offset - 1) // BLOCK_SIZE
            covering.extend((extent, b) for b in range(first, last + 1))
            i += 1
        return covering

    async def read(self, offset: int, size: int) -> bytes:
        """Fetches only the blocks the range touches, each checked against its digest."""
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        covering = self.blocks_for(offset, size)
        blocks = await asyncio.gather(*(self.fetch_block(e.chunk_id, b) for e, b in covering))
        out = bytearray()
        for (extent, index), data in zip(covering, blocks, strict=True):
            block_start = extent.offset + index * BLOCK_SIZE
            lo = max(offset, block_start) - block_start
            hi = min(end, block_start + len(data)) - block_start
            out += data[lo:hi]
        return bytes(out)

    async def chunks(self, prefetch: int = 4) -> AsyncIterator[bytes]:
        """Every chunk in file order, fetched ``prefetch`` ahead and checked against its id."""

        async def fetch(extent: Extent) -> bytes:
            data = await self.blobs.get(extent.chunk_id)
            await asyncio.to_thread(verify, extent.chunk_id, data)
            return data

        pending: list[asyncio.Task[bytes]] = []
        try:
            for extent in self.extents:
                pending.append(asyncio.create_task(fetch(extent)))
                if len(pending) > prefetch:
                    yield await pending.pop(0)
            while pending:
                yield await pending.pop(0)
        finally:
            for task in pending:
                task.cancel()


class Drive:
    def __init__(
        self, ref: DriveRef, settings: DriveSettings, meta: MetaStore, blobs: BlobStore
    ) -> None:
        self.ref = ref
        self.name = ref.name
        self.settings = settings
        self.meta = meta
        self.blobs = blobs
        self.author = env_author()
        self.host = os.uname().nodename
        self.upload_concurrency = 4
        self._digests: OrderedDict[str, bytes | None] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        name: str,
        settings: DriveSettings | None = None,
        meta_url: str | None = None,
        store_url: str | None = None,
        base: Path | None = None,
    ) -> Drive:
        """Make a new drive; on any failure nothing is left behind on this machine."""
        check_drive_name(name)
        root = base or home()
        folder = root / name
        if (folder / "drive.json").exists():
            raise AlreadyExists(f"drive {name!r} already exists in {root}")
        default = DriveRef.default(name, root)
        ref = DriveRef(
            name=name,
            meta_url=meta_url or default.meta_url,
            store_url=store_url or default.store_url,
        )
        parse_store_url(ref.store_url)
        meta = connect(ref.meta_url, name)
        made_folder = not folder.exists()
        blobs: BlobStore | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            blobs = open_store(ref.store_url, create=True)
            await blobs.check()
            await meta.create_drive(settings or DriveSettings())
            ref.save(root)
        except BaseException:
            await meta.close()
            if blobs is not None:
                await blobs.close()
            if made_folder:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(ref, settings or DriveSettings(), meta, blobs)

    @classmethod
    async def open(cls, name: str, base: Path | None = None) -> Drive:
        return await cls._open_ref(load_ref(name, base))

    @classmethod
    async def attach(
        cls, name: str, meta_url: str, store_url: str, base: Path | None = None
    ) -> Drive:
        """Use on this machine a drive that was created elsewhere (shared stores)."""
        check_drive_name(name)
        root = base or home()
        if (root / name / "drive.json").exists():
            raise AlreadyExists(f"drive {name!r} is already known in {root}")
        parse_store_url(store_url)
        ref = DriveRef(name=name, meta_url=meta_url, store_url=store_url)
        drive = await cls._open_ref(ref)
        ref.save(root)
        return drive

    @classmethod
    async def _open_ref(cls, ref: DriveRef) -> Drive:
        name = ref.name
        meta = connect(ref.meta_url, name)
        blobs = open_store(ref.store_url)
        try:
            settings = await meta.open_drive()
            await blobs.check()
        except BaseException:
            await meta.close()
            await blobs.close()
            raise
        return cls(ref, settings, meta, blobs)

    async def close(self) -> None:
        await self.meta.close()
        await self.blobs.close()

    async def __aenter__(self) -> Drive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the tree ---------------------------------------------------------------------------

    async def stat(self, path: str) -> Node:
        path = paths.normalize(path)
        node = await self.meta.resolve(path)
        if node is None:
            raise PathNotFound(f"{self.name}:{path} does not exist")
        return node

    async def _folder(self, path: str) -> Node:
        node = await self.stat(path)
        if not node.is_dir:
            raise NotADirectory(f"{self.name}:{path} is not a folder")
        return node

    async def listdir(self, path: str = "/") -> list[Node]:
        return await self.meta.list_dir((await self._folder(path)).id)

    async def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> Node:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        if parents and parent_path != "/":
            try:
                await self._folder(parent_path)
            except PathNotFound:
                await self.mkdir(parent_path, parents=True, mode=mode)
        parent = await self._folder(parent_path)
        try:
            return await self.meta.make_node(
                parent.id, parent_path, name, NodeKind.DIR, mode, self.author
            )
        except AlreadyExists:
            existing = await self.stat(path)
            if parents and existing.is_dir:
                return existing
            raise

    async def move(self, src: str, dst: str) -> Node:
        src, dst = paths.normalize(src), paths.normalize(dst)
        src_parent, _ = paths.split(src)
        with contextlib.suppress(PathNotFound):
            if (await self.stat(dst)).is_dir:
                dst = paths.normalize(f"{dst}/{paths.split(src)[1]}")
        dst_parent, _ = paths.split(dst)
        return await self.meta.rename(
            (await self._folder(src_parent)).id,
            src,
            (await self._folder(dst_parent)).id,
            dst,
            self.author,
        )

    async def remove(self, path: str, recursive: bool = False) -> Node:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        parent = await self._folder(parent_path)
        return await self.meta.remove(parent.id, parent_path, name, self.author, recursive)

    # -- writing ------------------------------------------------------------------------------

    async def upload(
        self,
        source: BinaryIO,
        progress: Progress | None = None,
        reuse: Mapping[int, Extent] | None = None,
    ) -> UploadResult:
        """Chunk, hash and store ``source``; only chunks the drive lacks are sent.

        ``reuse`` (fixed chunking only) names chunks of an earlier version, by offset,
        that ``source`` holds unchanged: they are kept without reading those bytes,
        which may be holes. A kept chunk the drive no longer stores is ChunkMissing.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item | BaseException | None] = asyncio.Queue(
            maxsize=self.upload_concurrency
        )

        stop = threading.Event()
        token = uuid.uuid4().hex

        def produce() -> None:
            # Chunking and hashing run in a thread; the queue bounds memory in flight.
            item: _Item | BaseException | None = None
            try:
                for piece in self._pieces(source, reuse):
                    if stop.is_set():
                        return
                    if isinstance(piece, Extent):
                        item = piece
                    else:
                        item = (piece, chunk_id(piece.data), block_digests(piece.data))
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
                item = None
            except BaseException as exc:
                item = exc
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        producer = loop.run_in_executor(None, produce)
        slots = asyncio.Semaphore(self.upload_concurrency)
        extents: list[Extent] = []
        sent: dict[str, asyncio.Task[None]] = {}
        claimed: set[str] = set()
        uploaded_bytes = 0

        async def send(cid: str, data: bytes) -> None:
            nonlocal uploaded_bytes
            try:
                await self.blobs.put(cid, data)
                await self.meta.mark_stored([cid])
                uploaded_bytes += len(data)
                if progress:
                    progress(len(data))
            finally:
                slots.release()

        async def renew_holds() -> None:
            while True:
                await asyncio.sleep(CHUNK_HOLD / 3)
                await self.meta.hold_chunks(sorted(claimed), token=token)

        renewer = asyncio.create_task(renew_holds())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Extent):
                    extents.append(item)
                    if item.chunk_id not in claimed:
                        state = await self._claim(item.chunk_id, item.length, None, token)
                        claimed.add(item.chunk_id)
                        if state != "stored":
                            raise ChunkMissing(
                                f"chunk {item.chunk_id} of an earlier version is gone"
                            )
                    if progress:
                        progress(item.length)
                    continue
                piece, cid, digests = item
                extents.append(Extent(piece.offset, len(piece.data), cid))
                if cid in claimed:
                    if progress:
                        progress(len(piece.data))
                    continue
                state = await self._claim(cid, len(piece.data), digests, token)
                claimed.add(cid)
                if state == "stored":
                    if progress:
                        progress(len(piece.data))
                    continue
                await slots.acquire()
                sent[cid] = asyncio.create_task(send(cid, piece.data))
            await asyncio.gather(*sent.values())
        except BaseException:
            for task in sent.values():
                task.cancel()
            raise
        finally:
            renewer.cancel()
            # On failure the producer may be blocked on a full queue: stop and drain it.
            stop.set()
            while not producer.done():
                while not queue.empty():
                    queue.get_nowait()
                await asyncio.sleep(0.01)
            await asyncio.gather(producer, return_exceptions=True)
        size = extents[-1].offset + extents[-1].length if extents else 0
        return UploadResult(extents, size, uploaded_bytes, len(extents), len(sent), token)

    def _pieces(
        self, source: BinaryIO, reuse: Mapping[int, Extent] | None
    ) -> Iterator[Piece | Extent]:
        if not reuse:
            yield from make_chunker(self.settings.chunking, self.settings.chunk_size).split(source)
            return
        if self.settings.chunking != "fixed":
            raise ValueError("reusing chunks needs fixed chunking")
        size = os.fstat(source.fileno()).st_size
        step = self.settings.chunk_size
        for offset in range(0, size, step):
            length = min(step, size - offset)
            known = reuse.get(offset)
            if known is not None and known.length == length:
                yield known
                continue
            source.seek(offset)
            data = source.read(length)
            if len(data) != length:
                raise OSError(f"short read at {offset} of a {size}-byte snapshot")
            yield Piece(offset, data)

    async def _claim(self, cid: str, size: int, digests: bytes | None, token: str) -> str:
        while True:
            (claim,) = await self.meta.claim_chunks([(cid, size, digests)], token=token)
            if claim.state != "busy":
                return claim.state
            # GC is deleting this chunk right now; claim it again once the row is gone.
            await asyncio.sleep(0.05)

    async def commit(
        self,
        path: str,
        upload: UploadResult,
        base_version: int | None,
        message: str = "",
        mode: int = 0o644,
        mtime_ns: int | None = None,
        origin: str = "commit",
        file_id: int | None = None,
    ) -> CommitOutcome:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        parent = await self._folder(parent_path)
        request = CommitRequest(
            parent_id=parent.id,
            parent_path=parent_path,
            name=name,
            base_version=base_version,
            extents=upload.extents,
            size=upload.size,
            mode=stat_mode.S_IMODE(mode),
            mtime_ns=time.time_ns() if mtime_ns is None else mtime_ns,
            author=self.author,
            message=message,
            host=self.host,
            origin=origin,
            hold_token=upload.token,
            file_id=file_id,
        )
        return await self.meta.commit(request, self.settings.conflict)

    async def head_version(self, path: str) -> int | None:
        """The version a writer starts from: ``None`` if the file does not exist yet."""
        try:
            node = await self.stat(path)
        except PathNotFound:
            return None
        if node.is_dir:
            raise IsADirectory(f"{self.name}:{paths.normalize(path)} is a folder")
        return node.head_version

    async def write_file(
        self,
        path: str,
        source: BinaryIO,
        message: str = "",
        mode: int = 0o644,
        mtime_ns: int | None = None,
        progress: Progress | None = None,
    ) -> CommitResult:
        """Upload ``source`` and commit it as the next version of ``path``."""
        base = await self.head_version(path)
        await self._folder(paths.split(paths.normalize(path))[0])
        start = source.tell() if source.seekable() else None
        for attempt in range(2):
            upload = await self.upload(source, progress)
            try:
                outcome = await self.commit(path, upload, base, message, mode, mtime_ns)
            except ChunkMissing:
                # GC took a chunk this upload found already stored; send it again once.
                if attempt or start is None:
                    raise
                source.seek(start)
                continue
            return CommitResult(
                outcome.path,
                outcome.file_id,
                outcome.version,
                upload.size,
                upload.bytes_uploaded,
                upload.chunks_total,
                upload.chunks_new,
                outcome.conflict,
            )
        raise AssertionError("unreachable")

    # -- reading -----------------------------------------------------------------------------

    async def read_block(self, chunk: str, index: int) -> bytes:
        """Block ``index`` (``BLOCK_SIZE`` bytes, the last one shorter) of a chunk, verified.

        Raises :class:`CorruptChunk` rather than ever returning bytes that do not
        match what was committed.
        """
        digests = await self.block_digests(chunk)
        if digests is None:
            # Chunks recorded without block digests are verified whole.
            data = await self.blobs.get(chunk)
            await asyncio.to_thread(verify, chunk, data)
            return data[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
        data = await self.blobs.get_range(chunk, index * BLOCK_SIZE, BLOCK_SIZE)
        try:
            verify_block(chunk, index, digests, data)
        except CorruptChunk:
            log.error("corrupt block", extra={"chunk": chunk, "block": index, "drive": self.name})
            raise
        return data

    async def read_blocks(self, chunk: str, first: int, count: int) -> list[bytes]:
        """Blocks ``first`` .. ``first + count - 1`` of a chunk, in one ranged read, verified.

        Each block is checked against its own digest; any mismatch raises
        :class:`CorruptChunk` (the caller may fetch the blocks one by one to tell
        which are sound). The list is shorter if the chunk ends sooner.
        """
        digests = await self.block_digests(chunk)
        if digests is None:
            data = await self.blobs.get(chunk)
            await asyncio.to_thread(verify, chunk, data)
            return [
                data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                for i in range(first, first + count)
                if i * BLOCK_SIZE < len(data)
            ]
        data = await self.blobs.get_range(chunk, first * BLOCK_SIZE, count * BLOCK_SIZE)
        blocks = [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]

        def check() -> None:
            for n, block in enumerate(blocks):
                verify_block(chunk, first + n, digests, block)

        try:
            await asyncio.to_thread(check)
        except CorruptChunk:
            log.error(
                "corrupt block in range",
                extra={"chunk": chunk, "block": first, "count": count, "drive": self.name},
            )
            raise
        return blocks

    async def check_block(self, chunk: str, index: int, data: bytes) -> bool:
        """Whether ``data`` is block ``index`` of ``chunk`` as committed (a local copy's
        check; chunks recorded without block digests cannot be checked by block)."""
        digests = await self.block_digests(chunk)
        if digests is None:
            return True
        try:
            await asyncio.to_thread(verify_block, chunk, index, digests, data)
        except CorruptChunk:
            return False
        return True

    async def block_digests(self, chunk: str) -> bytes | None:
        """The BLAKE3 digests of a chunk's blocks, end to end (None if not recorded)."""
        if chunk in self._digests:
            self._digests.move_to_end(chunk)
            return self._digests[chunk]
        digests = await self.meta.chunk_blocks(chunk)
        self._digests[chunk] = digests
        if len(self._digests) > _DIGEST_CACHE:
            self._digests.popitem(last=False)
        return digests

    # -- the time machine ----------------------------------------------------------------------

    async def _file(self, path: str, allow_deleted: bool = True) -> Node:
        path = paths.normalize(path)
        try:
            node = await self.stat(path)
        except PathNotFound:
            parent_path, name = paths.split(path)
            parent = await self._folder(parent_path)
            deleted = await self.meta.last_deleted(parent.id, name) if allow_deleted else None
            if deleted is None:
                raise
            node = deleted
        if node.is_dir:
            raise IsADirectory(f"{self.name}:{path} is a folder")
        return node

    async def versions(self, path: str) -> list[VersionInfo]:
        return await self.meta.versions((await self._file(path)).id)

    async def reader(self, path: str, version: int | None = None) -> VersionReader:
        node = await self._file(path)
        number = node.head_version if version is None else version
        if number is None:
            if node.kind is NodeKind.FILE:
                empty = VersionInfo(
                    node.id, 0, 0, node.mode, node.mtime_ns, 0, "", "", None, "", ""
                )
                return VersionReader(self.blobs, self.read_block, empty, [])
            raise VersionNotFound(f"{self.name}:{paths.normalize(path)} has no versions")
        try:
            info, extents = await self.meta.version(node.id, number)
        except VersionNotFound:
            raise VersionNotFound(
                f"{self.name}:{paths.normalize(path)} has no version {number}"
            ) from None
        return VersionReader(self.blobs, self.read_block, info, extents)

    async def read_to(
        self,
        path: str,
        dest: BinaryIO,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> VersionInfo:
        reader = await self.reader(path, version)
        async for data in reader.chunks():
            await asyncio.to_thread(dest.write, data)
            if progress:
                progress(len(data))
        return reader.info

    async def copy_version(
        self, reader: VersionReader, path: str, message: str = "", origin: str = "commit"
    ) -> CommitResult:
        """Commit an existing version's chunks at ``path``: no byte is uploaded."""
        base = await self.head_version(path)
        token = uuid.uuid4().hex
        await self.meta.claim_chunks(
            [(e.chunk_id, e.length, None) for e in reader.extents], token=token
        )
        upload = UploadResult(reader.extents, reader.size, 0, len(reader.extents), 0, token)
        outcome = await self.commit(path, upload, base, message, reader.info.mode, origin=origin)
        return CommitResult(
            outcome.path,
            outcome.file_id,
            outcome.version,
            reader.size,
            0,
            len(reader.extents),
            0,
            outcome.conflict,
        )

    async def restore(self, path: str, version: int, message: str = "") -> CommitResult:
        """A new head with the content of ``version``; history is never rewritten."""
        node = await self._file(path)
        reader = await self.reader(path, version)
        if node.deleted_ns is not None:
            # Bringing back a deleted file: the name must still be free.
            with contextlib.suppress(PathNotFound):
                await self.stat(path)
                raise AlreadyExists(f"{self.name}:{paths.normalize(path)} exists again")
        return await self.copy_version(
            reader, path, message or f"restore version {version}", origin="restore"
        )

    # -- events, GC, figures ----------------------------------------------------------------------

    async def events(self, since: int = 0, follow: bool = False) -> AsyncIterator[Event]:
        if follow:
            async for event in self.meta.follow_events(since):
                yield event
            return
        while batch := await self.meta.events_after(since):
            for event in batch:
                yield event
            since = batch[-1].seq

    async def gc(self, grace: float = 3600.0) -> GcReport:
        """Prune versions retention lets go, then sweep chunks nothing references.

        A chunk is deleted only when no version references it and no upload has held
        it within the last ``grace`` seconds.
        """
        now = time.time()
        pruned = await self.meta.prune_versions(self.settings.retention, now)
        await self.meta.expire_holds()
        for leftover in await self.meta.deleting_chunks():
            await self.blobs.delete(leftover)
            await self.meta.finish_delete_chunk(leftover)
        cutoff = now - grace
        deleted = freed = 0
        for candidate in await self.meta.gc_candidates(cutoff):
            if not await self.meta.begin_delete_chunk(candidate.chunk_id, cutoff):
                continue
            await self.blobs.delete(candidate.chunk_id)
            await self.meta.finish_delete_chunk(candidate.chunk_id)
            deleted += 1
            freed += candidate.size
        if pruned or deleted:
            await self.meta.record_event(
                "gc",
                "/",
                self.author,
                versions_pruned=pruned,
                chunks_deleted=deleted,
                bytes_freed=freed,
            )
        return GcReport(pruned, deleted, freed)

    async def stats(self) -> DriveStats:
        chunks, stored = await self.meta.chunk_stats()
        return DriveStats(await self.meta.logical_bytes(), stored, chunks)
