"""Verified reads of committed content: blocks of chunks, and whole versions.

A block is ``BLOCK_SIZE`` bytes of a chunk, checked against the BLAKE3 digest the
upload recorded for it, so a small read never needs its whole chunk and never
returns bytes that differ from what was committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from .blob import BlobStore
from .errors import CorruptChunk, NotFound
from .extents import ExtentMap
from .hashing import BLOCK_SIZE, DIGEST_SIZE, verify, verify_block
from .meta import Extent, MetaStore, VersionInfo

log = logging.getLogger(__name__)

# Block digests of this many chunks stay in memory.
_DIGEST_CACHE = 4096

BlockFetcher = Callable[[str, int], Awaitable[bytes]]


class BlockReader:
    """Fetches blocks of chunks from the blob store and checks them."""

    def __init__(self, meta: MetaStore, blobs: BlobStore, drive: str) -> None:
        self.meta = meta
        self.blobs = blobs
        self.drive = drive
        self._digests: OrderedDict[str, bytes | None] = OrderedDict()

    async def digests(self, chunk: str) -> bytes | None:
        """The BLAKE3 digests of a chunk's blocks, end to end (None if not recorded)."""
        if chunk in self._digests:
            self._digests.move_to_end(chunk)
            return self._digests[chunk]
        digests = await self.meta.chunk_blocks(chunk)
        self._digests[chunk] = digests
        if len(self._digests) > _DIGEST_CACHE:
            self._digests.popitem(last=False)
        return digests

    async def mark_damaged(self, chunk: str) -> None:
        """Record a chunk found corrupt or missing, so the next upload of its bytes
        stores it again. Best effort: the read fails with EIO either way."""
        try:
            await self.meta.mark_damaged([chunk])
        except Exception as exc:
            log.warning("cannot mark chunk %s as damaged: %s", chunk, exc)

    async def _fetch(self, chunk: str, offset: int, length: int | None) -> bytes:
        """Bytes of a chunk; a chunk the store does not have is CorruptChunk (and
        marked damaged), never NotFound: the file that names it exists."""
        try:
            if length is None:
                return await self.blobs.get(chunk)
            return await self.blobs.get_range(chunk, offset, length)
        except NotFound:
            raise await self._missing(chunk) from None

    async def _fetch_view(self, chunk: str, offset: int, length: int) -> memoryview:
        """:meth:`_fetch` of a range, as the store's view (see BlobStore.get_range_view)."""
        try:
            return await self.blobs.get_range_view(chunk, offset, length)
        except NotFound:
            raise await self._missing(chunk) from None

    async def _missing(self, chunk: str) -> CorruptChunk:
        log.error("chunk missing from the store", extra={"chunk": chunk, "drive": self.drive})
        await self.mark_damaged(chunk)
        return CorruptChunk(f"chunk {chunk} is missing from the blob store", chunk)

    async def _whole(self, chunk: str) -> bytes:
        # Chunks recorded without block digests are verified whole.
        data = await self._fetch(chunk, 0, None)
        try:
            await asyncio.to_thread(verify, chunk, data)
        except CorruptChunk:
            await self.mark_damaged(chunk)
            raise
        return data

    async def read_block(self, chunk: str, index: int) -> bytes:
        """Block ``index`` of a chunk (the last one shorter); raises CorruptChunk rather
        than ever returning bytes that do not match what was committed."""
        digests = await self.digests(chunk)
        if digests is None:
            return (await self._whole(chunk))[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
        data = await self._fetch(chunk, index * BLOCK_SIZE, BLOCK_SIZE)
        try:
            verify_block(chunk, index, digests, data)
        except CorruptChunk:
            log.error("corrupt block", extra={"chunk": chunk, "block": index, "drive": self.drive})
            await self.mark_damaged(chunk)
            raise
        return data

    async def read_blocks(self, chunk: str, first: int, count: int) -> list[bytes]:
        """Blocks ``first`` .. ``first + count - 1`` in one ranged read, each verified.

        Any mismatch raises CorruptChunk (the caller may fetch the blocks one by one
        to tell which are sound). The list is shorter if the chunk ends sooner.
        """
        return [bytes(view) for view in await self.read_block_views(chunk, first, count)]

    async def read_block_views(self, chunk: str, first: int, count: int) -> list[memoryview]:
        """:meth:`read_blocks` as views of the one buffer read: no copy of each block."""
        digests = await self.digests(chunk)
        if digests is None:
            whole = memoryview(await self._whole(chunk))
            return [
                whole[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                for i in range(first, first + count)
                if i * BLOCK_SIZE < len(whole)
            ]
        data = await self._fetch_view(chunk, first * BLOCK_SIZE, count * BLOCK_SIZE)
        blocks = [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]
        # A short (or empty) object must not pass for a chunk that ends sooner: the
        # digests say how many blocks the chunk has.
        expected = max(0, min(count, len(digests) // DIGEST_SIZE - first))

        def check() -> None:
            if len(blocks) != expected:
                raise CorruptChunk(
                    f"chunk {chunk} is truncated in the store: {len(blocks)} of {expected} "
                    f"blocks from block {first}",
                    chunk,
                )
            for n, block in enumerate(blocks):
                verify_block(chunk, first + n, digests, block)

        try:
            await asyncio.to_thread(check)
        except CorruptChunk:
            log.error(
                "corrupt block in range",
                extra={"chunk": chunk, "block": first, "count": count, "drive": self.drive},
            )
            await self.mark_damaged(chunk)
            raise
        return blocks

    async def check_block(self, chunk: str, index: int, data: bytes) -> bool:
        """Whether ``data`` is block ``index`` of ``chunk`` as committed (a local copy's
        check; chunks recorded without block digests cannot be checked by block)."""
        digests = await self.digests(chunk)
        if digests is None:
            return True
        try:
            await asyncio.to_thread(verify_block, chunk, index, digests, data)
        except CorruptChunk:
            return False
        return True


class VersionReader:
    """Reads one immutable version: verified byte ranges, or whole verified chunks."""

    def __init__(
        self,
        blobs: BlobStore,
        fetch_block: BlockFetcher,
        info: VersionInfo,
        extents: list[Extent],
        on_damage: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.blobs = blobs
        self.on_damage = on_damage
        self.fetch_block = fetch_block
        self.info = info
        self.extents = extents
        self.size = info.size
        self.map = ExtentMap.of(info.version, info.size, extents)

    async def read(self, offset: int, size: int) -> bytes:
        """Fetches only the blocks the range touches, each checked against its digest."""
        end = min(offset + size, self.size)
        covering = self.map.blocks(offset, size)
        blocks = await asyncio.gather(*(self.fetch_block(b.chunk_id, b.block) for b in covering))
        return b"".join(
            self.map.slice_of(block, data, offset, end)
            for block, data in zip(covering, blocks, strict=True)
        )

    async def chunks(self, prefetch: int = 4) -> AsyncIterator[bytes]:
        """Every extent's bytes in file order, fetched ``prefetch`` ahead: a whole chunk
        checked against its id, a slice that starts inside its chunk by its blocks
        (checked against their digests; the rest of the chunk is not fetched)."""

        async def fetch(extent: Extent) -> bytes:
            if extent.chunk_offset:
                first = extent.chunk_offset // BLOCK_SIZE
                last = (extent.chunk_offset + extent.length - 1) // BLOCK_SIZE
                blocks = await asyncio.gather(
                    *(self.fetch_block(extent.chunk_id, b) for b in range(first, last + 1))
                )
                skip = extent.chunk_offset - first * BLOCK_SIZE
                return b"".join(blocks)[skip : skip + extent.length]
            try:
                data = await self.blobs.get(extent.chunk_id)
            except NotFound:
                await self._damaged(extent.chunk_id)
                raise CorruptChunk(
                    f"chunk {extent.chunk_id} is missing from the blob store", extent.chunk_id
                ) from None
            try:
                await asyncio.to_thread(verify, extent.chunk_id, data)
            except CorruptChunk:
                await self._damaged(extent.chunk_id)
                raise
            # A slice at the start of its chunk: the chunk is fetched whole to check it.
            return data if len(data) == extent.length else data[: extent.length]

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

    async def _damaged(self, chunk: str) -> None:
        if self.on_damage is not None:
            await self.on_damage(chunk)
