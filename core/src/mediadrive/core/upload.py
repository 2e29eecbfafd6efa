"""Storing a file's bytes as chunks: only the chunks the drive lacks are sent.

Chunking and hashing run in a worker thread, a bounded queue hands the pieces to
the event loop, and up to ``concurrency`` chunks travel at once. Every chunk the
upload relies on is held in the metadata store under the upload's token until the
commit that names it lands, so GC never collects a chunk a commit is about to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from .blob import BlobStore
from .chunking import Piece, make_chunker
from .config import DriveSettings
from .errors import ChunkMissing
from .hashing import block_digests, chunk_id
from .meta import Extent, MetaStore
from .meta.sql import CHUNK_HOLD

Progress = Callable[[int], None]

# What the chunking thread hands over: a new piece (with its id and block digests),
# or a chunk of an earlier version kept as it is.
_Item = tuple[Piece, str, bytes] | Extent


@dataclass(frozen=True)
class UploadResult:
    extents: list[Extent]
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    # Names this upload's holds on its chunks; the commit releases them.
    token: str = ""
    # Where the chunks went: ``cloud``, or ``pod:REGION`` (the version's tier).
    tier: str = "cloud"


def pieces(
    source: BinaryIO, settings: DriveSettings, reuse: Mapping[int, Extent] | None
) -> Iterator[Piece | Extent]:
    """The chunks of ``source``; with ``reuse`` (fixed chunking only), chunks of an
    earlier version that ``source`` holds unchanged are yielded without reading them."""
    if not reuse:
        yield from make_chunker(settings.chunking, settings.chunk_size).split(source)
        return
    if settings.chunking != "fixed":
        raise ValueError("reusing chunks needs fixed chunking")
    size = os.fstat(source.fileno()).st_size
    step = settings.chunk_size
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


async def hashed_pieces(
    source: BinaryIO, settings: DriveSettings, reuse: Mapping[int, Extent] | None, depth: int
) -> AsyncIterator[_Item]:
    """:func:`pieces` chunked and hashed in a thread, at most ``depth`` ahead."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item | BaseException | None] = asyncio.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        item: _Item | BaseException | None = None
        try:
            for piece in pieces(source, settings, reuse):
                if stop.is_set():
                    return
                if isinstance(piece, Piece):
                    item = (piece, chunk_id(piece.data), block_digests(piece.data))
                else:
                    item = piece
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            item = None
        except BaseException as exc:
            item = exc
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    producer = loop.run_in_executor(None, produce)
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # On failure the producer may be blocked on a full queue: stop and drain it.
        stop.set()
        while not producer.done():
            while not queue.empty():
                queue.get_nowait()
            await asyncio.sleep(0.01)
        await asyncio.gather(producer, return_exceptions=True)


@dataclass
class _Run:
    """The state of one upload: what it claimed, sent and found already stored."""

    progress: Progress | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    extents: list[Extent] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    sent: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    uploaded: int = 0

    def advance(self, n: int) -> None:
        if self.progress:
            self.progress(n)

    def result(self) -> UploadResult:
        last = self.extents[-1] if self.extents else None
        size = last.offset + last.length if last else 0
        return UploadResult(
            self.extents, size, self.uploaded, len(self.extents), len(self.sent), self.token
        )


class Uploader:
    """Uploads sources for one drive's stores under its chunking settings."""

    def __init__(
        self, meta: MetaStore, blobs: BlobStore, settings: DriveSettings, concurrency: int = 4
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.settings = settings
        self.concurrency = concurrency

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
        run = _Run(progress)
        slots = asyncio.Semaphore(self.concurrency)
        renewer = asyncio.create_task(self._renew_holds(run))
        try:
            items = hashed_pieces(source, self.settings, reuse, self.concurrency)
            async for item in items:
                if isinstance(item, Extent):
                    await self._keep(run, item)
                else:
                    await self._store(run, slots, *item)
            await asyncio.gather(*run.sent.values())
        except BaseException:
            for task in run.sent.values():
                task.cancel()
            # A failed upload is finished: let GC have its chunks (see release).
            with contextlib.suppress(Exception):
                await self.release(sorted(run.claimed), run.token)
            raise
        finally:
            renewer.cancel()
        return run.result()

    async def release(self, chunk_ids: Sequence[str], token: str) -> None:
        """End an upload's holds when no commit will follow (a commit ends them itself)."""
        if chunk_ids:
            await self.meta.hold_chunks(chunk_ids, hold=0, token=token)

    async def _keep(self, run: _Run, extent: Extent) -> None:
        """A chunk of an earlier version, kept as it is: it must still be stored."""
        run.extents.append(extent)
        if extent.chunk_id not in run.claimed:
            state = await self._claim(extent.chunk_id, extent.length, None, run.token)
            run.claimed.add(extent.chunk_id)
            if state != "stored":
                raise ChunkMissing(f"chunk {extent.chunk_id} of an earlier version is gone")
        run.advance(extent.length)

    async def _store(
        self, run: _Run, slots: asyncio.Semaphore, piece: Piece, cid: str, digests: bytes
    ) -> None:
        run.extents.append(Extent(piece.offset, len(piece.data), cid))
        if cid not in run.claimed:
            state = await self._claim(cid, len(piece.data), digests, run.token)
            run.claimed.add(cid)
            if state != "stored":
                await slots.acquire()
                run.sent[cid] = asyncio.create_task(self._send(run, slots, cid, piece.data))
                return
        run.advance(len(piece.data))

    async def _send(self, run: _Run, slots: asyncio.Semaphore, cid: str, data: bytes) -> None:
        try:
            await self.blobs.put(cid, data)
            await self.meta.mark_stored([cid])
            run.uploaded += len(data)
            run.advance(len(data))
        finally:
            slots.release()

    async def _renew_holds(self, run: _Run) -> None:
        while True:
            await asyncio.sleep(CHUNK_HOLD / 3)
            await self.meta.hold_chunks(sorted(run.claimed), token=run.token)

    async def _claim(self, cid: str, size: int, digests: bytes | None, token: str) -> str:
        while True:
            (claim,) = await self.meta.claim_chunks([(cid, size, digests)], token=token)
            if claim.state != "busy":
                return claim.state
            # GC is deleting this chunk right now; claim it again once the row is gone.
            await asyncio.sleep(0.05)

    async def claim_existing(self, extents: list[Extent]) -> str:
        """Hold chunks that are already stored (a copy of a version); returns the token."""
        token = uuid.uuid4().hex
        await self.meta.claim_chunks([(e.chunk_id, e.length, None) for e in extents], token=token)
        return token
