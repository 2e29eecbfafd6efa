"""Sending the finished chunks of a file while it is still being written.

A large file copied into the mount would otherwise travel only after it is closed
(or fsync'd): the copy and the upload would take turns. Instead, once writes have
covered a whole fixed-size chunk of a staged copy, its bytes are read, hashed,
claimed and sent in the background, held under a token of the file's own so GC
leaves them alone. The commit then keeps each such chunk by reference (as it keeps
untouched chunks of the base) and sends only the rest.

Content-defined chunks are cut from the start of the file a batch at a time, once
writes have covered a batch past the last cut: every cut but the last of a batch
is where a whole pass would cut (a cut depends only on the bytes since the one
before), so those pieces are sent and the next batch starts at the last cut. The
commit cuts on from the last kept chunk and finds the same cuts.

A chunk sent early is only a guess that the bytes are final. Every change to the
copy is counted per region (a fixed chunk, or a block under content-defined cuts;
``StagedFile.touch``): a write bumps the regions it touches, any other change
(truncate, punch, a write that failed) bumps them all. A chunk sent early is kept by
the commit only if the counts of its regions have not moved since its bytes were
read, so what the version names is always what the copy holds.

A fixed chunk written in order from its start (a copy, a render) is also gathered
in memory as it is written, and hashed there a block at a time (``gather``): once
whole it is sent from that memory, neither read back from the copy nor hashed
again, and the caller writes the copy from it with direct I/O (see
``VFS._write_into``). Any other change to the chunk lets its gathered bytes go.

Where the store takes a chunk in parts (``BlobStore.stream``) and the mount has not
turned it off (``MountOptions.stream_chunks``), the gathered bytes also go up in two
halves as they come: once the chunk is whole only its second half is left to send
before it is named, where a put of the whole chunk would only start then. The last chunk of a
file, written in order but short, is named from its stream when the commit comes
(``settle``), not sent again. A stream whose chunk is let go is aborted. A whole
chunk's last part waits for its name: one the drive records already is not sent
further, and the file's later chunks go whole (it is a copy of one the drive has,
most likely): claimed first, sent only if missing. Otherwise the last part goes in
two pieces side by side: at the end of a file nothing else is on its way, and an
S3 server takes each request on a core of its own.

An fsync of a changed copy also starts sending what its commit would send (the
stretches around the base bytes it keeps, cut as the commit cuts them), beside the
local sync: a small edit saved right after is then mostly sent already. Up to a
chunk's worth at a time, and at most ``_ATTEMPTS`` times between two commits of a
copy, so a program that fsyncs a file it keeps changing does not resend it each time.

Drives with a storage pod tier do not send early: where chunks go is left to the
commit's upload there.

Chunks sent early do not go into the block cache (a commit puts what it sends
there): a file large enough to be sent while written is output (a render, a
transcode) that this machine rarely reads back before the kernel's page cache lets
go of it, and caching it would double the local disk writes and push blocks that
readers use out of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3

from mediadrive.core import buffers
from mediadrive.core.blob import PART_ALIGN, ChunkStream
from mediadrive.core.chunking import Piece, make_chunker
from mediadrive.core.drive import Drive
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent
from mediadrive.core.meta.interface import CHUNK_HOLD
from mediadrive.core.upload import Landing, UploadResult, window

from .staging import StagedFile

log = logging.getLogger(__name__)

# A chunk whose early copy went stale (rewritten after it was read) is sent early
# again at most this many times: random rewrites are left to the commit.
_ATTEMPTS = 2
# Content-defined chunks are cut from the written part of a copy this much at a time.
_CDC_BATCH = 32 << 20
# Batches of content-defined chunks being cut and sent at once, across all files.
_CDC_BATCHES = 4
# Puts in flight at once for one batch of content-defined chunks.
_CDC_PUTS = 8
# A streamed chunk goes up in this many parts (whole MiBs; larger if the store's
# smallest part is): its first half travels while its second is written. Each part
# is a request and a thread's send beside the loop's FUSE writes: in 8 MiB parts a
# 256 MiB copy cost the agent 0.2 s more CPU than it saved in waiting; in halves no
# more CPU than one put a chunk, and 0.07 s less wait (docs/ARCHITECTURE.md).
_STREAM_PARTS = 2
_MIB = 1 << 20
# The part a chunk's name waits for goes in this many pieces side by side, each at
# least _MIN_PIECE long: what is left to send once a file's last byte is written is
# sent by more than one of the store's cores.
_LAST_PIECES = 2
_MIN_PIECE = 8 << 20
# Memory for chunks gathered as they are written (see EarlyUploads.gather), across
# all files: an upload's window.
GATHERED_BYTES = 256 << 20
# The keys of a file's content-defined cutting task and of its send after an fsync
# among its tasks (the others are chunk indexes).
_CUT = -1
_AHEAD = -2

# (epoch, changes): whether bytes are still the ones read (see _FileState.stamp).
Stamp = tuple[int, int]


@dataclass(eq=False)
class _Gathered:
    """A fixed chunk of a copy written from its start in order, its bytes gathered
    here as they come (see EarlyUploads.gather), and hashed a block at a time as
    they do: the last chunk of a file is sent as soon as its last write is in, not
    after a pass over it."""

    view: memoryview
    filled: int = 0
    # Gathered writes whose change the copy has yet to report (see changed).
    expected: int = 0
    # Bytes handed to the hashing thread, the chunk's hash and its block digests so far,
    # and the last hashing handed over (the thread takes them in order).
    hashed: int = 0
    hasher: Any = field(default_factory=blake3)
    digests: bytearray = field(default_factory=bytearray)
    hashing: Future[None] | None = None
    # Its bytes going up a part at a time (see EarlyUploads._stream_on): the stream,
    # the bytes handed to it, and the sends of its parts.
    stream: ChunkStream | None = None
    streamed: int = 0
    parts: list[asyncio.Task[None]] = field(default_factory=list)

    def hash_on(self, whole: bool) -> None:
        """Hand the blocks written since over to the hashing thread (``whole``: the
        chunk is written, its last block too, short or not)."""
        end = self.filled if whole else self.filled - self.filled % BLOCK_SIZE
        if end > self.hashed:
            self.hashing = _hashing_thread().submit(self._hash, self.hashed, end)
            self.hashed = end

    def _hash(self, start: int, end: int) -> None:
        part = self.view[start:end]
        self.hasher.update(part)
        for i in range(0, len(part), BLOCK_SIZE):
            self.digests += blake3(part[i : i + BLOCK_SIZE]).digest()

    async def identity(self) -> tuple[str, bytes]:
        """The chunk's id and block digests (see ``hashing.identify``), once hashed."""
        if self.hashing is not None:
            await asyncio.wrap_future(self.hashing)
        return self.hasher.hexdigest(), bytes(self.digests)


