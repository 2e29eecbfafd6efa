"""Sending the finished chunks of a file while it is still being written.

A large file copied into the mount would otherwise travel only after it is closed
(or fsync'd): the copy and the upload would take turns. Instead, once writes have
covered a whole fixed-size chunk of a staged copy, its bytes are read, hashed,
claimed and sent in the background, held under a token of the file's own so GC
leaves them alone. The commit then keeps each such chunk by reference (as it keeps
untouched chunks of the base) and sends only the rest.

A chunk sent early is only a guess that the bytes are final. Every change to the
copy is counted per chunk (``StagedFile.touch``): a write bumps the chunks it
touches, any other change (truncate, punch, a write that failed) bumps them all. A
chunk sent early is kept by the commit only if its count has not moved since its
bytes were read, so what the version names is always what the copy holds.

Only drives with fixed chunks and no storage pod tier send early: content-defined
cuts and the pods' placement are left to the commit's upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import uuid
from dataclasses import dataclass, field

from mediadrive.core.chunking import Piece
from mediadrive.core.drive import Drive
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent
from mediadrive.core.meta.interface import CHUNK_HOLD
from mediadrive.core.upload import UploadResult, window

from .cache import BlockCache
from .staging import StagedFile

log = logging.getLogger(__name__)

# A chunk whose early copy went stale (rewritten after it was read) is sent early
# again at most this many times: random rewrites are left to the commit.
_ATTEMPTS = 2


@dataclass
class _Sent:
    extent: Extent
    # The chunk's change count when its bytes were read.
    stamp: tuple[int, int]
    # Its bytes travelled (the drive lacked it); counted in the first commit naming it.
    new: bool
    counted: bool = False


@dataclass(eq=False)
class _FileState:
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Bumped by every change that is not a plain write (it spoils every chunk).
    epoch: int = 0
    # Per chunk index: writes that touched it, and bytes they covered (overlaps too).
    changes: dict[int, int] = field(default_factory=dict)
    covered: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    sent: dict[int, _Sent] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # Chunk ids held under ``token`` (released once no commit will name them).
    held: set[str] = field(default_factory=set)

    def stamp(self, index: int) -> tuple[int, int]:
        return self.epoch, self.changes.get(index, 0)


class EarlyUploads:
    """Sends full chunks of staged copies ahead of their commits (see module doc)."""

    def __init__(self, drive: Drive, cache: BlockCache) -> None:
        self.drive = drive
        self.cache = cache
        settings = drive.settings
        self.enabled = settings.chunking == "fixed" and drive.tiers is None
        self.size = settings.chunk_size
        # At most an upload's window of chunks in memory at once, across all files.
        self._slots = asyncio.Semaphore(window(settings))
        self._files: dict[StagedFile, _FileState] = {}
        self._renewer: asyncio.Task[None] | None = None

    # -- told by the staged copies ------------------------------------------------------

    def changed(self, staged: StagedFile, offset: int | None, length: int | None) -> None:
        """``staged`` changed: ``length`` bytes written at ``offset``, or (None) in a
        way that may have touched any byte."""
        if not self.enabled or staged.recovered:
            return
        state = self._files.get(staged)
        if offset is None or length is None:
            if state is not None:
                state.epoch += 1
                state.sent.clear()
                state.covered.clear()
                state.attempts.clear()
            return
        if length <= 0:
            return
        if state is None:
            state = self._files[staged] = _FileState()
            self._start_renewing()
        end = offset + length
        size = self.size
        for index in range(offset // size, (end - 1) // size + 1):
            state.changes[index] = state.changes.get(index, 0) + 1
            state.sent.pop(index, None)
            start = index * size
            overlap = min(end, start + size) - max(offset, start)
            state.covered[index] = state.covered.get(index, 0) + overlap
            if state.covered[index] >= size and index not in state.tasks:
                self._send_later(staged, state, index)

    def _send_later(self, staged: StagedFile, state: _FileState, index: int) -> None:
        attempts = state.attempts.get(index, 0)
        if attempts >= _ATTEMPTS:
            return
        state.attempts[index] = attempts + 1
        task = asyncio.get_running_loop().create_task(self._send(staged, state, index))
        state.tasks[index] = task
        task.add_done_callback(lambda _: state.tasks.pop(index, None))

    async def _send(self, staged: StagedFile, state: _FileState, index: int) -> None:
        start = index * self.size
        async with self._slots:
            stamp = state.stamp(index)
            fd = staged.fd
            if fd < 0 or staged.orphan or staged.failed or staged.lacking(start, self.size):
                return
            try:
                data = await asyncio.to_thread(os.pread, fd, self.size, start)
            except OSError:
                return
            # Changed (or closed) while it was read: the commit will send it.
            if staged.fd != fd or state.stamp(index) != stamp or len(data) < self.size:
                return
            try:
                extent, new = await self.drive.uploader.store_piece(Piece(start, data), state.token)
            except Exception as exc:  # the commit sends it instead
                log.info("early upload of %s at %d failed: %s", staged.path, start, exc)
                return
        state.held.add(extent.chunk_id)
        if state.stamp(index) == stamp:
            state.sent[index] = _Sent(extent, stamp, new)
        await self._keep_blocks(staged, extent.chunk_id, data)

    async def _keep_blocks(self, staged: StagedFile, chunk: str, data: bytes) -> None:
        """Put a sent chunk's blocks in the block cache, as a commit does with what it
        sent (reading a file just written is local), unless the file is too large."""
        if staged.fd < 0 or staged.size() > self.cache.capacity // 4:
            return
        # Views, not copies: the event loop must not spend its time copying bytes.
        view = memoryview(data)
        blocks = [
            (chunk, i // BLOCK_SIZE, view[i : i + BLOCK_SIZE])
            for i in range(0, len(view), BLOCK_SIZE)
        ]
        try:
            await self.cache.put_many(blocks)
        except OSError as exc:
            log.warning("cannot keep sent blocks in the cache: %s", exc)

    # -- asked by the commit ------------------------------------------------------------

    async def settle(self, staged: StagedFile) -> None:
        """Wait for the chunks of ``staged`` being sent now."""
        state = self._files.get(staged)
        while state is not None and state.tasks:
            await asyncio.gather(*list(state.tasks.values()), return_exceptions=True)

    def ready(self, staged: StagedFile) -> dict[int, Extent]:
        """The chunks sent early that still hold the copy's bytes, by offset (valid
        until the copy next changes: the caller reads the copy without awaiting)."""
        state = self._files.get(staged)
        if state is None:
            return {}
        size = staged.size()
        return {
            sent.extent.offset: sent.extent
            for index, sent in state.sent.items()
            if sent.stamp == state.stamp(index) and sent.extent.offset + sent.extent.length <= size
        }

    def count_in(self, upload: UploadResult) -> UploadResult:
        """``upload`` with the bytes and chunks sent early for the extents it kept (a
        commit reports what its version cost to send, whenever it travelled)."""
        kept = set(upload.extents)
        extra = [
            sent
            for state in self._files.values()
            for sent in state.sent.values()
            if sent.new and not sent.counted and sent.extent in kept
        ]
        if not extra:
            return upload
        for sent in extra:
            sent.counted = True
        return dataclasses.replace(
            upload,
            bytes_uploaded=upload.bytes_uploaded + sum(s.extent.length for s in extra),
            chunks_new=upload.chunks_new + len(extra),
        )

    async def done_with(self, staged: StagedFile) -> None:
        """After a commit: end the holds no later commit of ``staged`` can use (all of
        them once the copy is dropped); a version names the chunks it kept."""
        state = self._files.get(staged)
        if state is None:
            return
        if staged.fd < 0:
            del self._files[staged]
            for task in state.tasks.values():
                task.cancel()
            keep: set[str] = set()
        else:
            keep = {sent.extent.chunk_id for sent in state.sent.values()}
        spent = sorted(state.held - keep)
        state.held &= keep
        if spent:
            with contextlib.suppress(Exception):
                await self.drive.uploader.release(spent, state.token)

    # -- holds ---------------------------------------------------------------------------

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """Keep holds alive while their files stay open; forget dropped copies."""
        while self._files:
            await asyncio.sleep(CHUNK_HOLD / 3)
            for staged, state in list(self._files.items()):
                if staged.fd < 0:
                    await self.done_with(staged)
                    continue
                with contextlib.suppress(Exception):
                    await self.drive.uploader.renew(sorted(state.held), state.token)

    async def close(self) -> None:
        for staged, state in list(self._files.items()):
            for task in state.tasks.values():
                task.cancel()
            await asyncio.gather(*state.tasks.values(), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.drive.uploader.release(sorted(state.held), state.token)
            self._files.pop(staged, None)
        if self._renewer is not None:
            self._renewer.cancel()
