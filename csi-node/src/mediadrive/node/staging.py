"""The write-back staging area: local copies of files being written, and their journal.

A file opened for writing gets a local copy (``<node>-<n>.data``, ``n`` new for each
copy, so that a copy never waits for the files of the one before it to go) and, at its
first change, a journal entry (``<node>-<n>.json``) naming the drive node, the
version the copy started from and its attributes. Writes go to the copy; a commit
uploads a snapshot of it. ``fsync`` makes the copy and its entry durable before it
returns, so after ``kill -9`` (or a power cut, for fsync'd data) the agent finds
every entry on restart and commits it.

The copy starts sparse: the extents of the version it started from are noted in its
journal entry (in ``<node>-<n>.base`` past a few hundred; their blocks are worked
out by position, see ``base_layout``), and a block is copied in only when something
reads it, writes part of it, or a commit needs it. ``<node>-<n>.map``, made at the
first such block, has one byte per block, set once the copy no longer needs that
block from the base (copied in, overwritten whole, or truncated away), so a restart
knows which blocks the copy still lacks. Editing a megabyte of a remote file
gigabytes long fetches the blocks around the edit, not the file.

A write that covers part of a block the copy lacks does not wait for that block:
its bytes go into the copy and its range is noted (``<node>-<n>.part``, appended after
the bytes are in), and whatever later needs the block copies in only the base bytes no
write replaced. A commit keeps those base bytes as slices of their chunk, so editing a
remote file fetches nothing at all unless something reads around the edit.

A copy no longer needed (committed and closed) loses its journal entry, and its files
are removed in the background; files without an entry are removed at the next start.

Nothing here talks to the drive: the agent decides when to commit, and says how to
fetch a block.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediadrive.core import private
from mediadrive.core.durability import fsync_dir
from mediadrive.core.errors import MediadriveError, StoreFull
from mediadrive.core.meta import Extent

from .base_layout import BaseBlock, BaseLayout, MissingBlocks

log = logging.getLogger(__name__)

# Snapshots of files up to this size are taken on the event loop in one go; larger
# ones hold writers back while a thread copies them.
_INLINE_SNAPSHOT = 8 << 20


# Blocks copied in side by side when a large range is needed at once.
_FILL_WINDOW = 32

# Unchanged base bytes shorter than this, in blocks a write changed in part, are sent
# again with the write rather than kept as a slice of their chunk (an extent each).
MIN_SLICE = 64 << 10
# Scattered writes past this many separate ranges are not told apart any more: the
# blocks they fell in count as changed whole (the list stays cheap to keep sorted).
MAX_CHANGED_RANGES = 4096
# A copy's dirty pages start going to disk each time this much more is written into it.
WRITE_BEHIND = 8 << 20
# Direct writes into copies under way at once (each waits for the disk).
_DIRECT_WRITERS = 4

# A block the copy lacks takes at most this many separate written ranges; a write that
# would make more waits for the block to be copied in instead.
MAX_PARTIAL_RANGES = 16
# Past any file offset (sorts after every (start, end) range that starts at an offset).
_END = 1 << 63
# One written range of a block the copy lacks, in ``.part``: position, start, end.
_PART_RECORD = struct.Struct("<qqq")
# A base of up to this many extents is written in the copy's journal entry; a larger
# one in the copy's ``.base`` file once, so that flushing the entry stays small.
_JOURNALED_EXTENTS = 256

# Fetches one verified block of a chunk: (chunk id, block index) -> its bytes.
FetchBlock = Callable[[str, int], Awaitable[bytes]]
# Whether a block is at hand (in the local cache): (chunk id, block index) -> bool.
HasBlock = Callable[[str, int], bool]
# Told of every change to a copy: (copy, offset, length) of a write, or (copy, None,
# None) for a change that may have touched any byte.
ChangeListener = Callable[["StagedFile", int | None, int | None], None]


class StagingBusy(MediadriveError):
    """Another agent is using this cache folder."""


@dataclass(eq=False)
class StagedFile:
    node_id: int
    path: str
    base_version: int | None
    mode: int
    mtime_ns: int
    fd: int
    # The copy's files are ``<stem>.data``, ``<stem>.json`` and so on (see Staging).
    stem: str = ""
    dirty: bool = False
    # Bumped by every change; a commit is complete if it did not move meanwhile.
    gen: int = 0
    writers: int = 0
    # Unlinked or replaced while open: never committed, dropped on last close.
    orphan: bool = False
    # The last commit was refused under the reject policy; wait for a new change.
    rejected: bool = False
    # Why a write into the copy failed (a full cache disk): the copy may hold part of
    # what the application wrote, so it is never committed; a truncate to 0 starts over.
    failed: str = ""
    recovered: bool = False
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set while a snapshot or a commit reads the copy: changes wait (see held_back).
    copying: asyncio.Event | None = None
    # Changes waiting on ``copying``: a commit must not drop the copy under them.
    waiting: int = 0
    # The blocks of the base version, in file order (a BaseLayout; a plain list in
    # copies journaled by earlier releases), and which of them (by position) the copy
    # still lacks; ``map_fd`` records the others, one byte per block.
    base: Sequence[BaseBlock] = ()
    missing: MissingBlocks = field(default_factory=lambda: MissingBlocks(0))
    map_fd: int = -1
    # Where the map goes: it is made at the first block the copy holds (an edit of
    # blocks not at hand never makes one).
    map_path: Path | None = None
    on_change: ChangeListener | None = None
    # The byte ranges writes changed, (start, end), sorted and disjoint; with
    # ``changed_unknown`` (a truncate, a punch, a copy found after a restart) any byte
    # of a block the copy holds may have changed. See :meth:`untouched_runs`.
    changed: list[tuple[int, int]] = field(default_factory=list)
    changed_unknown: bool = False
    # Of the blocks the copy lacks, by position, the byte ranges (start, end; sorted,
    # disjoint) written into the copy meanwhile: the copy holds those bytes, the base
    # the rest. Noted in ``part_path`` once written, so a restart knows them too.
    partial: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    part_path: Path | None = None
    part_fd: int = -1
    # The copy opened again with O_DIRECT, for writes gathered in aligned memory (see
    # write_direct); -1 until the first, -2 where the file system refuses it.
    direct_fd: int = field(default=-1, init=False)
    direct_writes: set[asyncio.Future[bool]] = field(default_factory=set, init=False)
    # Bytes written since the copy's writeback was last started (see Staging.wrote).
    unsynced: int = field(default=0, init=False)
    # Whether the copy's ``.base`` is known to be on stable storage (see Staging.sync).
    base_synced: bool = field(default=False, init=False)
    # Whether a journal entry of the copy may be on stable storage (an fsync flushed
    # it, or a restart found it).
    flushed: bool = False
    # Whether the copy has a journal entry; without one (a copy nothing changed yet, or
    # see Staging.forget_entry), the next change writes it through ``rejournal``.
    journaled: bool = field(default=True, init=False)
    rejournal: Callable[[StagedFile], None] | None = None
    # Positions of the base blocks the copy holds or had bytes written into, sorted:
    # the few that untouched_runs and missing_bytes look at one by one (an edit of a
    # 100 GiB file touches a handful of its 102,400 blocks).
    _touched: list[int] = field(default_factory=list, init=False)
    _fills: dict[int, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._touched = sorted(self.missing.held | self.partial.keys())

    def _touch_block(self, i: int) -> None:
        j = bisect.bisect_left(self._touched, i)
        if j == len(self._touched) or self._touched[j] != i:
            self._touched.insert(j, i)

    def _untouched(self, group: range) -> bool:
        """Whether the copy still lacks every block of ``group`` and no write went into
        any of them."""
        j = bisect.bisect_left(self._touched, group.start)
        return j == len(self._touched) or self._touched[j] >= group.stop

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def opened_direct(self) -> int:
        """The copy opened again with O_DIRECT (see Staging.write_direct); -1 where the
        file system has no direct I/O."""
        if self.direct_fd == -1 and self.fd >= 0:
            try:
                # The same inode, through the open file's own name in /proc.
                self.direct_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.direct_fd = -2
        return self.direct_fd if self.direct_fd >= 0 else -1

    async def direct_settled(self) -> None:
        """Wait for the direct writes into the copy under way: a change that is not one
        of them (a write out of order, a truncate) must land after them."""
        while self.direct_writes:
            await asyncio.gather(*self.direct_writes, return_exceptions=True)

    def touch(self, offset: int | None = None, length: int | None = None) -> None:
        """The copy changed: ``length`` bytes written at ``offset``, or (no range) in
        any way (truncated, punched, a failed write)."""
        self.gen += 1
        self.dirty = True
        self.rejected = False
        self.mtime_ns = time.time_ns()
        if self.partial and offset is not None and length:
            self._note_partial(offset, length)
        if offset is None or length is None or len(self.changed) >= MAX_CHANGED_RANGES:
            self.changed_unknown = True
            self.changed = []
        elif length > 0 and not self.changed_unknown:
            _add_range(self.changed, offset, offset + length)
        if not self.journaled and self.rejournal is not None:
            # Before the writer hears back: a kill from now on finds the copy.
            self.rejournal(self)
        if self.on_change is not None:
            self.on_change(self, offset, length)

    def _note_partial(self, offset: int, length: int) -> None:
        """Record, after the bytes are in the copy, the written ranges that fell in
        blocks it lacks (a restart must not copy the base over them)."""
        records = []
        for i in self.lacking(offset, length):
            if i in self.partial:
                block = self.base[i]
                records.append(
                    _PART_RECORD.pack(i, max(offset, block.offset), min(offset + length, block.end))
                )
        if not records:
            return
        if self.part_fd < 0:
            assert self.part_path is not None
            self.part_fd = os.open(self.part_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self.part_fd, b"".join(records))

    def journal(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "node_id": self.node_id,
            "path": self.path,
            "base_version": self.base_version,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "dirty": self.dirty,
            "failed": self.failed,
        }
        if isinstance(self.base, BaseLayout) and len(self.base.extents) <= _JOURNALED_EXTENTS:
            # The base version's extents: a restart cannot read the copy without them
            # (a larger base, or one from an earlier release, is in its ``.base`` file).
            entry["extents"] = self.base.rows()
        return entry

    def missing_bytes(self) -> int:
        total = 0
        for group, extent in self._extent_groups():
            if self._untouched(group):
                total += extent.length
            else:
                total += sum(self.base[i].length for i in group if i in self.missing)
        return total

    def lacking(self, offset: int, size: int) -> list[int]:
        """Positions of the base blocks the range ``offset``..+``size`` still lacks."""
        if not self.missing or size <= 0:
            return []
        end = offset + size
        i = max(bisect.bisect_right(self.base, offset, key=_block_offset) - 1, 0)
        found = []
        while i < len(self.base) and self.base[i].offset < end:
            if i in self.missing and self.base[i].end > offset:
                found.append(i)
            i += 1
        return found

    def _from_base(
        self, i: int, start: int | None = None, end: int | None = None
    ) -> list[tuple[int, int]]:
        """The ranges of lacking block ``i`` (within ``start..end``, by default all of
        it) no write went into: what the base still has to fill."""
        block = self.base[i]
        lo = block.offset if start is None else max(start, block.offset)
        hi = block.end if end is None else min(end, block.end)
        return _subtract(self.partial.get(i, []), lo, hi)

    def holds(self, offset: int, size: int) -> bool:
        """Whether the copy holds every byte of the range (none of it is still to come
        from the base)."""
        return not any(
            self._from_base(i, offset, offset + size) for i in self.lacking(offset, size)
        )

    def needing(self, covered: Sequence[tuple[int, int]]) -> list[int]:
        """Positions of the blocks the copy lacks that have bytes neither written into
        the copy nor in the sorted, disjoint ``covered`` ranges (start, end)."""
        ranges = list(covered)
        found = []
        for group, extent in self._extent_groups():
            start, end = extent.offset, extent.offset + extent.length
            j = bisect.bisect_right(ranges, (start, _END)) - 1
            if j >= 0 and ranges[j][0] <= start and end <= ranges[j][1]:
                continue  # inside one covered range, as most untouched extents are
            for first, last, touched in self._stretches(group):
                if not touched:
                    found.extend(self._uncovered(ranges, first, last + 1))
                elif first in self.missing and any(
                    _subtract(ranges, lo, hi) for lo, hi in self._from_base(first)
                ):
                    found.append(first)
        return found

    def _stretches(self, group: range) -> Iterator[tuple[int, int, bool]]:
        """The blocks of ``group`` in order as (first, last, touched): each block the copy
        holds or had a write into, alone, and between them each run of blocks it lacks
        whole, at once (a 64 MiB chunk is 64 blocks; an edit touches two)."""
        after = group.start
        lo = bisect.bisect_left(self._touched, group.start)
        hi = bisect.bisect_left(self._touched, group.stop)
        for p in self._touched[lo:hi]:
            if p > after:
                yield after, p - 1, False
            yield p, p, True
            after = p + 1
        if after < group.stop:
            yield after, group.stop - 1, False

    def _uncovered(self, ranges: list[tuple[int, int]], first: int, stop: int) -> list[int]:
        """Positions among the adjacent blocks ``first`` to ``stop`` (excluded) with
        bytes outside the sorted, disjoint ``ranges``."""
        found: list[int] = []
        for lo, hi in _subtract(ranges, self.base[first].offset, self.base[stop - 1].end):
            i = bisect.bisect_right(self.base, lo, first, stop, key=_block_offset) - 1
            while i < stop and self.base[i].offset < hi:
                if not found or found[-1] != i:
                    found.append(i)
                i += 1
        return found

    def untouched_extents(self) -> list[tuple[Extent, Sequence[int]]]:
        """The base's extents whose every block the copy still lacks (so has not
        touched), with the positions of those blocks."""
        return [
            (extent, group) for group, extent in self._extent_groups() if self._untouched(group)
        ]

    def untouched_runs(self) -> list[tuple[Extent, Sequence[int]]]:
        """Every longest run of base bytes the copy holds unchanged within one extent
        of the base, as a slice of that extent's chunk, with the positions of the
        blocks it covers. A block the copy still lacks is unchanged whole; of a block
        copied in, the bytes no write changed (none when a change had no range).
        Of a block the copy lacks but was written into, the bytes no write replaced.
        Runs shorter than ``MIN_SLICE`` that hold no lacking block are left out:
        those bytes are sent again rather than kept as a sliver."""
        out: list[tuple[Extent, Sequence[int]]] = []
        for group, extent in self._extent_groups():
            if self._untouched(group):
                out.append((extent, group))  # all of it
                continue
            # (start, end, first position, last position)
            spans: list[tuple[int, int, int, int]] = []
            for first, last, touched in self._stretches(group):
                if not touched:
                    spans.append((self.base[first].offset, self.base[last].end, first, last))
                    continue
                p, block = first, self.base[first]
                if p in self.partial:
                    spans.extend((lo, hi, p, p) for lo, hi in self._from_base(p))
                elif p in self.missing:
                    spans.append((block.offset, block.end, p, p))
                elif not self.changed_unknown:
                    kept = _subtract(self.changed, block.offset, block.end)
                    spans.extend((lo, hi, p, p) for lo, hi in kept)
            run: list[tuple[int, int, int, int]] = []
            for span in [*spans, (-1, -1, -1, -1)]:
                if run and span[0] == run[-1][1]:
                    run.append(span)
                    continue
                if run and (
                    run[-1][1] - run[0][0] >= MIN_SLICE
                    or any(first in self.missing for _, _, first, _ in run)
                ):
                    out.append(self._run_extent(run))
                run = [span]
        return out

    def _run_extent(self, run: list[tuple[int, int, int, int]]) -> tuple[Extent, Sequence[int]]:
        """The slice of its chunk that a run of adjacent spans is, with the positions of
        the blocks it covers (consecutive, since the spans are)."""
        start, _, first, _ = run[0]
        block = self.base[first]
        extent = Extent(
            start,
            run[-1][1] - start,
            block.chunk_id,
            block.chunk_position + start - block.offset,
        )
        return extent, range(first, run[-1][3] + 1)

    def _extent_groups(self) -> list[tuple[range, Extent]]:
        """Positions of the base blocks, grouped by the base extent they came from
        (consecutive blocks of one chunk at consecutive file offsets), with the slice
        of the chunk each group is."""
        if isinstance(self.base, BaseLayout):
            return self.base.groups()
        groups: list[range] = []
        for i, block in enumerate(self.base):
            if groups:
                prev = self.base[i - 1]
                if (
                    block.chunk_id == prev.chunk_id
                    and block.chunk_position == prev.chunk_position + prev.length
                    and block.offset == prev.end
                ):
                    groups[-1] = range(groups[-1].start, i + 1)
                    continue
            groups.append(range(i, i + 1))
        return [(group, self._extent(group)) for group in groups]

    def _extent(self, positions: Sequence[int]) -> Extent:
        """The slice of the chunk that consecutive base blocks ``positions`` are."""
        first, last = self.base[positions[0]], self.base[positions[-1]]
        return Extent(first.offset, last.end - first.offset, first.chunk_id, first.chunk_position)

    async def held_back(self, direct: bool = False) -> None:
        """Wait until no snapshot or commit is reading the copy (before changing it),
        and, unless the change is a ``direct`` write, until the direct writes under way
        are in."""
        while self.copying is not None:
            self.waiting += 1
            try:
                await self.copying.wait()
            finally:
                self.waiting -= 1
        if not direct:
            await self.direct_settled()

    def settle(self, positions: Sequence[int]) -> None:
        """The copy no longer needs these base blocks (after their bytes were written)."""
        for i in positions:
            if i in self.missing:
                self.missing.discard(i)
                self.partial.pop(i, None)
                self._touch_block(i)
                if self.map_fd < 0 and self.map_path is not None and self.fd >= 0:
                    # Cut: whatever an earlier copy of the file left there is not ours.
                    self.map_fd = os.open(self.map_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                if self.map_fd >= 0:
                    os.pwrite(self.map_fd, b"\x01", i)

    async def materialize(self, positions: Sequence[int], fetch: FetchBlock) -> None:
        """Copy in the listed base blocks the copy still lacks."""
        for start in range(0, len(positions), _FILL_WINDOW):
            window = positions[start : start + _FILL_WINDOW]
            await asyncio.gather(*(self._fill(i, fetch) for i in window))

    async def materialize_range(self, offset: int, size: int, fetch: FetchBlock) -> None:
        """Copy in the base blocks a read of the range needs. A read that has to start
        a fetch also starts fetching the block after it: whoever reads through a copy
        is often reading on, and a write covering pages in part makes the kernel read
        the page at each end of it, one after the other (the second read finds its
        block on the way, and starts nothing more)."""
        lacking = self.lacking(offset, size)
        if not lacking:
            return
        missed = any(i not in self._fills for i in lacking)
        for i in lacking[:_FILL_WINDOW]:
            self._start_fill(i, fetch)  # asked for before the next block
        if missed:
            self.prefetch(lacking[-1] + 1, fetch)
        await self.materialize(lacking, fetch)

    def prefetch(self, i: int, fetch: FetchBlock) -> None:
        """Start copying in base block ``i`` if the copy lacks it; nobody waits for it
        (a failure is left to whoever needs the block next)."""
        task = self._start_fill(i, fetch)
        if task is not None:
            task.add_done_callback(_forget_failure)

    async def settled(self) -> None:
        """Wait until no base block is being copied in (prefetches included)."""
        while self._fills:
            await asyncio.gather(*list(self._fills.values()), return_exceptions=True)

    async def _fill(self, i: int, fetch: FetchBlock) -> None:
        task = self._start_fill(i, fetch)
        if task is not None:
            # One fetch per block whoever asks; a reader that gives up does not cancel it.
            await asyncio.shield(task)

    def _start_fill(self, i: int, fetch: FetchBlock) -> asyncio.Task[None] | None:
        """The copy-in of block ``i`` under way, started if needed; None when the copy
        does not lack it."""
        task = self._fills.get(i)
        if task is None and i in self.missing:
            task = self._fills[i] = asyncio.ensure_future(self._copy_in(i, fetch))
        return task

    async def _copy_in(self, i: int, fetch: FetchBlock) -> None:
        try:
            block = self.base[i]
            data = await fetch(block.chunk_id, block.index)
            # A copy closed meanwhile (committed and dropped, or the mount closing)
            # takes no more bytes: its descriptor may already name another file.
            if i in self.missing and self.fd >= 0:
                # Around what was written into the copy while it lacked the block.
                self._write_from_base(i, data)
                self.settle([i])
        finally:
            self._fills.pop(i, None)

    async def _landed(self, i: int) -> None:
        task = self._fills.get(i)
        if task is not None:
            await asyncio.shield(task)

    async def prepare_write(
        self, offset: int, size: int, fetch: FetchBlock, local: HasBlock | None = None
    ) -> list[int]:
        """Ready the copy for a write: base blocks it covers in part are copied in
        around it; given ``local``, the ones it says are not at hand, and the ones
        whose base bytes left would all be kept as slices anyway, are noted as written
        in part instead, while they take few ranges. The ones it covers whole (or
        will, with the bytes copied around it) are returned, to be settled once the
        write is done."""
        end = offset + size
        whole: list[int] = []
        part: list[int] = []
        # Blocks copied in around the write: position, and the part of the write in it.
        around: list[tuple[int, int, int]] = []
        for i in self.lacking(offset, size):
            block = self.base[i]
            start, stop = max(offset, block.offset), min(end, block.end)
            if offset <= block.offset and block.end <= end:
                whole.append(i)
            elif local is None:
                part.append(i)
            elif self._keeps_sliver(i, start, stop) and local(block.chunk_id, block.index):
                around.append((i, start, stop))
            elif not self._take_partial(i, start, stop):
                part.append(i)
        if len(around) == 1 and not part and not whole:
            # The usual edit: awaited here, as a task it would start a turn later.
            i, start, stop = around[0]
            self._copy_around(
                i, start, stop, await fetch(self.base[i].chunk_id, self.base[i].index)
            )
        elif part or whole or around:
            # The (at most two) blocks covered in part are fetched side by side.
            fetched, _ = await asyncio.gather(
                asyncio.gather(
                    *(fetch(self.base[i].chunk_id, self.base[i].index) for i, _, _ in around)
                ),
                asyncio.gather(
                    *(self._fill(i, fetch) for i in part), *(self._landed(i) for i in whole)
                ),
            )
            for (i, start, stop), data in zip(around, fetched, strict=True):
                self._copy_around(i, start, stop, data)
        return whole

    def _copy_around(self, i: int, start: int, end: int, data: bytes) -> None:
        """Copy base block ``i`` (``data``) into the copy around ``start..end``, which
        a write is about to fill: that range is noted as written first, so neither
        this nor a fill under way copies the base over it, and the block is settled
        once the write is in (see whole_in_parts). A block that takes too many ranges
        for that is copied in whole and settled now, as a fill does. The note comes
        once the block is fetched, just before the write, as it does for a block
        written in part without being copied in."""
        if i not in self.missing or self.fd < 0:
            return  # copied in meanwhile, or the copy closed
        noted = self._take_partial(i, start, end)
        self._write_from_base(i, data)
        if noted:
            block = self.base[i]
            self.partial[i] = [(block.offset, block.end)]
        else:
            self.settle([i])

    def _write_from_base(self, i: int, data: bytes) -> None:
        """Write base block ``i`` (``data``, the chunk's block) into the copy where no
        write went (see _from_base)."""
        block = self.base[i]
        view = memoryview(data)[block.skip : block.skip + block.length]
        for lo, hi in self._from_base(i):
            os.pwrite(self.fd, view[lo - block.offset : hi - block.offset], lo)

    def _take_partial(self, i: int, start: int, end: int) -> bool:
        """Note ``start..end`` as written into lacking block ``i``; False (nothing
        noted) when the block has too many ranges already. A block written whole in
        parts is settled by the caller's next settle (see :meth:`whole_in_parts`)."""
        ranges = self.partial.get(i)
        if ranges is None:
            ranges = self.partial[i] = []
            self._touch_block(i)
        elif len(ranges) >= MAX_PARTIAL_RANGES:
            return False
        _add_range(ranges, start, end)
        return True

    async def fill_local(self, fetch: FetchBlock, local: HasBlock) -> None:
        """Copy in the blocks written in part that keep a sliver of base bytes and
        whose base ``local`` says is at hand (it came into the cache since): a commit
        then sends their short unchanged runs with the write rather than keeping them
        as slivers."""
        await self.materialize(
            [
                i
                for i in sorted(self.partial)
                if self._keeps_sliver(i) and local(self.base[i].chunk_id, self.base[i].index)
            ],
            fetch,
        )

    def _keeps_sliver(self, i: int, start: int | None = None, end: int | None = None) -> bool:
        """Whether lacking block ``i``, with the range ``start..end`` written into it
        besides what was, would still have a run of base bytes shorter than
        ``MIN_SLICE``: the only reason to copy a block in for a write (a longer run
        is kept as a slice of the base whether the copy holds its bytes or not)."""
        written = list(self.partial.get(i, []))
        if start is not None and end is not None:
            _add_range(written, start, end)
        block = self.base[i]
        return any(hi - lo < MIN_SLICE for lo, hi in _subtract(written, block.offset, block.end))

    def whole_in_parts(self, offset: int, size: int) -> list[int]:
        """Positions of the lacking blocks in the range whose every byte writes have
        now replaced: settled once the last of those writes is in the copy."""
        return [
            i for i in self.lacking(offset, size) if i in self.partial and not self._from_base(i)
        ]

    async def prepare_truncate(self, size: int, fetch: FetchBlock) -> list[int]:
        """Ready the copy for a truncate to ``size``: the base block it cuts through is
        copied in (growing again must show zeros past the cut); the blocks past it are
        returned, to be settled once the truncate is done."""
        past = []
        first = max(bisect.bisect_right(self.base, size, key=_block_offset) - 1, 0)
        for i in range(first, len(self.base)):
            if i not in self.missing:
                continue
            block = self.base[i]
            if block.end <= size:
                continue
            if block.offset < size:
                await self._fill(i, fetch)
            else:
                await self._landed(i)
                past.append(i)
        return past


class Staging:
    def __init__(self, root: Path, write_behind: bool = True) -> None:
        self.root = root
        # Start a large write's pages on their way to disk as it goes (see wrote): off
        # where no fsync waits for them (unless versions come from saves only, the
        # commit is the fsync, and a copy dropped once committed leaves its pages
        # unwritten).
        self.write_behind = write_behind
        self.files: dict[int, StagedFile] = {}
        self._lock_fd: int | None = None
        # fsync writes journal entries from a worker thread while commits write them
        # from the event loop: one at a time, or they race on the same temporary file
        # (and the loser's fsync fails with ENOENT).
        self._journal_lock = threading.Lock()
        # Given to every copy made or found here (see StagedFile.touch).
        self.on_change: ChangeListener | None = None
        # Numbers the copies' files (see create); past those a restart finds.
        self._copies = itertools.count(1)
        # Worker threads by job, made when first needed (see _pool): "io" starts a
        # copy's writeback (see wrote), "sync" flushes its files (see sync), "drop"
        # removes a dropped copy's files (see drop).
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()

    def open(self) -> list[StagedFile]:
        """Take the folder (one agent at a time) and return the entries a crash left."""
        private.make_dir(self.root, tighten=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StagingBusy(
                f"cache folder {self.root.parent} is in use by another mount; "
                "give this mount its own --cache-dir"
            ) from None
        self._lock_fd = fd
        # Snapshots, and journal entries a crash cut short before they replaced theirs.
        for pattern in ("*.snap", "*.tmp"):
            for leftover in self.root.glob(pattern):
                leftover.unlink(missing_ok=True)
        # Where earlier releases put dropped copies on their way out.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / "trash")
        recovered = []
        last = 0
        for entry_path in sorted(self.root.glob("*.json")):
            stem = entry_path.stem
            # <node>-<n>; earlier releases named a copy by its node alone.
            _, _, number = stem.partition("-")
            if number.isdigit():
                last = max(last, int(number))
            try:
                text = entry_path.read_text()
                if not text:
                    # Made in place and never flushed (see write_journal): a power cut
                    # took its contents, and with them nothing an fsync acknowledged.
                    log.info("staging entry %s is empty; the copy is dropped", entry_path)
                    entry_path.unlink()
                    continue
                record = json.loads(text)
                node_id = int(record["node_id"])
                data_fd = os.open(self._file(stem, ".data"), os.O_RDWR)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("staging entry %s is unreadable (%s); it is kept aside", entry_path, exc)
                with contextlib.suppress(OSError):
                    entry_path.rename(entry_path.with_suffix(".broken"))
                continue
            try:
                base, missing, map_fd, base_file = self._open_base(stem, record)
                partial = self._open_partial(stem, len(base), missing)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("staging entry %s: bad base list (%s); kept aside", entry_path, exc)
                os.close(data_fd)
                with contextlib.suppress(OSError):
                    entry_path.rename(entry_path.with_suffix(".broken"))
                continue
            staged = StagedFile(
                node_id=node_id,
                path=str(record.get("path", "")),
                base_version=record.get("base_version"),
                mode=int(record.get("mode", 0o644)),
                mtime_ns=int(record.get("mtime_ns", time.time_ns())),
                fd=data_fd,
                stem=stem,
                # Whether it changed since its last commit is unknown: commit it, and let
                # the commit notice when nothing changed.
                dirty=True,
                recovered=True,
                flushed=True,
                # What changed in the blocks it holds was not journaled.
                changed_unknown=True,
                failed=str(record.get("failed", "")),
                base=base,
                missing=missing,
                map_fd=map_fd,
                map_path=self._file(stem, ".map") if base else None,
                on_change=self.on_change,
                rejournal=self.write_journal,
                partial=partial,
                part_path=self._file(stem, ".part"),
            )
            # A base read from its own file is flushed with the copy's next fsync.
            staged.base_synced = not base_file
            self.files[node_id] = staged
            recovered.append(staged)
        # Files of copies dropped before a crash or an unmount that were not removed yet.
        for suffix in _COPY_FILES:
            for orphan in self.root.glob(f"*{suffix}"):
                if not orphan.with_suffix(".json").exists():
                    orphan.unlink(missing_ok=True)
        self._copies = itertools.count(last + 1)
        return recovered

    def _open_base(
        self, stem: str, record: dict[str, Any]
    ) -> tuple[Sequence[BaseBlock], MissingBlocks, int, bool]:
        """The base blocks of a staged copy, which of them it lacks, its map (-1 if it
        has none yet) and whether the base came from its ``.base`` file."""
        base: Sequence[BaseBlock]
        base_file = False
        if "extents" in record:
            base = BaseLayout.from_rows(record["extents"])
        else:
            base_path = self._file(stem, ".base")
            if not base_path.exists():
                return BaseLayout(), MissingBlocks(0), -1, False
            base_file = True
            rows = json.loads(base_path.read_text())
            if isinstance(rows, dict):
                base = BaseLayout.from_rows(rows["extents"])
            else:
                # Earlier releases listed every block; rows of four were written before
                # slices could start inside a block.
                base = [
                    BaseBlock(int(r[0]), int(r[1]), str(r[2]), int(r[3]), *map(int, r[4:]))
                    for r in rows
                ]
        try:
            map_fd = os.open(self._file(stem, ".map"), os.O_RDWR)
        except FileNotFoundError:
            # No block was copied in (the map is made at the first), or the copy has no
            # base at all.
            return base, MissingBlocks(len(base)), -1, base_file
        settled = os.pread(map_fd, len(base), 0).ljust(len(base), b"\x00")
        return base, MissingBlocks.from_map(settled), map_fd, base_file

    def _open_partial(
        self, stem: str, blocks: int, missing: MissingBlocks
    ) -> dict[int, list[tuple[int, int]]]:
        """The ranges written into blocks a staged copy still lacks."""
        partial: dict[int, list[tuple[int, int]]] = {}
        try:
            raw = self._file(stem, ".part").read_bytes()
        except FileNotFoundError:
            return partial
        # A record cut short by the crash was never acknowledged: its write is not in.
        whole = len(raw) - len(raw) % _PART_RECORD.size
        for i, start, end in _PART_RECORD.iter_unpack(raw[:whole]):
            if not 0 <= i < blocks or start >= end:
                raise ValueError(f"bad written range {i} {start} {end}")
            if i in missing:
                _add_range(partial.setdefault(i, []), start, end)
        return partial

    def close(self) -> None:
        for staged in self.files.values():
            _close(staged)
        self.files.clear()
        with self._pools_lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _file(self, stem: str, suffix: str) -> Path:
        return self.root / f"{stem}{suffix}"

    def data_path(self, staged: StagedFile) -> Path:
        """Where a staged copy's bytes are (a commit of a closed copy reads them)."""
        return self._file(staged.stem, ".data")

    def get(self, node_id: int) -> StagedFile | None:
        return self.files.get(node_id)

    def create(
        self,
        node_id: int,
        path: str,
        base_version: int | None,
        mode: int,
        mtime_ns: int,
        base: BaseLayout | None = None,
        size: int = 0,
    ) -> StagedFile:
        """A staged copy of ``size`` bytes that lacks every block of ``base`` (none for
        a new file or O_TRUNC); they are copied in as they are needed."""
        base = base or BaseLayout()
        # Files of its own: none of an earlier copy of the file (being removed on a
        # thread, see drop) is in its way, and none can tell a restart of blocks or
        # written ranges this copy never held.
        stem = f"{node_id}-{next(self._copies)}"
        fd = os.open(self._file(stem, ".data"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        # The base goes in the journal entry (a large one in its own file) and the map
        # is made at the first block copied in: an edit makes two files fewer.
        in_file = len(base.extents) > _JOURNALED_EXTENTS
        try:
            if size:
                # Never to 0: ext4 flushes a file cut to 0 when it is closed (its
                # replace-by-truncate guard), so a new file's copy would be written to
                # disk when dropped, after its commit made that pointless.
                os.ftruncate(fd, size)
            if in_file:
                private.write_file(self._file(stem, ".base"), json.dumps({"extents": base.rows()}))
        except BaseException:
            os.close(fd)
            self._file(stem, ".data").unlink(missing_ok=True)
            raise
        staged = StagedFile(
            node_id,
            path,
            base_version,
            mode,
            mtime_ns,
            fd,
            stem=stem,
            base=base,
            missing=MissingBlocks(len(base)),
            map_path=self._file(stem, ".map") if base else None,
            on_change=self.on_change,
            rejournal=self.write_journal,
            part_path=self._file(stem, ".part"),
        )
        staged.base_synced = not in_file
        # Its entry is written at its first change (StagedFile.touch), before the writer
        # hears back: until then a restart has nothing of it to keep.
        staged.journaled = False
        self.files[node_id] = staged
        return staged

    def write_journal(self, staged: StagedFile, durable: bool = False) -> None:
        path = self._file(staged.stem, ".json")
        with self._journal_lock:
            # Read under the lock: whoever writes last writes the copy's latest state.
            entry = json.dumps(staged.journal()).encode()
            if staged.journaled or durable:
                # An entry replaced whole: a crash leaves the old one or the new one.
                tmp = path.with_suffix(".tmp")
                private.write_file(tmp, entry, durable)
                os.replace(tmp, path)
            else:
                # None to replace, so written in place: a power cut before it is flushed
                # may leave it empty (a restart takes that for none), but an fsync of
                # the copy always writes its entry anew, durably, as above.
                private.write_file(path, entry)
            staged.journaled = True
        if durable:
            fsync_dir(self.root)

    def forget_entry(self, staged: StagedFile) -> bool:
        """Remove the journal entry of a copy whose every byte is in a recorded version:
        a restart after a power cut must not bring back as a change a copy whose last
        writes never reached this disk. The next change writes the entry again
        (StagedFile.touch). True when a local flush had made the entry durable: its
        removal must be made durable too (:meth:`sync_root`, in a worker thread)."""
        with self._journal_lock:
            self._file(staged.stem, ".json").unlink(missing_ok=True)
            staged.journaled = False
        flushed, staged.flushed = staged.flushed, False
        return flushed

    def sync_root(self) -> None:
        """Make the journal's entries and removals durable."""
        fsync_dir(self.root)

    def sync(self, staged: StagedFile) -> None:
        """Make the copy and its journal entry durable (runs in a worker thread)."""
        # Side by side: flushes that overlap share the file system's journal commits
        # (one after another, each of the copy's files waited for a commit of its own).
        # fdatasync: the bytes and the sizes; a recovery does not read their mtimes.
        flushes = [
            self._pool("sync", 4).submit(os.fdatasync, fd)
            for fd in (staged.fd, staged.map_fd, staged.part_fd)
            if fd >= 0
        ]
        # Written once when the copy was made; a restart cannot read the copy without it.
        base_written = bool(staged.base) and not staged.base_synced
        if base_written:
            flushes.append(
                self._pool("sync", 4).submit(_flush_file, self._file(staged.stem, ".base"))
            )
        try:
            self.write_journal(staged, durable=True)
        finally:
            for flush in flushes:
                flush.result()
        staged.flushed = True
        if base_written:
            staged.base_synced = True

    def drop(self, staged: StagedFile) -> None:
        if self.files.get(staged.node_id) is staged:
            del self.files[staged.node_id]
        _close(staged)
        if staged.journaled:
            # Without its entry a restart knows no copy: it goes at once (were it left
            # to the thread below, an agent killed meanwhile would commit the copy again
            # on restart, against a head that has moved on).
            with self._journal_lock:
                self._file(staged.stem, ".json").unlink(missing_ok=True)
                staged.journaled = False
        # The files go on a thread: an unlink waits for the file system's journal,
        # which a flush elsewhere may hold for milliseconds, and freeing a copy's
        # blocks takes longer still.
        self._pool("drop").submit(
            _remove, [self._file(staged.stem, suffix) for suffix in _COPY_FILES]
        )

    def wrote(self, staged: StagedFile, length: int) -> None:
        """``length`` bytes were written into the copy: every WRITE_BEHIND bytes its
        dirty pages start going to disk, so an fsync after a large write waits for the
        last few megabytes only (the kernel would otherwise hold them all until then)."""
        if not self.write_behind:
            return
        staged.unsynced += length
        if staged.unsynced >= WRITE_BEHIND and staged.fd >= 0:
            staged.unsynced = 0
            self._pool("io").submit(start_writeback, staged.fd)

    async def write_direct(
        self, staged: StagedFile, placed: Sequence[tuple[int, memoryview]]
    ) -> bool:
        """Write ``placed`` (offset, aligned view) into the copy with direct I/O, on
        worker threads (the disk takes each write before it returns, and several at once
        keep it busy). False where the file system has no direct I/O: the caller writes
        the bytes as any other (any of them written here are the same)."""
        fd = staged.opened_direct()
        if fd < 0:
            return False
        done = asyncio.wrap_future(
            self._pool("direct", _DIRECT_WRITERS).submit(_pwrite_all, fd, placed)
        )
        staged.direct_writes.add(done)
        try:
            if await done:
                return True
        finally:
            staged.direct_writes.discard(done)
        if staged.direct_fd == fd:
            # Refused: closed (once the other direct writes on it are in) and not
            # opened again.
            _close_after(fd, list(staged.direct_writes))
            staged.direct_fd = -2
        return False

    def _pool(self, job: str, workers: int = 1) -> ThreadPoolExecutor:
        # Under a lock: sync runs on worker threads, and two fsyncs at once must not
        # make two pools.
        with self._pools_lock:
            pool = self._pools.get(job)
            if pool is None:
                pool = self._pools[job] = ThreadPoolExecutor(
                    workers, thread_name_prefix=f"staging-{job}"
                )
            return pool

    async def snapshot(self, staged: StagedFile, skip: Sequence[tuple[int, int]] = ()) -> Path:
        """A private copy of the staged bytes as they are now, for an upload to read;
        the ``skip`` ranges (offset, length), sorted, are left as holes."""
        snap = self.root / f"{staged.stem}.{staged.gen}.snap"
        size = staged.size()
        ranges = _complement(skip, size)
        try:
            if sum(length for _, length in ranges) <= _INLINE_SNAPSHOT:
                _copy(staged.fd, snap, size, ranges)
                return snap
            staged.copying = asyncio.Event()
            try:
                await staged.direct_settled()
                await asyncio.to_thread(_copy, staged.fd, snap, size, ranges)
            finally:
                staged.copying.set()
                staged.copying = None
        except OSError as exc:
            snap.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"the cache folder {self.root} is full ({exc.strerror})") from None
            raise
        return snap

    def pending_bytes(self) -> int:
        total = 0
        for staged in self.files.values():
            if staged.dirty and not staged.orphan:
                with contextlib.suppress(OSError):
                    total += max(staged.size() - staged.missing_bytes(), 0)
        return total


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _forget_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("prefetch of a base block failed: %s", exc)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its flags (os has only posix_fallocate, mode 0)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, offset, length) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _close(staged: StagedFile) -> None:
    for fd in (staged.fd, staged.map_fd, staged.part_fd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    if staged.direct_fd >= 0:
        # Not under a direct write still on a worker thread: its number, reused by the
        # next open, would take the write.
        _close_after(staged.direct_fd, list(staged.direct_writes))
    # Forget the numbers: the kernel reuses them, and a late write through a stale
    # one would land in whatever file was opened next.
    staged.fd = -1
    staged.map_fd = -1
    staged.part_fd = -1
    staged.direct_fd = -1


def _close_after(fd: int, writes: list[asyncio.Future[bool]]) -> None:
    """Close ``fd`` once ``writes`` are over."""
    if not writes:
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    left = len(writes)

    def over(_: asyncio.Future[bool]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    for write in writes:
        write.add_done_callback(over)


_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
# <linux/fs.h>: start writing dirty pages out, without waiting for them.
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> bool:
    """Start writing the dirty pages of ``fd`` to disk; False where the system cannot
    (the pages then go at the next fsync, as before)."""
    if _sync_file_range is None:
        return False
    # The number may be closed, or reused by another file, by now: either is harmless.
    return bool(_sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0)


def _flush_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, placed: Sequence[tuple[int, memoryview]]) -> bool:
    """Write every (offset, view); False if the file system refuses direct I/O."""
    for offset, view in placed:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            # Some file systems take an O_DIRECT open and refuse its writes.
            if exc.errno == errno.EINVAL:
                return False
            raise
        if written < len(view):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return True


# A copy's files besides its journal entry: removed when it is dropped, or at the next
# start when it has no entry.
_COPY_FILES = (".data", ".base", ".map", ".part")


def _remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # Removed at the next start, as a file without an entry.
            log.warning("staged file %s not removed: %s", path, exc)


def _complement(skip: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out = []
    position = 0
    for offset, length in skip:
        if offset > position:
            out.append((position, min(offset, size) - position))
        position = max(position, offset + length)
    if position < size:
        out.append((position, size - position))
    return [(offset, length) for offset, length in out if length > 0]


def _copy(src_fd: int, dest: Path, size: int, ranges: Sequence[tuple[int, int]]) -> None:
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(out, size)
        for start, length in ranges:
            offset, end = start, start + length
            while offset < end:
                sent = os.copy_file_range(src_fd, out, end - offset, offset, offset)
                if sent == 0:
                    break
                offset += sent
    finally:
        os.close(out)


def _block_offset(block: BaseBlock) -> int:
    return block.offset


def _add_range(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    """Add ``[start, end)`` to sorted, disjoint ``ranges``, merging what it meets."""
    i = bisect.bisect_left(ranges, (start, start))
    if i > 0 and ranges[i - 1][1] >= start:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= end:
        start, end = min(start, ranges[j][0]), max(end, ranges[j][1])
        j += 1
    ranges[i:j] = [(start, end)]


def _subtract(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` less sorted, disjoint ``ranges``."""
    out = []
    i = max(bisect.bisect_right(ranges, (start, start)) - 1, 0)
    position = start
    while i < len(ranges) and ranges[i][0] < end:
        lo, hi = ranges[i]
        if hi > position:
            if lo > position:
                out.append((position, lo))
            position = max(position, hi)
        i += 1
    if position < end:
        out.append((position, end))
    return out
