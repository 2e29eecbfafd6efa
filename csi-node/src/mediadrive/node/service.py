"""The mount service: what callers ask of a running mount (the live API, later CSI).

Paths are mount paths (``/shots/a.exr``); the service turns them into drive paths.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import ConflictError
from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Event

from . import passthrough
from .assembly import MountParts
from .hydrate import Manifest
from .pins import Pins, Progress
from .reading import read_content
from .writeback import AUTOMATIC_MESSAGES, BEFORE_RESTORE, CommitReport


class MountStatus(BaseModel):
    """Figures of a mount, as ``GET /v1/status`` answers them."""

    mountpoint: str
    drive: str
    subdir: str
    pid: int
    read_only: bool
    commit_on: str
    checkpoint_interval: float | None
    cache_dir: str
    cache_size: int
    cache_bytes: int
    pinned_bytes: int
    pinned_paths: list[str]
    pending_upload_bytes: int
    dirty_files: int
    bytes_fetched: int
    blocks_fetched: int
    cache_hits: int
    cache_misses: int
    cache_corrupt: int
    # Lookups and getattrs answered without asking the metadata store, and asked.
    entry_hits: int
    entry_misses: int
    # Folder listings answered from what the mount knows (folders complete here).
    listings_cached: int = 0
    # Bytes of files read at random handed to the kernel's page cache.
    pages_stored: int
    # Extended attributes asked for (the kernel no longer asks before every write(2):
    # the mount clears setuid and setgid itself).
    xattr_reads: int = 0
    bytes_uploaded: int
    commits: int
    conflicts: int
    # Chunks that went up in parts while written, and those of them let go before
    # they were named (rewritten out of order, truncated, a part failed).
    chunks_streamed: int = 0
    streams_dropped: int = 0
    open_files: int
    passthrough: bool
    passthrough_opens: int
    recovered_files: int
    events_seen: int
    errors: list[str]
    uptime: float
    # This machine's storage pods (password masked), where writes go, the publish
    # policy and how many versions the mount's publisher has published.
    pods: str | None = None
    write_target: str = "cloud"
    publish: str = "manual"
    policy_published: int = 0
    # Latency of the commits that recorded a version: cumulative counts by upper
    # bound in seconds ("+Inf" is every commit), and the seconds they took in all.
    commit_seconds_buckets: dict[str, int] = {}
    commit_seconds_sum: float = 0.0


class MountService:
    def __init__(
        self,
        parts: MountParts,
        mountpoint: Path,
        request_stop: Callable[[], None],
        started: float | None = None,
    ) -> None:
        self.parts = parts
        self.options = parts.options
        self.drive = parts.drive
        self.tree = parts.tree
        self.vfs = parts.vfs
        self.writeback = parts.writeback
        self.pins = Pins(parts.drive, parts.tree, parts.cache, parts.vfs)
        self.mountpoint = mountpoint
        self._request_stop = request_stop
        self.started = started if started is not None else time.time()
        self.recovered = 0

    # -- paths --------------------------------------------------------------------------------

    def drive_path(self, mount_path: str) -> str:
        return self.tree.to_drive(mount_path)

    def mount_path(self, drive_path: str) -> str:
        return self.tree.to_mount(drive_path) or drive_path

    # -- versions -----------------------------------------------------------------------------

    async def save(self, mount_path: str, message: str) -> list[CommitReport]:
        drive_path = self.drive_path(mount_path)
        reports = await self.writeback.save(drive_path, message)
        if reports or mount_path.rstrip("/") == "":
            return reports
        node = await self.drive.stat(drive_path)
        if node.is_dir:
            return reports
        last = self.writeback.last.get(node.id)
        if last is not None and last.version == node.head_version:
            # Already committed by close, fsync or a checkpoint: the save names it.
            if message and message != last.message:
                labelled = await self.drive.meta.label_version(
                    node.id, last.version, message, replaceable=AUTOMATIC_MESSAGES
                )
                if labelled:
                    last = replace(last, message=message)
                    self.writeback.last[node.id] = last
            return [last]
        return [
            CommitReport(
                path=mount_path,
                version=node.head_version or 0,
                size=node.size,
                bytes_uploaded=0,
                chunks_total=0,
                chunks_new=0,
                conflict=False,
                committed=False,
                landed=mount_path,
                message=message,
            )
        ]

    async def versions(self, mount_path: str) -> list[dict[str, Any]]:
        found = await self.drive.versions(self.drive_path(mount_path))
        return [asdict(v) for v in found]

    async def read_version(
        self, mount_path: str, version: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        reader = await self.drive.reader(self.drive_path(mount_path), version)
        content = ExtentMap.of(reader.info.version, reader.size, reader.extents)
        cache = self.parts.cache

        async def stream() -> AsyncIterator[bytes]:
            step = 8 * BLOCK_SIZE
            for offset in range(0, content.size, step):
                yield bytes(await read_content(cache, content, offset, step, None))

        return content.size, stream()

    async def restore(self, mount_path: str, version: int, message: str) -> dict[str, Any]:
        drive_path = self.drive_path(mount_path)
        staging = self.parts.staging
        node = await self.drive.meta.resolve(drive_path)
        if node is not None:
            staged = staging.get(node.id)
            if staged is not None and staged.writers:
                raise ConflictError(
                    f"{mount_path} is open for writing on this machine; close it, then restore"
                )
            if staged is not None and staged.dirty:
                await self.writeback.save(drive_path, BEFORE_RESTORE)
            staged = staging.get(node.id)
            if staged is not None and not staged.writers:
                staging.drop(staged)
        outcome = await self.drive.restore(drive_path, version, message)
        self.vfs.note_own_version(outcome.file_id, outcome.version)
        await self.vfs.head_replaced(outcome.file_id)
        return {
            "path": self.mount_path(outcome.path),
            "version": outcome.version,
            "restored": version,
            "conflict": outcome.conflict,
        }

    async def publish(self, mount_path: str, message: str) -> dict[str, Any]:
        """Save what is pending at or under ``mount_path``, then publish what is held in
        the storage pods there (see :meth:`Drive.publish`)."""
        drive_path = self.drive_path(mount_path)
        reports = await self.save(mount_path, message or "publish")
        result = await self.drive.publish(drive_path, message)
        node = await self.drive.stat(drive_path)
        tier: str | None = None
        if not node.is_dir and node.head_version is not None:
            info, _ = await self.drive.meta.version(node.id, node.head_version)
            tier = info.tier
        return {
            "saved": [r.as_dict() for r in reports],
            **result.as_dict(),
            "paths": [self.mount_path(p) for p in result.paths],
            "tier": tier,
            "store": redact_url(self.drive.ref.store_url.split("?")[0]),
        }

    # -- figures and events -------------------------------------------------------------------

    def status(self) -> MountStatus:
        wb = self.writeback
        cache = self.parts.cache
        staging = self.parts.staging
        views = self.parts.views
        publisher = self.parts.publisher
        return MountStatus(
            mountpoint=str(self.mountpoint),
            drive=self.options.drive,
            subdir=self.options.subdir,
            pid=os.getpid(),
            read_only=self.options.read_only,
            commit_on=self.options.commit_on.value,
            checkpoint_interval=self.options.checkpoint_interval,
            cache_dir=str(self.options.cache_dir),
            cache_size=cache.capacity,
            cache_bytes=cache.total,
            pinned_bytes=cache.pinned_bytes,
            pinned_paths=[p.path for p in cache.pins()],
            pending_upload_bytes=staging.pending_bytes(),
            dirty_files=sum(1 for s in staging.files.values() if s.dirty and not s.orphan),
            bytes_fetched=cache.figures.bytes_fetched,
            blocks_fetched=cache.figures.blocks_fetched,
            cache_hits=cache.figures.hits,
            cache_misses=cache.figures.misses,
            cache_corrupt=cache.figures.corrupt,
            entry_hits=self.vfs.entries.hits,
            entry_misses=self.vfs.entries.misses,
            listings_cached=self.vfs.entries.listings,
            pages_stored=self.vfs.pages_stored,
            xattr_reads=self.vfs.xattr_reads,
            bytes_uploaded=wb.figures.bytes_uploaded,
            commits=wb.figures.commits,
            conflicts=wb.figures.conflicts,
            chunks_streamed=wb.early.streams_started,
            streams_dropped=wb.early.streams_dropped,
            open_files=self.vfs.open_files,
            passthrough=views is not None and views.enabled and passthrough.negotiated(),
            passthrough_opens=views.opens if views is not None else 0,
            recovered_files=self.recovered,
            events_seen=self.parts.follower.since,
            errors=list(wb.figures.errors),
            uptime=round(time.time() - self.started, 3),
            pods=redact_url(self.options.pod_url) if self.options.pod_url else None,
            write_target=self.drive.settings.tiers.target(has_pod=self.drive.tiers is not None),
            publish=self.drive.settings.tiers.publish,
            policy_published=publisher.published if publisher is not None else 0,
            commit_seconds_buckets=wb.figures.commit_histogram(),
            commit_seconds_sum=round(wb.figures.commit_seconds_sum, 6),
        )

    async def events(self, since: int | None) -> AsyncIterator[Event]:
        meta = self.drive.meta
        start = await meta.last_event_seq() if since is None else since
        async for event in meta.follow_events(start, poll=self.options.follow_interval):
            if self.tree.to_mount(event.path) is not None:
                yield event

    # -- pins and hydration -------------------------------------------------------------------

    async def hydrate(
        self,
        patterns: list[str],
        manifest: Manifest | None,
        pin: bool,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        return await self.pins.hydrate(patterns, manifest, pin, progress)

    async def pin(self, mount_path: str) -> dict[str, Any]:
        return await self.pins.pin(mount_path)

    async def unpin(self, mount_path: str) -> dict[str, Any]:
        return await self.pins.unpin(mount_path)

    # -- stopping -----------------------------------------------------------------------------

    async def unmount(self) -> dict[str, Any]:
        """Commit what is pending, then ask the agent to unmount (after this answers)."""
        await self.writeback.flush()
        stuck = [
            self.tree.to_mount(staged.path) or staged.path
            for staged in self.parts.staging.files.values()
            if staged.dirty and not staged.orphan
        ]
        if stuck:
            # Unmounting now would leave changes only in the cache, where the next
            # cache cleanup loses them: say so and keep serving.
            errors = list(self.writeback.figures.errors)
            why = f" ({errors[-1]})" if errors else ""
            raise ConflictError(
                f"cannot unmount {self.mountpoint}: {', '.join(sorted(stuck))} could not be "
                f"committed{why}; the mount stays, see `mediadrive status`"
            )
        pending = self.parts.staging.pending_bytes()
        self._request_stop()
        return {"unmounting": str(self.mountpoint), "pending_upload_bytes": pending}
