"""The write-back staging area: local copies of files being written, and their journal.

A file opened for writing gets a full local copy (``<node>.data``) and a journal
entry (``<node>.json``) naming the drive node, the version the copy started from and
its attributes. Writes go to the copy; a commit uploads a snapshot of it. ``fsync``
makes the copy and its entry durable before it returns, so after ``kill -9`` (or a
power cut, for fsync'd data) the agent finds every entry on restart and commits it.

Nothing here talks to the drive: the agent decides when to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mediadrive.core.durability import fsync_dir
from mediadrive.core.errors import MediadriveError

log = logging.getLogger(__name__)

# Snapshots of files up to this size are taken on the event loop in one go; larger
# ones hold writers back while a thread copies them.
_INLINE_SNAPSHOT = 8 << 20


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
    dirty: bool = False
    # Bumped by every change; a commit is complete if it did not move meanwhile.
    gen: int = 0
    writers: int = 0
    # Unlinked or replaced while open: never committed, dropped on last close.
    orphan: bool = False
    # The last commit was refused under the reject policy; wait for a new change.
    rejected: bool = False
    recovered: bool = False
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    copying: asyncio.Event | None = None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def touch(self) -> None:
        self.gen += 1
        self.dirty = True
        self.rejected = False
        self.mtime_ns = time.time_ns()

    def journal(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "path": self.path,
            "base_version": self.base_version,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "dirty": self.dirty,
        }


class Staging:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[int, StagedFile] = {}
        self._lock_fd: int | None = None

    def open(self) -> list[StagedFile]:
        """Take the folder (one agent at a time) and return the entries a crash left."""
        self.root.mkdir(parents=True, exist_ok=True)
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
        for leftover in self.root.glob("*.snap"):
            leftover.unlink(missing_ok=True)
        recovered = []
        for entry_path in sorted(self.root.glob("*.json")):
            data_path = entry_path.with_suffix(".data")
            try:
                record = json.loads(entry_path.read_text())
                node_id = int(record["node_id"])
                data_fd = os.open(data_path, os.O_RDWR)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("staging entry %s is unreadable (%s); it is kept aside", entry_path, exc)
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
                # Whether it changed since its last commit is unknown: commit it, and let
                # the commit notice when nothing changed.
                dirty=True,
                recovered=True,
            )
            self.files[node_id] = staged
            recovered.append(staged)
        for orphan in self.root.glob("*.data"):
            if not orphan.with_suffix(".json").exists():
                orphan.unlink(missing_ok=True)
        return recovered

    def close(self) -> None:
        for staged in self.files.values():
            with contextlib.suppress(OSError):
                os.close(staged.fd)
        self.files.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _data(self, node_id: int) -> Path:
        return self.root / f"{node_id}.data"

    def _entry(self, node_id: int) -> Path:
        return self.root / f"{node_id}.json"

    def get(self, node_id: int) -> StagedFile | None:
        return self.files.get(node_id)

    def create(
        self, node_id: int, path: str, base_version: int | None, mode: int, mtime_ns: int
    ) -> StagedFile:
        """An empty staged copy; the caller fills it (or keeps it empty for O_TRUNC)."""
        fd = os.open(self._data(node_id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        staged = StagedFile(node_id, path, base_version, mode, mtime_ns, fd)
        self.files[node_id] = staged
        self.write_journal(staged)
        return staged

    def write_journal(self, staged: StagedFile, durable: bool = False) -> None:
        path = self._entry(staged.node_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(staged.journal(), f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(self.root)

    def sync(self, staged: StagedFile) -> None:
        """Make the copy and its journal entry durable (runs in a worker thread)."""
        os.fsync(staged.fd)
        self.write_journal(staged, durable=True)

    def drop(self, staged: StagedFile) -> None:
        if self.files.get(staged.node_id) is staged:
            del self.files[staged.node_id]
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        self._entry(staged.node_id).unlink(missing_ok=True)
        self._data(staged.node_id).unlink(missing_ok=True)

    async def snapshot(self, staged: StagedFile) -> Path:
        """A private copy of the staged bytes as they are now, for an upload to read."""
        snap = self.root / f"{staged.node_id}.{staged.gen}.snap"
        size = staged.size()
        if size <= _INLINE_SNAPSHOT:
            _copy(staged.fd, snap, size)
            return snap
        staged.copying = asyncio.Event()
        try:
            await asyncio.to_thread(_copy, staged.fd, snap, size)
        finally:
            staged.copying.set()
            staged.copying = None
        return snap

    def pending_bytes(self) -> int:
        total = 0
        for staged in self.files.values():
            if staged.dirty and not staged.orphan:
                with contextlib.suppress(OSError):
                    total += staged.size()
        return total


def _copy(src_fd: int, dest: Path, size: int) -> None:
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offset = 0
        while offset < size:
            sent = os.copy_file_range(src_fd, out, size - offset, offset, offset)
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(out)
