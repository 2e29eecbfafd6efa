"""Pins and hydration: bring files onto this machine and keep them local.

A pin names a mount path (and optionally a version); its chunks are never evicted
from the block cache and are fetched again when the pinned files change.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from mediadrive.core import paths
from mediadrive.core.drive import Drive
from mediadrive.core.errors import ConfigError, MediadriveError
from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Event, Node, NodeKind

from .cache import BlockCache, runs_of
from .hydrate import Manifest, ManifestEntry, fixed_prefix, matches
from .tree import Tree
from .vfs import VFS

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# Fetches in flight at once while hydrating.
FETCH_SLOTS = 32


@dataclass
class HydratePlan:
    files: list[tuple[str, ExtentMap]]
    pins: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(content.size for _, content in self.files)


def selected(pattern: str, mount_path: str) -> bool:
    """A pattern picks a file, or a folder and everything under it."""
    if matches(pattern, mount_path):
        return True
    parent = posixpath.dirname(mount_path)
    while parent not in ("/", ""):
        if matches(pattern, parent):
            return True
        parent = posixpath.dirname(parent)
    return False


async def walk(drive: Drive, drive_path: str) -> AsyncIterator[tuple[str, Node]]:
    """Every file at or under ``drive_path`` (a file yields itself)."""
    node = await drive.meta.resolve(drive_path)
    if node is None:
        return
    if not node.is_dir:
        if node.kind is NodeKind.FILE:
            yield drive_path, node
        return
    stack = [(drive_path, node)]
    while stack:
        folder_path, folder = stack.pop()
        for child in await drive.meta.list_dir(folder.id):
            child_path = posixpath.join(folder_path, child.name)
            if child.is_dir:
                stack.append((child_path, child))
            elif child.kind is NodeKind.FILE:
                yield child_path, child


class Pins:
    def __init__(self, drive: Drive, tree: Tree, cache: BlockCache, vfs: VFS) -> None:
        self.drive = drive
        self.tree = tree
        self.cache = cache
        self.vfs = vfs
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def _mount_path(self, drive_path: str) -> str:
        return self.tree.to_mount(drive_path) or drive_path

    async def plan(self, patterns: list[str], manifest: Manifest | None = None) -> HydratePlan:
        entries: list[ManifestEntry] = [ManifestEntry(glob=p) for p in patterns]
        excludes: list[str] = []
        if manifest is not None:
            entries += manifest.entries()
            excludes = manifest.exclude
        files: dict[str, ExtentMap] = {}
        pins: list[tuple[str, int]] = []
        for entry in entries:
            if entry.path is not None:
                mount_path = paths.normalize(entry.path)
                drive_path = self.tree.to_drive(mount_path)
                if entry.version is not None:
                    reader = await self.drive.reader(drive_path, entry.version)
                    files[f"{mount_path}@{entry.version}"] = ExtentMap.of(
                        entry.version, reader.size, reader.extents
                    )
                    pins.append((mount_path, entry.version))
                    continue
                found = False
                async for path, node in walk(self.drive, drive_path):
                    files[self._mount_path(path)] = await self.vfs.content(node)
                    found = True
                if not found:
                    raise ConfigError(f"{mount_path} does not exist in this mount")
                pins.append((mount_path, 0))
                continue
            assert entry.glob is not None
            pattern = entry.glob if entry.glob.startswith("/") else "/" + entry.glob
            base = fixed_prefix(pattern)
            async for path, node in walk(self.drive, self.tree.to_drive(base)):
                mount_path = self._mount_path(path)
                if not selected(pattern, mount_path):
                    continue
                files[mount_path] = await self.vfs.content(node)
                pins.append((mount_path, 0))
        if excludes:
            files = {
                p: c
                for p, c in files.items()
                if not any(selected(x, p.split("@")[0]) for x in excludes)
            }
            kept = {p.split("@")[0] for p in files}
            pins = [(p, v) for p, v in pins if p in kept]
        return HydratePlan(list(files.items()), pins)

    async def fetch(self, contents: list[ExtentMap], progress: Progress | None = None) -> int:
        """Bring every block of these contents into the cache; returns bytes fetched."""
        blocks = {(b.chunk_id, b.block) for c in contents for b in c.blocks(0, c.size)}
        missing = [key for key in blocks if not self.cache.has(*key)]
        total = sum(c.size for c in contents)
        done = total - len(missing) * BLOCK_SIZE
        before = self.cache.figures.bytes_fetched
        slots = asyncio.Semaphore(FETCH_SLOTS)

        async def one(run: list[tuple[str, int]]) -> None:
            nonlocal done
            async with slots:
                # Consecutive blocks go out as one ranged request. Views, not copies:
                # only their sizes are wanted, and a copy of each block cost a third of
                # the agent's CPU while hydrating.
                self.cache.prefetch_many(run)
                for data in await asyncio.gather(*(self.cache.view(*key) for key in run)):
                    done += len(data)
            if progress is not None:
                progress(min(done, total), total)

        if progress is not None:
            progress(max(done, 0), total)
        await asyncio.gather(*(one(run) for run in runs_of(missing)))
        if progress is not None:
            progress(total, total)
        return self.cache.figures.bytes_fetched - before

    async def hydrate(
        self,
        patterns: list[str],
        manifest: Manifest | None,
        pin: bool,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        plan = await self.plan(patterns, manifest)
        fetched = await self.fetch([c for _, c in plan.files], progress)
        if pin:
            for path, version in plan.pins:
                self.cache.add_pin(path, version)
            await self.refresh()
        return {
            "files": len(plan.files),
            "bytes": plan.total_bytes,
            "bytes_fetched": fetched,
            "pinned": pin,
        }

    async def pin(self, mount_path: str) -> dict[str, Any]:
        mount_path = paths.normalize(mount_path)
        if await self.drive.meta.resolve(self.tree.to_drive(mount_path)) is None:
            raise ConfigError(f"{mount_path} does not exist in this mount")
        self.cache.add_pin(mount_path, 0)
        result = await self.hydrate([], Manifest(include=[ManifestEntry(path=mount_path)]), True)
        return {"path": mount_path, **result}

    async def unpin(self, mount_path: str) -> dict[str, Any]:
        mount_path = paths.normalize(mount_path)
        removed = self.cache.remove_pin(mount_path)
        await self.refresh()
        return {"path": mount_path, "unpinned": removed}

    async def refresh(self) -> None:
        """Recompute which chunks are pinned and fetch the ones that are missing."""
        chunks: set[str] = set()
        contents: list[ExtentMap] = []
        for pin in self.cache.pins():
            drive_path = self.tree.to_drive(pin.path)
            if pin.version:
                try:
                    reader = await self.drive.reader(drive_path, pin.version)
                except MediadriveError:
                    continue
                contents.append(ExtentMap.of(pin.version, reader.size, reader.extents))
                continue
            async for _, node in walk(self.drive, drive_path):
                contents.append(await self.vfs.content(node))
        for content in contents:
            chunks.update(e.chunk_id for e in content.extents)
        self.cache.set_pinned(chunks)
        await self.fetch(contents)

    def refresh_soon(self) -> None:
        """Refresh in the background; calls meanwhile make one more pass."""
        if self._task is not None and not self._task.done():
            self._again = True
            return

        async def run() -> None:
            while True:
                self._again = False
                try:
                    await self.refresh()
                except Exception:
                    log.exception("pinned files could not be refreshed")
                if not self._again:
                    return

        self._task = asyncio.create_task(run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def on_event(self, event: Event) -> None:
        """A follower listener: refresh when a pinned file changes."""
        if event.kind not in ("commit", "restore", "rename", "delete"):
            return
        mount_path = self.tree.to_mount(event.path)
        if mount_path is None:
            return
        for pin in self.cache.pins():
            if mount_path == pin.path or mount_path.startswith(pin.path.rstrip("/") + "/"):
                self.refresh_soon()
                return
