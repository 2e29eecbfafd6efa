"""Collaborators' changes: follow the drive's event log and update the kernel's view.

Every ``follow_interval`` seconds the agent reads the events after the last one it
saw. A new version committed elsewhere drops this mount's cached content of that
file and the kernel's cached pages and attributes, so the next access sees it.

With a relay (a storage pod that follows the drive once for its region, see
:mod:`.relay`) the agent reads the events from the pod's stream instead, resuming
after the last event it applied. When the relay is down or the stream breaks it
polls the store again and retries the relay with a growing backoff. Either way every
event goes through one place that applies it only if it is newer than the last one
applied, so none is lost or applied twice across a switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Callable

import aiohttp

from mediadrive.core.meta import Event, NodeKind

from .relay import RelayError, RelaySource, relay_events
from .vfs import VFS

log = logging.getLogger(__name__)

_CONTENT_EVENTS = {"commit", "restore", "conflict"}
# A new name in a folder: the folder's times and link count changed.
_MADE_EVENTS = {"create", "mkdir", "symlink"}

Listener = Callable[[Event], None]

# Seconds before the relay is tried again after a failure: doubles up to the maximum.
RELAY_RETRY_MIN = 1.0
RELAY_RETRY_MAX = 30.0


class Follower:
    def __init__(self, vfs: VFS, interval: float, relay: RelaySource | None = None) -> None:
        self.vfs = vfs
        self.meta = vfs.meta
        self.interval = interval
        self.relay = relay
        self.since = 0
        self.listeners: list[Listener] = []
        self.applied = 0
        # Where the events come from now: "relay" or "store".
        self.source = "store"
        self.relay_retry = RELAY_RETRY_MIN
        self._relay_due = 0.0
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
        if self.relay is None:
            while True:
                await self._poll_once()
            return
        async with aiohttp.ClientSession() as session:
            while True:
                if time.monotonic() >= self._relay_due:
                    await self._follow_relay(session, self.relay)
                    self.source = "store"
                await self._poll_once()

    async def _poll_once(self) -> None:
        """Apply what the store has after ``since``; wait a while if there is nothing."""
        try:
            applied = await self.catch_up()
        except Exception as exc:
            log.warning("cannot read the drive's events: %s", exc)
            await asyncio.sleep(max(self.interval, 2.0))
            return
        self.vfs.entries.followed()
        if not applied:
            await asyncio.sleep(self.interval)

    async def catch_up(self) -> int:
        """Apply the events the store has after ``since`` now; how many it had."""
        batch = await self.meta.events_after(self.since)
        for event in batch:
            await self._deliver(event)
        return len(batch)

    async def _follow_relay(self, session: aiohttp.ClientSession, relay: RelaySource) -> None:
        """Apply the relay's stream until it fails; then schedule the next attempt."""

        def opened() -> None:
            self.source = "relay"
            self.relay_retry = RELAY_RETRY_MIN
            log.info("following the drive's events through the relay %s", relay.url)

        try:
            async for event in relay_events(session, relay, self.since, opened):
                await self._deliver(event)
            reason = "the relay closed the stream"
        except (aiohttp.ClientError, RelayError, OSError, ValueError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        self._relay_due = time.monotonic() + self.relay_retry
        log.warning(
            "relay %s: %s; polling the store, retrying the relay in %.0f s",
            relay.url,
            reason,
            self.relay_retry,
        )
        self.relay_retry = min(self.relay_retry * 2, RELAY_RETRY_MAX)

    async def _deliver(self, event: Event) -> None:
        """Apply one event, once: anything at or before ``since`` was applied already."""
        if event.seq <= self.since:
            return
        try:
            await self.apply(event)
        except Exception:
            log.exception("event %d (%s %s) not applied", event.seq, event.kind, event.path)
        self.since = event.seq
        self.applied += 1
        for listener in self.listeners:
            listener(event)

    async def apply(self, event: Event) -> None:
        vfs = self.vfs
        tree = vfs.tree
        own_kind = "made" if event.kind in _MADE_EVENTS else event.kind
        if event.file_id is None:
            return
        if own_kind in ("rename", "delete", "attrs", "made") and vfs.take_own_change(
            own_kind, event.file_id
        ):
            # Made by this mount: the kernel and the tree know already.
            return
        if (
            event.kind in _CONTENT_EVENTS
            and event.version is not None
            and vfs.is_own_version(event.file_id, event.version)
        ):
            return
        # Made elsewhere: what this mount remembers of names and attributes may be stale.
        vfs.entries.clear()
        if event.kind in _CONTENT_EVENTS:
            if tree.to_mount(event.path) is None:
                return
            await vfs.content_changed(event.file_id, event.version)
        elif event.kind == "attrs":
            await self._attrs_changed(event.file_id)
        elif event.kind == "rename":
            await self._renamed(event)
        elif tree.to_mount(event.path) is None:
            return
        elif event.kind in _MADE_EVENTS:
            await self._made(event.file_id)
        elif event.kind == "delete":
            await self._deleted(event.file_id)

    async def _attrs_changed(self, node_id: int) -> None:
        """Mode, owner or times changed elsewhere: the kernel asks again. With the
        writeback cache it keeps a file's times itself, so a file needs a new inode,
        as for new content; a folder's attributes it takes as they come."""
        node = await self.meta.get_node(node_id)
        if node is not None and node.kind is NodeKind.FILE:
            await self.vfs.refresh_kernel(node_id)
        else:
            await self.vfs.kernel.invalidate_inode(self.vfs.tree.inode(node_id))

    async def _made(self, file_id: int) -> None:
        """A new name elsewhere: the folder's times and link count changed."""
        node = await self.meta.get_node(file_id)
        if node is not None and node.parent_id is not None:
            await self.vfs.kernel.invalidate_inode(self.vfs.tree.inode(node.parent_id))

    async def _renamed(self, event: Event) -> None:
        tree = self.vfs.tree
        tree.forget()
        source = str(event.detail.get("source", ""))
        for path in (source, event.path):
            if path and tree.to_mount(path) is not None and path != tree.subdir:
                await self._drop_entry(path)

    async def _deleted(self, file_id: int) -> None:
        vfs = self.vfs
        vfs.forget_content(file_id)
        vfs.tree.forget_one(file_id)
        node = await self.meta.get_node(file_id)
        if node is not None and node.parent_id is not None:
            await vfs.invalidate_entry(node.parent_id, node.name, node.id)
            await vfs.kernel.invalidate_inode(vfs.tree.inode(node.parent_id))

    async def _drop_entry(self, path: str) -> None:
        parent = await self.meta.resolve(posixpath.dirname(path))
        if parent is not None:
            await self.vfs.invalidate_entry(parent.id, posixpath.basename(path))
            await self.vfs.kernel.invalidate_inode(self.vfs.tree.inode(parent.id))
