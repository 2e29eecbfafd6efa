"""Garbage collection: prune the versions retention lets go, then sweep unused chunks.

Mark and sweep in the metadata store: a chunk is deleted only when no version
references it and no upload has held it within the grace period. A chunk is first
marked as being deleted (uploads that meet it wait), then removed from the blob
store, then forgotten, so a crash between the steps only leaves work for the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .blob import BlobStore
from .config import Retention
from .meta import MetaStore

# A put writing a big chunk to a slow disk may take this long.
DEBRIS_MIN_AGE = 60.0


@dataclass(frozen=True)
class GcReport:
    versions_pruned: int
    chunks_deleted: int
    bytes_freed: int
    # Unreferenced chunks kept whatever the grace: an upload holds them, running or
    # interrupted less than CHUNK_HOLD ago (finished uploads release their holds).
    chunks_held: int = 0
    # Half-written files of failed puts (``.tmp`` in a local store) older than the grace.
    debris_removed: int = 0


class Collector:
    def __init__(self, meta: MetaStore, blobs: BlobStore, retention: Retention, actor: str):
        self.meta = meta
        self.blobs = blobs
        self.retention = retention
        self.actor = actor

    async def run(self, grace: float = 3600.0) -> GcReport:
        now = time.time()
        pruned = await self.meta.prune_versions(self.retention, now)
        await self.meta.expire_holds()
        await self._finish_interrupted()
        deleted, freed = await self._sweep(now - grace)
        # Older than the grace period (and a minute, whatever the grace), no put is
        # still writing it.
        debris = await self.blobs.remove_debris(max(grace, DEBRIS_MIN_AGE))
        if pruned or deleted:
            await self.meta.record_event(
                "gc",
                "/",
                self.actor,
                versions_pruned=pruned,
                chunks_deleted=deleted,
                bytes_freed=freed,
            )
        return GcReport(pruned, deleted, freed, await self.meta.held_unreferenced(), debris)

    async def _finish_interrupted(self) -> None:
        """Deletions an earlier run marked but did not finish."""
        for leftover in await self.meta.deleting_chunks():
            await self.blobs.delete(leftover)
            await self.meta.finish_delete_chunk(leftover)

    async def _sweep(self, cutoff: float) -> tuple[int, int]:
        deleted = freed = 0
        for candidate in await self.meta.gc_candidates(cutoff):
            if not await self.meta.begin_delete_chunk(candidate.chunk_id, cutoff):
                continue
            await self.blobs.delete(candidate.chunk_id)
            await self.meta.finish_delete_chunk(candidate.chunk_id)
            deleted += 1
            freed += candidate.size
        return deleted, freed
