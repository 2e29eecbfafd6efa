"""Collaborators' changes: follow the drive's event log and update the kernel's view.

Every ``follow_interval`` seconds the agent reads the events after the last one it
saw. A new version committed elsewhere drops this mount's cached content of that
file and the kernel's cached pages and attributes, so the next access sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from collections.abc import Callable

from mediadrive.core.meta import Event

from .vfs import VFS

log = logging.getLogger(__name__)

_CONTENT_EVENTS = {"commit", "restore", "conflict"}

Listener = Callable[[Event], None]


class Follower:
    def __init__(self, vfs: VFS, interval: float) -> None:
        self.vfs = vfs
        self.meta = vfs.meta
        self.interval = interval
        self.since = 0
        self.listeners: list[Listener] = []
        self.applied = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.since = await self.meta.last_event_seq()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                batch = await self.meta.events_after(self.since)
            except Exception as exc:
                log.warning("cannot read the drive's events: %s", exc)
                await asyncio.sleep(max(self.interval, 2.0))
                continue
            for event in batch:
                try:
                    await self.apply(event)
                except Exception:
                    log.exception("event %d (%s %s) not applied", event.seq, event.kind, event.path)
                self.since = event.seq
                self.applied += 1
                for listener in self.listeners:
                    listener(event)
            if not batch:
                await asyncio.sleep(self.interval)

    async def apply(self, event: Event) -> None:
        vfs = self.vfs
        tree = vfs.tree
        if event.kind in _CONTENT_EVENTS and event.file_id is not None:
            if event.version is not None and vfs.is_own_version(event.file_id, event.version):
                return
            if tree.to_mount(event.path) is None:
                return
            await vfs.content_changed(event.file_id, event.version)
        elif event.kind == "rename":
            tree.forget()
            source = str(event.detail.get("source", ""))
            for path in (source, event.path):
                if path and tree.to_mount(path) is not None and path != tree.subdir:
                    await self._drop_entry(path)
        elif event.kind == "delete" and event.file_id is not None:
            if tree.to_mount(event.path) is None:
                return
            vfs.forget_content(event.file_id)
            tree.forget_one(event.file_id)
            node = await self.meta.get_node(event.file_id)
            if node is not None and node.parent_id is not None:
                await vfs.invalidate_entry(node.parent_id, node.name, node.id)

    async def _drop_entry(self, path: str) -> None:
        parent = await self.meta.resolve(posixpath.dirname(path))
        if parent is not None:
            await self.vfs.invalidate_entry(parent.id, posixpath.basename(path))