_hashing: ThreadPoolExecutor | None = None


def _last_pieces(rest: int, smallest: int) -> int:
    """How long each piece of the ``rest`` of a named chunk is: the rest goes in
    ``_LAST_PIECES`` pieces side by side where each is long enough."""
    pieces = max(1, min(_LAST_PIECES, rest // max(smallest, _MIN_PIECE)))
    return -(-rest // pieces // PART_ALIGN) * PART_ALIGN or PART_ALIGN


def _hashing_thread() -> ThreadPoolExecutor:
    global _hashing
    if _hashing is None:
        _hashing = ThreadPoolExecutor(1, thread_name_prefix="gather-hash")
    return _hashing


@dataclass
class _Sent:
    extent: Extent
    # The change count of its bytes when they were read.
    stamp: Stamp
    # Its bytes travelled (the drive lacked it); counted in the first commit naming it.
    new: bool
    counted: bool = False


@dataclass(eq=False)
class _FileState:
    grain: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Bumped by every change that is not a plain write (it spoils every chunk).
    epoch: int = 0
    # Per ``grain``-sized region: writes that touched it, and bytes they covered
    # (overlaps counted twice).
    changes: dict[int, int] = field(default_factory=dict)
    covered: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    # By offset: chunks sent, valid while their stamp holds.
    sent: dict[int, _Sent] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # Content-defined chunks: where the next cut starts (every cut before is final).
    cursor: int = 0
    # Chunk ids held under ``token`` (released once no commit will name them).
    held: set[str] = field(default_factory=set)
    # Sends after an fsync since the last commit.
    ahead: int = 0
    # The pieces of the send after an fsync now under way, and those of them whose
    # puts are travelling (by offset; see EarlyUploads.settle).
    ahead_pieces: int = 0
    landing: dict[int, tuple[Landing, Stamp]] = field(default_factory=dict)
    # By chunk index: chunks being written in order from their start (see gather).
    gathered: dict[int, _Gathered] = field(default_factory=dict)
    # A chunk of it sent early turned out stored already: the file is likely a copy of
    # one the drive has, and its later chunks go whole (streamed, half of each would
    # travel for nothing before its name is known).
    copied: bool = False

    def regions(self, offset: int, length: int) -> range:
        return range(offset // self.grain, (offset + length - 1) // self.grain + 1)

    def stamp(self, offset: int, length: int) -> Stamp:
        """Changes only grow, so their sum over a range moves whenever one does."""
        return self.epoch, sum(self.changes.get(i, 0) for i in self.regions(offset, length))

    def valid(self, sent: _Sent) -> bool:
        return sent.stamp == self.stamp(sent.extent.offset, sent.extent.length)

    def covered_up_to(self, start: int) -> int:
        """The end of the run of fully written regions from the one holding ``start``."""
        index = start // self.grain
        while self.covered.get(index, 0) >= self.grain:
            index += 1
        return max(index * self.grain, start)


class EarlyUploads:
    """Sends full chunks of staged copies ahead of their commits (see module doc)."""

    def __init__(self, drive: Drive, stream: bool = False) -> None:
        """``stream``: send gathered chunks a part at a time while they are written,
        where the store can take them so."""
        self.drive = drive
        settings = drive.settings
        self.settings = settings
        self.enabled = drive.tiers is None
        self.cdc = settings.chunking == "cdc"
        self.size = settings.chunk_size
        # Changes are counted per fixed chunk, or per block under content-defined cuts.
        self.grain = BLOCK_SIZE if self.cdc else self.size
        self.cdc_batch = _CDC_BATCH
        # At most an upload's window of chunks (or a few batches of content-defined
        # ones, each up to two batches long) in memory at once, across all files.
        self._slots = asyncio.Semaphore(_CDC_BATCHES if self.cdc else window(settings))
        self._files: dict[StagedFile, _FileState] = {}
        # Chunks gathered in memory at once, across all files, those being sent
        # included (see gather).
        self._gather_max = max(1, GATHERED_BYTES // self.grain)
        self._gathering = 0
        self._renewer: asyncio.Task[None] | None = None
        # Holds being ended after commits and streams being aborted (nobody waits for
        # them; close does).
        self._releases: set[asyncio.Task[None]] = set()
        # Told of each piece sent ahead of an fsync, with its bytes (the writeback
        # keeps its blocks).
        self.on_sent_ahead: Callable[[StagedFile, Extent, bytes | memoryview], None] | None = None
        # Whether gathered chunks go up while they are written, and in parts of what
        # size: at least two to a chunk (asking for a stream sends nothing until a
        # part is written).
        self.part_size = -(-self.grain // _STREAM_PARTS // _MIB) * _MIB
        probe = drive.uploader.blobs.stream(self.part_size) if stream and not self.cdc else None
        if probe is not None:
            self.part_size = probe.part_size
        self.streams = self.enabled and probe is not None and self.part_size < self.grain
        self.streams_started = 0
        self.streams_dropped = 0

    # -- told by the staged copies ------------------------------------------------------

    def changed(self, staged: StagedFile, offset: int | None, length: int | None) -> None:
        """``staged`` changed: ``length`` bytes written at ``offset``, or (None) in a
        way that may have touched any byte."""
        if not self.enabled or staged.recovered:
            return
        state = self._files.get(staged)
        if offset is None or length is None:
            if state is not None:
                self._scatter(state)
                state.epoch += 1
                state.sent.clear()
                state.covered.clear()
                state.attempts.clear()
                state.cursor = 0
            return
        if length <= 0:
            return
        state = self._state(staged)
        end = offset + length
        full = []
        for index in state.regions(offset, length):
            state.changes[index] = state.changes.get(index, 0) + 1
            gathered = state.gathered.get(index)
            if gathered is not None:
                if gathered.expected:
                    gathered.expected -= 1
                else:
                    # Changed by a write it did not see: its bytes are not the copy's.
                    self._scatter(state, index)
            start = index * self.grain
            overlap = min(end, start + self.grain) - max(offset, start)
            state.covered[index] = state.covered.get(index, 0) + overlap
            if state.covered[index] >= self.grain:
                full.append(index)
        if self.cdc:
            self._cut_later(staged, state)
            return
        for index in full:
            if index not in state.tasks:
                self._send_later(staged, state, index)

    def gather(
        self, staged: StagedFile, offset: int, data: bytes | memoryview
    ) -> list[tuple[int, memoryview]]:
        """Before ``data`` is written into ``staged`` at ``offset``: keep its bytes in
        memory where they continue a chunk being written in order from its start (or
        start one), so the chunk, once written, is hashed and sent from there rather
        than read back from the copy. Returns, for each chunk the write falls in, where
        its bytes now are in such memory (offset in the file, aligned view): the
        caller may write the copy from those, past the page cache; none when the write
        continues no chunk. The caller must write the copy, with nothing awaited in
        between, so that ``changed`` hears of it."""
        if not self.enabled or self.cdc or staged.recovered or not data:
            return []
        state = self._state(staged)
        end = offset + len(data)
        placed = []
        for index in state.regions(offset, len(data)):
            start = index * self.grain
            lo, hi = max(offset, start), min(end, start + self.grain)
            gathered = state.gathered.get(index)
            if gathered is None and lo == start and self._gathering < self._gather_max:
                gathered = state.gathered[index] = _Gathered(buffers.aligned(self.grain))
                self._gathering += 1
            if gathered is None:
                continue
            if gathered.filled != lo - start:
                # Out of order: the copy is read as before.
                self._scatter(state, index)
                continue
            view = gathered.view[lo - start : hi - start]
            view[:] = memoryview(data)[lo - offset : hi - offset]
            gathered.filled = hi - start
            gathered.expected += 1
            whole = gathered.filled == self.grain
            gathered.hash_on(whole)
            # A whole chunk's last part waits for its name (see _send).
            self._stream_on(gathered, whole, start=not state.copied, hold_last=True)
            placed.append((lo, view))
        return placed

    def _stream_on(
        self, gathered: _Gathered, whole: bool, start: bool = True, hold_last: bool = False
    ) -> None:
        """Send the parts of a gathered chunk filled since (``whole``: its last part
        too, short or not, unless ``hold_last``; ``start``: a stream may start for
        it). A chunk whose first part is not filled until it is whole is not
        streamed: one put sends it as soon, in one request."""
        if not self.streams:
            return
        if gathered.stream is None:
            if not start or gathered.streamed or gathered.filled < self.part_size or whole:
                return
            gathered.stream = self.drive.uploader.blobs.stream(self.part_size)
            if gathered.stream is None:
                return
            self.streams_started += 1
        stream = gathered.stream
        step = stream.part_size
        if whole and hold_last:
            end = (gathered.filled - 1) // step * step
        else:
            end = gathered.filled if whole else gathered.filled - gathered.filled % step
        if whole and not hold_last:
            step = _last_pieces(end - gathered.streamed, stream.min_part)
        loop = asyncio.get_running_loop()
        while gathered.streamed < end:
            offset = gathered.streamed
            stop = min(offset + step, end)
            part = gathered.view[offset:stop]
            gathered.parts.append(loop.create_task(stream.write(offset, part)))
            gathered.streamed = stop

    def _drop_stream(self, gathered: _Gathered) -> None:
        """Abort the stream of a chunk let go, once its parts' sends are over."""
        stream, parts = gathered.stream, gathered.parts
        gathered.stream, gathered.parts = None, []
        if stream is not None:
            self._abort_stream(stream, parts)

    def _abort_stream(self, stream: ChunkStream, parts: list[asyncio.Task[None]]) -> None:
        """Abort ``stream`` in the background once ``parts`` (cancelled) are over."""
        self.streams_dropped += 1

        async def drop() -> None:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            with contextlib.suppress(Exception):
                await stream.abort()

        self._background(drop())

    async def _parts_in(self, gathered: _Gathered, length: int) -> ChunkStream | None:
        """The stream of a gathered chunk once every part of its ``length`` bytes is
        sent; None (the stream aborted) if it has none or a part failed."""
        stream, parts = gathered.stream, gathered.parts
        if stream is None:
            return None
        gathered.stream, gathered.parts = None, []
        try:
            results = await asyncio.gather(*parts, return_exceptions=True)
        except asyncio.CancelledError:
            self._abort_stream(stream, parts)
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed or gathered.streamed != length:
            if failed:
                log.info("a part of a streamed chunk failed (%s); putting it whole", failed[0])
            self._abort_stream(stream, [])
            return None
        return stream

    def _scatter(
        self, state: _FileState, index: int | None = None, view: memoryview | None = None
    ) -> None:
        """Let go of the bytes gathered for chunk ``index`` (None: every chunk; with
        ``view``, only if they are still those)."""
        for i in list(state.gathered) if index is None else [index]:
            gathered = state.gathered.get(i)
            if gathered is not None and (view is None or gathered.view is view):
                del state.gathered[i]
                self._gathering -= 1
                self._drop_stream(gathered)

    def _state(self, staged: StagedFile) -> _FileState:
        state = self._files.get(staged)
        if state is None:
            state = self._files[staged] = _FileState(self.grain)
            self._start_renewing()
        return state

    def may_send_ahead(self, staged: StagedFile) -> bool:
        """Whether an fsync of ``staged`` now would send anything ahead (checked before
        working out what)."""
        if not self.enabled or staged.recovered:
            return False
        state = self._files.get(staged)
        return state is None or (_AHEAD not in state.tasks and state.ahead < _ATTEMPTS)

    def send_ahead(
        self, staged: StagedFile, stretches: Sequence[tuple[int, int]]
    ) -> asyncio.Future[None] | None:
        """``staged`` was fsync'd: start sending ``stretches`` (offset, length), the
        pieces its commit would send as things stand (see module doc). Returns what is
        done once their puts are handed to the store (or the sending ended), if any
        is sent."""
        if not stretches or not self.may_send_ahead(staged):
            return None
        if sum(length for _, length in stretches) > self.size:
            return None
        state = self._state(staged)
        # A chunk being sent whole already is not sent twice.
        stretches = [
            (start, length)
            for start, length in stretches
            if not any(i in state.tasks for i in state.regions(start, length))
        ]
        if not stretches:
            return None
        state.ahead += 1
        state.ahead_pieces = len(stretches)
        handed = asyncio.get_running_loop().create_future()
        left = len(stretches)

        def hand() -> None:
            if not handed.done():
                handed.set_result(None)

        def put() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                hand()

        task = self._track(state, _AHEAD, self._send_stretches(staged, state, stretches, put))
        task.add_done_callback(lambda _: hand())
        return handed

    async def _send_stretches(
        self,
        staged: StagedFile,
        state: _FileState,
        stretches: Sequence[tuple[int, int]],
        on_put: Callable[[], None],
    ) -> None:
        if len(stretches) == 1:
            # No task of its own: the piece's bytes leave a turn of the loop sooner.
            ((start, length),) = stretches
            await self._send(staged, state, start, length, ahead=on_put)
            return
        await asyncio.gather(*(self._send(staged, state, s, n, ahead=on_put) for s, n in stretches))

    def _send_later(self, staged: StagedFile, state: _FileState, index: int) -> None:
        attempts = state.attempts.get(index, 0)
        if attempts >= _ATTEMPTS:
            return
        state.attempts[index] = attempts + 1
        self._track(state, index, self._send(staged, state, index * self.size, self.size))

    def _track(
        self,
        state: _FileState,
        key: int,
        work: Coroutine[Any, Any, None],
        then: Callable[[], None] | None = None,
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        state.tasks[key] = task

        def finished(_: asyncio.Task[None]) -> None:
            state.tasks.pop(key, None)
            if then is not None and not task.cancelled():
                then()

        task.add_done_callback(finished)
        return task

    async def _read(
        self, staged: StagedFile, state: _FileState, start: int, length: int, here: bool = False
    ) -> tuple[bytes, Stamp] | None:
        """The copy's bytes in a range and their stamp; None when they changed (or the
        copy closed) while they were read, or are not all in the copy. ``here``: read on
        the event loop's thread whatever the length."""
        stamp = state.stamp(start, length)
        fd = staged.fd
        if fd < 0 or staged.orphan or staged.failed or not staged.holds(start, length):
            return None
        try:
            if here or length <= BLOCK_SIZE:
                # Just written, so in the page cache: cheaper than a thread hop.
                data = os.pread(fd, length, start)
            else:
                data = await asyncio.to_thread(os.pread, fd, length, start)
        except OSError:
            return None
        if staged.fd != fd or state.stamp(start, length) != stamp or len(data) < length:
            return None
        return data, stamp

    async def _store(
        self,
        staged: StagedFile,
        state: _FileState,
        piece: Piece,
        stamp: Stamp,
        ahead: Callable[[], None] | None = None,
        identity: tuple[str, bytes] | None = None,
        stream: ChunkStream | None = None,
    ) -> str | None:
        """Send one chunk read under ``stamp``; recorded if its bytes still hold.
        Returns its id once stored. ``ahead``: the piece is sent for an fsync, and this
        is called once its put is handed to the store. ``identity``: its id and block
        digests, when already worked out. ``stream``: one holding its bytes already."""

        def landing(landing: Landing) -> None:
            state.landing[piece.offset] = (landing, stamp)

        try:
            extent, new = await self.drive.uploader.store_piece(
                piece,
                state.token,
                put_first=ahead is not None,
                on_put=ahead,
                on_landing=landing if ahead is not None else None,
                identity=identity,
                stream=stream,
            )
        except Exception as exc:  # the commit sends it instead
            log.info("early upload of %s at %d failed: %s", staged.path, piece.offset, exc)
            return None
        finally:
            state.landing.pop(piece.offset, None)
        state.held.add(extent.chunk_id)
        if not new and ahead is None:
            state.copied = True
        if ahead is not None and self.on_sent_ahead is not None:
            self.on_sent_ahead(staged, extent, piece.data)
        sent = _Sent(extent, stamp, new)
        if state.valid(sent):
            state.sent[extent.offset] = sent
        return extent.chunk_id

    async def _send(
        self,
        staged: StagedFile,
        state: _FileState,
        start: int,
        length: int,
        ahead: Callable[[], None] | None = None,
    ) -> None:
        """Send ``length`` bytes of the copy at ``start`` as one chunk (``ahead``: for an
        fsync, whose commit waits for it; see _store)."""
        async with self._slots:
            gathered = None if ahead is not None else self._whole(state, start, length)
            if gathered is not None:
                stamp = state.stamp(start, length)
                try:
                    identity = await gathered.identity()
                    if gathered.stream is not None and await self._recorded(identity[0]):
                        # Stored already, most likely (a copy): its last part and those
                        # still on their way would travel for nothing. (The claim
                        # below decides.)
                        self._drop_stream(gathered)
                    self._stream_on(gathered, whole=True)
                    stream = await self._parts_in(gathered, length)
                    piece = Piece(start, gathered.view[:length])
                    await self._store(staged, state, piece, stamp, ahead, identity, stream)
                finally:
                    self._scatter(state, start // self.grain, gathered.view)
                return
            # A piece for an fsync is what the loop waits for (see VFS.fsync).
            read = await self._read(staged, state, start, length, here=ahead is not None)
            if read is None:
                return
            data, stamp = read
            await self._store(staged, state, Piece(start, data), stamp, ahead)

    async def _recorded(self, chunk_id: str) -> bool:
        """Whether the drive records ``chunk_id`` (stored, or being stored)."""
        try:
            return not await self.drive.meta.unrecorded([chunk_id])
        except Exception:
            return False

    def _whole(self, state: _FileState, start: int, length: int) -> _Gathered | None:
        """The chunk at ``start`` gathered in memory and hashed, ``length`` bytes of it
        (a whole chunk, or the last of a file), if it is."""
        if start % self.grain:
            return None
        gathered = state.gathered.get(start // self.grain)
        if gathered is None or gathered.filled != length or gathered.expected:
            return None
        return gathered if gathered.hashed == length else None

    def _send_tail(self, staged: StagedFile, state: _FileState) -> None:
        """Name the file's last chunk, short, from its stream (see module doc): it
        would otherwise be aborted and its bytes read and sent again by the commit."""
        if staged.fd < 0 or staged.orphan or not state.gathered or _AHEAD in state.tasks:
            return
        size = staged.size()
        if size <= 0:
            return
        index = (size - 1) // self.grain
        start = index * self.grain
        gathered = state.gathered.get(index)
        if (
            gathered is None
            or gathered.stream is None
            or gathered.expected
            or gathered.filled != size - start
            or index in state.tasks
            or start in state.sent
        ):
            return
        gathered.hash_on(whole=True)
        # Its last part waits for its name, as a whole chunk's does (see _send).
        self._stream_on(gathered, whole=True, hold_last=True)
        self._track(state, index, self._send(staged, state, start, gathered.filled))

    # -- content-defined chunks ---------------------------------------------------------

    def _cut_later(self, staged: StagedFile, state: _FileState) -> None:
        """Cut and send the written run after the cursor once it is a batch long."""
        if _CUT in state.tasks or staged.fd < 0 or staged.orphan:
            return
        end = min(state.covered_up_to(state.cursor), state.cursor + 2 * self.cdc_batch)
        if end - state.cursor >= self.cdc_batch:
            self._track(
                state,
                _CUT,
                self._cut(staged, state, state.cursor, end),
                # The next batch may be written by now.
                then=lambda: self._cut_later(staged, state),
            )

    async def _cut(self, staged: StagedFile, state: _FileState, start: int, end: int) -> None:
        """Cut ``start``..``end`` as a whole pass would and send every piece but the
        last (which the end of the run may have cut short); the cursor moves to it."""
        async with self._slots:
            read = await self._read(staged, state, start, end - start)
            if read is None:
                return
            data, (epoch, _) = read
            # The change counts the bytes were read under (nothing awaited since).
            counts = {i: state.changes.get(i, 0) for i in state.regions(start, end - start)}
            chunker = make_chunker("cdc", self.size)
            cut = await asyncio.to_thread(lambda: list(chunker.split(io.BytesIO(data))))
            if len(cut) < 2 or state.cursor != start or state.epoch != epoch:
                return
            pieces = [Piece(start + p.offset, p.data) for p in cut[:-1]]
            state.cursor = pieces[-1].offset + len(pieces[-1].data)
            puts = asyncio.Semaphore(_CDC_PUTS)

            async def store(piece: Piece) -> str | None:
                regions = state.regions(piece.offset, len(piece.data))
                stamp = (epoch, sum(counts[i] for i in regions))
                async with puts:
                    return await self._store(staged, state, piece, stamp)

            await asyncio.gather(*(store(piece) for piece in pieces))

    # -- asked by the commit ------------------------------------------------------------

    async def settle(self, staged: StagedFile, landing: bool = False) -> list[Landing]:
        """Wait for the chunks of ``staged`` being sent now. ``landing``: unless all
        that is being sent is what an fsync sent, every piece of it hashed and its put
        travelling with the copy's bytes unchanged since: those pieces are returned at
        once instead, for the commit to record (see Landing)."""
        state = self._files.get(staged)
        if state is not None and self.streams:
            self._send_tail(staged, state)
        if landing and state is not None and state.tasks.keys() == {_AHEAD}:
            pieces = list(state.landing.values())
            if len(pieces) == state.ahead_pieces and all(
                stamp == state.stamp(piece.extent.offset, piece.extent.length)
                for piece, stamp in pieces
            ):
                return [piece for piece, _ in pieces]
        while state is not None and state.tasks:
            await asyncio.gather(*list(state.tasks.values()), return_exceptions=True)
        return []

    def ready(self, staged: StagedFile) -> dict[int, Extent]:
        """The chunks sent early that still hold the copy's bytes, by offset (valid
        until the copy next changes: the caller reads the copy without awaiting)."""
        state = self._files.get(staged)
        if state is None:
            return {}
        size = staged.size()
        return {
            offset: sent.extent
            for offset, sent in state.sent.items()
            if state.valid(sent) and offset + sent.extent.length <= size
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
            self._scatter(state)
            for task in state.tasks.values():
                task.cancel()
            keep: set[str] = set()
        else:
            keep = {sent.extent.chunk_id for sent in state.sent.values() if state.valid(sent)}
            state.ahead = 0
        spent = sorted(state.held - keep)
        state.held &= keep
        if spent:
            # Off the commit's path: a hold left behind only delays GC until it lapses.
            self._background(self._release(spent, state.token))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` off every caller's path (close waits for it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, chunk_ids: list[str], token: str) -> None:
        with contextlib.suppress(Exception):
            await self.drive.uploader.release(chunk_ids, token)

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
            self._scatter(state)
            with contextlib.suppress(Exception):
                await self.drive.uploader.release(sorted(state.held), state.token)
            self._files.pop(staged, None)
        await asyncio.gather(*self._releases)
        if self._renewer is not None:
            self._renewer.cancel()
