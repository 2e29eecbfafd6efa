"""Where a version's bytes are: its extents, and the blocks that cover a byte range.

One type for every reader of committed content (the drive's version reader, the
node's block cache reads, staging and hydration), so the arithmetic lives once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .hashing import BLOCK_SIZE
from .meta.records import Extent


class BlockRef(NamedTuple):
    """One ``BLOCK_SIZE`` block of a chunk (``block``: its index in the chunk) and the
    file offset where it starts. A block is always whole inside its extent: slices
    start and end on block boundaries of their chunk (or at its end)."""

    offset: int
    chunk_id: str
    block: int


@dataclass(frozen=True)
class ExtentMap:
    """One committed version of a file (``version`` None: a file with no version yet)."""

    version: int | None
    size: int
    extents: tuple[Extent, ...]
    starts: tuple[int, ...] = field(default=())

    @classmethod
    def of(cls, version: int | None, size: int, extents: Iterable[Extent]) -> ExtentMap:
        kept = tuple(extents)
        return cls(version, size, kept, tuple(e.offset for e in kept))

    def blocks(self, offset: int, size: int) -> list[BlockRef]:
        """The blocks covering ``size`` bytes at ``offset``, in file order."""
        end = min(offset + size, self.size)
        out: list[BlockRef] = []
        if end <= offset or not self.extents:
            return out
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while i < len(self.extents) and self.extents[i].offset < end:
            extent = self.extents[i]
            # Positions of the blocks within the extent; a slice starts on a block
            # boundary of its chunk, so position p is block ``skip + p`` of the chunk.
            skip = extent.chunk_offset // BLOCK_SIZE
            first = max(offset - extent.offset, 0) // BLOCK_SIZE
            last = (min(end, extent.offset + extent.length) - extent.offset - 1) // BLOCK_SIZE
            out.extend(
                BlockRef(extent.offset + p * BLOCK_SIZE, extent.chunk_id, skip + p)
                for p in range(first, last + 1)
            )
            i += 1
        return out

    def all_blocks(self) -> list[tuple[BlockRef, int]]:
        """Every block of the content with its length, in file order."""
        out = []
        for extent in self.extents:
            skip = extent.chunk_offset // BLOCK_SIZE
            for p in range((extent.length + BLOCK_SIZE - 1) // BLOCK_SIZE):
                length = min(BLOCK_SIZE, extent.length - p * BLOCK_SIZE)
                block = BlockRef(extent.offset + p * BLOCK_SIZE, extent.chunk_id, skip + p)
                out.append((block, length))
        return out

    def slice_of(self, block: BlockRef, data: bytes, offset: int, end: int) -> bytes:
        """The part of ``block``'s bytes that falls inside ``[offset, end)``."""
        lo = max(offset, block.offset) - block.offset
        hi = min(end, block.offset + len(data)) - block.offset
        return data[lo:hi]
