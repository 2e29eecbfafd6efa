"""Checking a drive's chunks against its metadata, and marking the damage for repair.

Every chunk a version still in history names must be in the blob store, have the
size recorded for it and hash to its id (and to the block digests reads check).
A damaged or missing chunk cannot be rebuilt from the store: ``repair`` marks it
damaged, so the next upload of the same bytes (copying the original back in)
stores it again. Repair also removes debris failed writes left in the store, and
records the strays (objects no chunk record names: a put whose record never
happened) so that GC collects them.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .blob import BlobStore
from .errors import ConfigError, NotFound
from .hashing import identify
from .meta import ChunkRecord, ChunkUse, MetaStore

Progress = Callable[[int], None]

# Debris younger than this may belong to a put still writing.
DEBRIS_AGE = 3600.0


@dataclass(frozen=True)
class ChunkProblem:
    chunk_id: str
    # missing, truncated, corrupt, digests (the recorded block digests are wrong), or
    # unrecorded (a version names a chunk the metadata store has no record of).
    problem: str
    detail: str


@dataclass
class FsckReport:
    chunks_total: int
    chunks_checked: int
    bytes_checked: int
    problems: list[ChunkProblem] = field(default_factory=list)
    # The versions that name a damaged chunk (head or history, live or deleted files).
    affected: list[ChunkUse] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    # Objects in the blob store no chunk record names, by id (looked for on request).
    strays: list[str] = field(default_factory=list)
    # With repair: chunks newly marked for upload again, debris removed, and strays
    # recorded (GC deletes them once its grace has passed).
    marked: int = 0
    debris_removed: int = 0
    strays_recorded: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.problems)


def parse_sample(text: str) -> int | float:
    """``--sample``: ``N`` chunks, or ``P%`` of them; ConfigError for anything else."""
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return share / 100
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise ConfigError(
            f"--sample {text!r} is neither a number of chunks nor a percentage like 10%"
        ) from None


class Fsck:
    """Checks one drive: handed its metadata and blob stores, nothing else."""

    def __init__(self, meta: MetaStore, blobs: BlobStore, concurrency: int = 4) -> None:
        self.meta = meta
        self.blobs = blobs
        self.concurrency = concurrency

    async def chunks(self, sample: int | float | None = None) -> tuple[list[ChunkRecord], int]:
        """The chunks to check (all that versions name, or a random sample: an int is
        a count, a float a share) and how many there are in all."""
        records = await self.meta.referenced_chunks()
        if sample is None:
            return records, len(records)
        count = sample if isinstance(sample, int) else math.ceil(len(records) * sample)
        picked = random.sample(records, min(count, len(records)))
        return sorted(picked, key=lambda r: r.chunk_id), len(records)

    async def check(
        self,
        records: Sequence[ChunkRecord],
        *,
        repair: bool = False,
        progress: Progress | None = None,
        total: int | None = None,
        debris_age: float = DEBRIS_AGE,
        strays: bool = False,
    ) -> FsckReport:
        """Check ``records`` several at once (and, with ``strays``, list the store for
        objects nothing records); with ``repair`` mark what is damaged, remove debris
        older than ``debris_age`` and record the strays."""
        report = FsckReport(total if total is not None else len(records), 0, 0)
        slots = asyncio.Semaphore(self.concurrency)

        async def one(record: ChunkRecord) -> None:
            async with slots:
                problem = await self._check_one(record)
            report.chunks_checked += 1
            report.bytes_checked += record.size
            if problem is not None:
                report.problems.append(problem)
            if progress:
                progress(record.size)

        await asyncio.gather(*(one(r) for r in records))
        report.problems.sort(key=lambda p: p.chunk_id)
        damaged = [p.chunk_id for p in report.problems]
        report.affected = await self.meta.chunk_users(damaged) if damaged else []
        report.debris = await self.blobs.debris(debris_age)
        if strays:
            report.strays = await self.strays()
        if repair:
            report.marked = await self.meta.mark_damaged(damaged) if damaged else 0
            report.debris_removed = await self.blobs.remove_debris(debris_age)
            for cid in report.strays:
                report.strays_recorded += await self._record_stray(cid)
        return report

    async def strays(self) -> list[str]:
        """The ids of objects in the blob store that no chunk record names."""
        found: list[str] = []
        batch: list[str] = []
        async for cid in self.blobs.list():
            batch.append(cid)
            if len(batch) == 1000:
                found += await self.meta.unrecorded(batch)
                batch = []
        if batch:
            found += await self.meta.unrecorded(batch)
        return found

    async def _record_stray(self, cid: str) -> bool:
        """Record stray ``cid`` for GC: stored if its bytes hash to its id (a later
        upload of them may keep it), damaged if not (the next upload replaces it)."""
        # Read before the object: a GC deletion that ends after this could have taken
        # it (a writer recorded it, then let it go), and the record must then not claim it.
        seen = await self.meta.chunk_deletions()
        try:
            data = await self.blobs.get(cid)
        except NotFound:
            return False

        actual, blocks = await asyncio.to_thread(identify, data)
        return await self.meta.record_stray(cid, len(data), blocks if actual == cid else None, seen)

    async def _check_one(self, record: ChunkRecord) -> ChunkProblem | None:
        cid = record.chunk_id
        if record.state == "absent":
            return ChunkProblem(cid, "unrecorded", "a version names it; the metadata has no record")
        try:
            data = await self.blobs.get(cid)
        except NotFound:
            return ChunkProblem(cid, "missing", "not in the blob store")
        if len(data) != record.size:
            return ChunkProblem(
                cid, "truncated", f"{len(data)} bytes in the store, {record.size} recorded"
            )

        actual, blocks = await asyncio.to_thread(identify, data)
        if actual != cid:
            return ChunkProblem(cid, "corrupt", f"its bytes hash to {actual}")
        if record.blocks is not None and record.blocks != blocks:
            return ChunkProblem(cid, "digests", "its recorded block digests do not match it")
        return None
