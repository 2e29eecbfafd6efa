"""Reading committed file content through the block cache, with sequential read-ahead."""

from __future__ import annotations

from dataclasses import dataclass

from mediadrive.core.errors import CorruptChunk
from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE

from .cache import BlockCache

# Read-ahead grows while a reader stays sequential: 2, 4, 8 ... blocks, up to this.
MAX_READAHEAD_BLOCKS = 32


@dataclass
class ReadAhead:
    """Per open file: where the last read ended and how far ahead to fetch."""

    next_offset: int = -1
    window: int = 0
    # Read-ahead has been started up to here (a file offset).
    ahead_to: int = 0

    def advance(self, offset: int, size: int) -> tuple[int, int]:
        """Note a read; the file range to start fetching ahead now (empty for none)."""
        gap = offset - self.next_offset
        end = offset + size
        # Requests of one sequential reader may arrive slightly out of order.
        if self.next_offset >= 0 and -BLOCK_SIZE <= gap <= 4 * BLOCK_SIZE:
            self.window = min(max(self.window * 2, 2), MAX_READAHEAD_BLOCKS)
            self.next_offset = max(self.next_offset, end)
        else:
            self.window = 0
            self.next_offset = end
            self.ahead_to = 0
            return end, end
        limit = end + self.window * BLOCK_SIZE
        start = max(end, self.ahead_to)
        # Top the window up only once half of it is used, so that read-ahead goes out
        # in runs of blocks (one request each) rather than a block at a time.
        if start > end and limit - start < self.window * BLOCK_SIZE // 2:
            return start, start
        self.ahead_to = limit
        return start, limit


async def read_content(
    cache: BlockCache, content: ExtentMap, offset: int, size: int, ahead: ReadAhead | None
) -> bytes:
    end = min(offset + size, content.size)
    if end <= offset:
        return b""
    covering = content.blocks(offset, end - offset)
    # Start every fetch before waiting on the first; what the read needs goes first.
    if len(covering) > 1:
        cache.prefetch_many((chunk, index) for _, chunk, index in covering)
    if ahead is not None:
        lo, hi = ahead.advance(offset, end - offset)
        if hi > lo:
            cache.prefetch_many((chunk, index) for _, chunk, index in content.blocks(lo, hi - lo))
    if len(covering) == 1:
        start, chunk, index = covering[0]
        try:
            return await cache.read(chunk, index, offset - start, end - start)
        except CorruptChunk as exc:
            exc.offset = start
            raise
    parts = []
    for start, chunk, index in covering:
        data = await _block(cache, start, chunk, index)
        lo = max(offset, start) - start
        hi = min(end, start + len(data)) - start
        parts.append(data[lo:hi])
    return b"".join(parts)


async def _block(cache: BlockCache, start: int, chunk: str, index: int) -> bytes:
    """A block that starts at file offset ``start``; a damaged one says where it is."""
    try:
        return await cache.get(chunk, index)
    except CorruptChunk as exc:
        exc.offset = start
        raise
