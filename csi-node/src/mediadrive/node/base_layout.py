"""The blocks of the version a staged copy started from, worked out from its extents.

A staged copy tracks the base version block by block (which blocks it still lacks,
what was written into them), but a version is a handful of extents: a 1 GiB file
of 64 MiB chunks is 16 extents and 1,024 blocks. Listing every block when a file is
opened for writing, and writing that list down, cost milliseconds per gigabyte on
the path of every edit; the layout keeps the extents and gives a block by its
position when asked.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent


@dataclass(frozen=True)
class BaseBlock:
    """A block of the version a staged copy started from: ``length`` bytes at file
    ``offset`` are the block's bytes from ``skip`` on (a slice that starts or ends
    inside a block holds only part of it)."""

    offset: int
    length: int
    chunk_id: str
    index: int
    skip: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def chunk_position(self) -> int:
        """Where in its chunk the block's bytes at ``offset`` are."""
        return self.index * BLOCK_SIZE + self.skip


class BaseLayout(Sequence[BaseBlock]):
    """The blocks of ``extents`` (in file order) by position, as
    :meth:`ExtentMap.all_blocks` lists them, without listing them."""

    def __init__(self, extents: Sequence[Extent] = ()) -> None:
        self.extents = tuple(e for e in extents if e.length > 0)
        # The position of each extent's first block, and one past the last block.
        self._firsts: list[int] = []
        count = 0
        for extent in self.extents:
            self._firsts.append(count)
            count += _last_block(extent) - extent.chunk_offset // BLOCK_SIZE + 1
        self._count = count
        self._groups = self._find_groups()

    @classmethod
    def of(cls, content: ExtentMap) -> BaseLayout:
        """Every block of a committed version, in file order, as a staged copy's base."""
        return cls(content.extents)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> BaseBlock: ...

    @overload
    def __getitem__(self, i: slice) -> list[BaseBlock]: ...

    def __getitem__(self, i: int | slice) -> BaseBlock | list[BaseBlock]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(i)
        k = bisect.bisect_right(self._firsts, i) - 1
        extent = self.extents[k]
        block = extent.chunk_offset // BLOCK_SIZE + i - self._firsts[k]
        at = block * BLOCK_SIZE
        lo = max(extent.chunk_offset - at, 0)
        hi = min(extent.chunk_offset + extent.length - at, BLOCK_SIZE)
        return BaseBlock(
            extent.offset - extent.chunk_offset + at + lo, hi - lo, extent.chunk_id, block, lo
        )

    def __iter__(self) -> Iterator[BaseBlock]:
        return (self[i] for i in range(self._count))

    def groups(self) -> list[tuple[range, Extent]]:
        """The positions of the blocks of each run of the base that is one slice of
        one chunk (extents that continue each other are one run), with that slice."""
        return self._groups

    def rows(self) -> list[list[int | str]]:
        """The extents, as ``from_rows`` takes them back."""
        return [[e.offset, e.length, e.chunk_id, e.chunk_offset] for e in self.extents]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> BaseLayout:
        return cls([Extent(int(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows])

    def _find_groups(self) -> list[tuple[range, Extent]]:
        groups: list[tuple[range, Extent]] = []
        for k, extent in enumerate(self.extents):
            end = self._firsts[k + 1] if k + 1 < len(self.extents) else self._count
            if groups:
                positions, previous = groups[-1]
                if (
                    extent.chunk_id == previous.chunk_id
                    and extent.offset == previous.offset + previous.length
                    and extent.chunk_offset == previous.chunk_offset + previous.length
                ):
                    groups[-1] = (
                        range(positions.start, end),
                        Extent(
                            previous.offset,
                            previous.length + extent.length,
                            previous.chunk_id,
                            previous.chunk_offset,
                        ),
                    )
                    continue
            groups.append((range(self._firsts[k], end), extent))
        return groups


def _last_block(extent: Extent) -> int:
    return (extent.chunk_offset + extent.length - 1) // BLOCK_SIZE


_HELD_RUNS = re.compile(rb"[^\x00]+")
_T = TypeVar("_T")


class MissingBlocks(AbstractSet[int]):
    """The positions of the base blocks a staged copy still lacks: all of
    ``0..count-1`` but the ones it holds. An edit holds a handful of a large file's
    blocks, so the copy keeps those, not every position it lacks (a 100 GiB file is
    102,400 blocks: a set of them took 8 ms to make at every open, and megabytes)."""

    __slots__ = ("count", "held")

    def __init__(self, count: int, held: Iterable[int] = ()) -> None:
        self.count = count
        self.held = {i for i in held if 0 <= i < count}

    @classmethod
    def from_map(cls, settled: bytes) -> MissingBlocks:
        """From a copy's map file: one byte per block, non-zero for a block it holds
        (found run by run: a large file's map is mostly zeros)."""
        held = (i for run in _HELD_RUNS.finditer(settled) for i in range(*run.span()))
        return cls(len(settled), held)

    def __contains__(self, position: object) -> bool:
        return (
            isinstance(position, int) and 0 <= position < self.count and position not in self.held
        )

    def __len__(self) -> int:
        return self.count - len(self.held)

    def __iter__(self) -> Iterator[int]:
        held = self.held
        return (i for i in range(self.count) if i not in held)

    @classmethod
    def _from_iterable(cls, positions: Iterable[_T]) -> set[_T]:
        # What the set operators (&, |, -, ^) build: a plain set of positions, since
        # their result has no block count of its own.
        return set(positions)

    def discard(self, position: int) -> None:
        """The copy holds this block now."""
        if 0 <= position < self.count:
            self.held.add(position)

    def __repr__(self) -> str:
        return f"MissingBlocks({self.count}, held={sorted(self.held)})"
