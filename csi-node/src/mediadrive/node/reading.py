"""Reading committed file content through the block cache.

Two kinds of reader are helped along:

- a sequential reader gets read-ahead: a window of blocks past where it reads,
  fetched as runs of several blocks side by side (see :class:`ReadAhead`);
- a file read at random (reads that jump and miss the cache) is brought into the
  cache whole, in the background, as several concurrent ranged reads, while each
  block a read waits for is fetched on its own at once (see :class:`FileFill`).
  Later reads are then local. Only files that take a small share of the cache's
  bound are filled whole; of a larger one, the chunk around the read (if that fits).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mediadrive.core.errors import CorruptChunk
from mediadrive.core.extents import BlockRef, ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE

from .cache import Block, BlockCache

# Read-ahead grows while a reader stays sequential: 2, 4, 8 ... blocks, up to this.
MAX_READAHEAD_BLOCKS = 32
# The kernel's own read-ahead on the mount (set at mount time). Once a reader streams,
# it sends the next window's requests while the reader's own are still coming: the
# requests of one sequential reader then arrive up to about two windows apart, either
# way. (Before that, only a small step counts as sequential: a random reader of a
# small file must not pass for one.)
KERNEL_READ_AHEAD = 8 << 20
REORDERED = 2 * KERNEL_READ_AHEAD
# A reader whose read-ahead window has grown this far (three sequential reads) streams.
STREAMING_WINDOW = 8
# Reads that jump and miss the cache before the file (or its chunk) is filled: one
# jump alone (a header, then the data) says little about the next reads.
RANDOM_MISSES_TO_FILL = 2
# A file is filled whole when it takes at most this share of the cache's bound.
FILL_SHARE = 4
# Runs of blocks a fill keeps in flight.
FILL_PARALLEL = 4


@dataclass
class FileFill:
    """The background fill of one file's blocks (or one chunk's) into the cache."""

    content: ExtentMap
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


@dataclass
class ReadAhead:
    """Per open file: where the last read ended and how far ahead to fetch; reads
    that jumped and missed the cache; the file's background fill."""

    next_offset: int = -1
    window: int = 0
    # Read-ahead has been started up to here (a file offset).
    ahead_to: int = 0
    # The last read went on from the one before (within a little reordering).
    sequential: bool = False
    random_misses: int = 0
    fill: FileFill | None = field(default=None, repr=False)

    def advance(self, offset: int, size: int) -> tuple[int, int]:
        """Note a read; the file range to start fetching ahead now (empty for none)."""
        gap = offset - self.next_offset
        end = offset + size
        # Requests of one sequential reader arrive out of order (see REORDERED).
        if self.window >= STREAMING_WINDOW:
            self.sequential = -REORDERED <= gap <= REORDERED
        else:
            self.sequential = self.next_offset >= 0 and -BLOCK_SIZE <= gap <= 4 * BLOCK_SIZE
        if self.sequential:
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

    def stop(self) -> None:
        """The file is closed: stop its fill."""
        if self.fill is not None:
            self.fill.stop()
            self.fill = None


def fill_region(cache: BlockCache, content: ExtentMap, offset: int) -> list[BlockRef]:
    """The blocks to bring in for a random reader at ``offset``, from there on and
    then from the start: the whole file if it takes a small enough share of the
    cache, else the chunk around ``offset`` if that does, else none."""
    limit = cache.capacity // FILL_SHARE
    if content.size <= limit:
        start, length = 0, content.size
    else:
        extent = next(
            (e for e in content.extents if e.offset <= offset < e.offset + e.length), None
        )
        if extent is None or extent.length > limit:
            return []
        start, length = extent.offset, extent.length
    blocks = content.blocks(start, length)
    first = next((n for n, b in enumerate(blocks) if b.end > offset), 0)
    return blocks[first:] + blocks[:first]


# Told of the blocks a fill brought in, once they all are (and the fill still holds).
Filled = Callable[[list[BlockRef]], Awaitable[None]]


def _start_fill(
    cache: BlockCache,
    content: ExtentMap,
    offset: int,
    ahead: ReadAhead,
    current: Callable[[], bool],
    filled: Filled | None,
) -> None:
    if ahead.fill is not None:
        if ahead.fill.content is content and (
            ahead.fill.running or content.size <= cache.capacity // FILL_SHARE
        ):
            return  # filling, or filled (what went since is fetched by its readers)
        ahead.stop()
    region = fill_region(cache, content, offset)
    if not region:
        return
    fill = ahead.fill = FileFill(content)

    def keep_going() -> bool:
        return ahead.fill is fill and current()

    async def run() -> None:
        with contextlib.suppress(Exception):
            await cache.fill(((b.chunk_id, b.block) for b in region), FILL_PARALLEL, keep_going)
            if filled is not None and keep_going():
                await filled(region)

    fill.task = asyncio.get_running_loop().create_task(run())


async def read_content(
    cache: BlockCache,
    content: ExtentMap,
    offset: int,
    size: int,
    ahead: ReadAhead | None,
    current: Callable[[], bool] = lambda: True,
    filled: Filled | None = None,
) -> bytes | memoryview:
    """Bytes ``offset`` .. ``offset + size`` of ``content`` (fewer at its end).

    ``ahead`` (per open file) enables read-ahead and fills; ``current()`` says whether
    ``content`` is still the file's, so that a fill of a replaced version stops;
    ``filled`` is handed the blocks of a fill that completed.
    """
    end = min(offset + size, content.size)
    if end <= offset:
        return b""
    covering = content.blocks(offset, end - offset)
    # Start every fetch before waiting on the first; what the read needs goes first.
    if len(covering) > 1:
        cache.prefetch_many((b.chunk_id, b.block) for b in covering)
    if ahead is not None:
        lo, hi = ahead.advance(offset, end - offset)
        if hi > lo:
            cache.prefetch_many((b.chunk_id, b.block) for b in content.blocks(lo, hi - lo))
        if not ahead.sequential and not all(cache.has(b.chunk_id, b.block) for b in covering):
            ahead.random_misses += 1
            if ahead.random_misses >= RANDOM_MISSES_TO_FILL:
                _start_fill(cache, content, offset, ahead, current, filled)
    if len(covering) == 1:
        # Extents tile the file, so one block's window holds the whole range.
        block = covering[0]
        start = block.offset
        try:
            return await cache.read(block.chunk_id, block.block, offset - start, end - start)
        except CorruptChunk as exc:
            exc.offset = block.start
            raise
    parts = []
    for block in covering:
        data = await _block(cache, block.start, block.chunk_id, block.block)
        parts.append(content.slice_of(block, memoryview(data), offset, end))
    return b"".join(parts)


async def _block(cache: BlockCache, start: int, chunk: str, index: int) -> Block:
    """A block whose bytes in the file start at ``start``; a damaged one says where."""
    try:
        return await cache.view(chunk, index)
    except CorruptChunk as exc:
        exc.offset = start
        raise
