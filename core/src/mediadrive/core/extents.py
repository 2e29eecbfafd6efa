"""Where a version's bytes are: its extents, and the blocks that cover a byte range.

One type for every reader of committed content (the drive's version reader, the
node's block cache reads, staging and hydration), so the arithmetic lives once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from .hashing import BLOCK_SIZE
from .meta.records import Extent

# Bytes or a view of them: a slice of a view is a view (no copy).
B = TypeVar("B", bytes, memoryview)


class BlockRef(NamedTuple):
    """One ``BLOCK_SIZE`` block of a chunk (``block``: its index in the chunk) as part
    of a file: ``offset`` is the file offset where the block's first byte would sit,
    and only its bytes ``lo`` .. ``hi`` belong to the extent (all of them for a whole
    chunk; fewer at the ends of a slice that starts or ends inside a block, whose
    ``offset`` may then lie before the extent). Blocks are fetched and checked whole;
    readers keep the window."""

    offset: int
    chunk_id: str
    block: int
    lo: int = 0
    hi: int = BLOCK_SIZE

    @property
    def start(self) -> int:
        """The file offset of the first byte of the window."""
        return self.offset + self.lo

    @property
    def end(self) -> int:
        return self.offset + self.hi


def _refs(extent: Extent, first: int, last: int) -> list[BlockRef]:
    """Blocks ``first`` .. ``last`` (positions in the extent's chunk range) of
    ``extent``, with their windows."""
    c0 = extent.chunk_offset
    c1 = c0 + extent.length
    base = extent.offset - c0  # the file offset of the chunk's byte 0
    out = []
    for b in range(first, last + 1):
        at = b * BLOCK_SIZE
        out.append(
            BlockRef(base + at, extent.chunk_id, b, max(c0 - at, 0), min(c1 - at, BLOCK_SIZE))
        )
    return out


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
            lo = max(offset, extent.offset)
            hi = min(end, extent.offset + extent.length)
            if hi > lo:
                # The chunk positions of the range's first and last byte.
                shift = extent.chunk_offset - extent.offset
                out.extend(
                    _refs(extent, (lo + shift) // BLOCK_SIZE, (hi - 1 + shift) // BLOCK_SIZE)
                )
            i += 1
        return out

    def all_blocks(self) -> list[BlockRef]:
        """Every block of the content, in file order (windows tile the file)."""
        out = []
        for extent in self.extents:
            if extent.length > 0:
                first = extent.chunk_offset // BLOCK_SIZE
                last = (extent.chunk_offset + extent.length - 1) // BLOCK_SIZE
                out.extend(_refs(extent, first, last))
        return out

    def slice_of(self, block: BlockRef, data: B, offset: int, end: int) -> B:
        """The part of ``block``'s bytes (the whole block) inside its window and
        ``[offset, end)``."""
        lo = max(offset, block.start) - block.offset
        hi = min(end, block.end, block.offset + len(data)) - block.offset
        return data[lo : max(hi, lo)]
