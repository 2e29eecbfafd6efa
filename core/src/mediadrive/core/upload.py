"""Storing a file's bytes as chunks: only the chunks the drive lacks are sent.

A worker thread reads and cuts the source; each piece is hashed on a pool of
threads (BLAKE3 releases the GIL, so pieces hash side by side on every core) while
earlier ones are being sent; a bounded queue hands them, in file order, to the
event loop, which claims them a batch at a time and keeps several puts in flight.
Every chunk the upload relies on is held in the metadata store under the upload's
token until the commit that names it lands, so GC never collects a chunk a commit
is about to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from .blob import BlobStore, ChunkStream, put_sent
from .chunking import Piece, make_chunker
from .config import DriveSettings
from .errors import ChunkMissing
from .hashing import BLOCK_SIZE, chunk_id, digests_of, identify
from .meta import Extent, MetaStore
from .meta.records import LandingChunk
from .meta.sql import CHUNK_HOLD

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

# What the chunking thread hands over: a new piece (with its id and block digests,
# being computed), or a chunk of an earlier version kept as it is.
_Item = tuple[Piece, "Future[tuple[str, bytes]]"] | Extent

# Bytes of pieces read ahead of the puts, and of puts in flight (each bound).
_WINDOW_BYTES = 256 << 20
_MAX_IN_FLIGHT = 16
# Pieces claimed in one metadata call at most.
_CLAIM_BATCH = 32
# A piece an fsync sends ahead up to this size is put before it is claimed (see
# store_piece).
_PUT_FIRST = 4 * BLOCK_SIZE
# Such a piece is hashed on two threads. An edit made after a pause (as most are)
# finds the CPUs idle and slow to get going, and its hash is the longest stretch of
# work before its put leaves: one thread hashing 1 MiB there was half a millisecond
# slower to the fsync's answer (1 MiB edits 50 ms apart, medians of 60: 7.67 against
# 6.95 ms; edits back to back, 7.13 against 7.06). BLAKE3's pool spins its idle
# threads a little after each hash: more threads than two would take that CPU from
# the store's server just as the put reaches it.
_PIECE_HASH_THREADS = 2

_hashers: ThreadPoolExecutor | None = None
_hashers_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """Threads shared by every upload of the process to hash pieces on."""
    global _hashers
    with _hashers_lock:
        if _hashers is None:
            _hashers = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="hash")
        return _hashers


def _digest(data: bytes | memoryview) -> tuple[str, bytes]:
    return identify(data, threads=1)


def window(settings: DriveSettings) -> int:
    """How many pieces an upload reads ahead, and sends at once, for these settings."""
    piece = settings.chunk_size if settings.chunking == "fixed" else 2 * settings.chunk_size
    return max(2, min(_MAX_IN_FLIGHT, _WINDOW_BYTES // max(piece, 1)))


@dataclass
class Landing:
    """A piece put for an fsync, its put still on its way. A commit that keeps it may
    record it itself (``chunk``: CommitRequest.landing), its transaction prepared while
    the put travels; ``claimed`` then says so, and ``recorded`` whether that commit
    recorded it, or it is left to the put's own record."""

    extent: Extent
    chunk: LandingChunk
    put: asyncio.Future[None]
    recorded: asyncio.Future[bool]
    claimed: bool = False

    def settle(self, recorded: bool) -> None:
        if not self.recorded.done():
            self.recorded.set_result(recorded)


@dataclass(frozen=True)
class UploadResult:
    extents: list[Extent]
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    # Names this upload's holds on its chunks; the commit releases them.
    token: str = ""
    # Where the chunks went: ``cloud``, or ``pod:REGION`` (the version's tier).
    tier: str = "cloud"
    # Kept chunks whose puts are still on their way, for the commit to record.
    landing: tuple[Landing, ...] = ()


def pieces(
    source: BinaryIO, settings: DriveSettings, reuse: Mapping[int, Extent] | None
) -> Iterator[Piece | Extent]:
    """The chunks of ``source``; ``reuse`` names extents of an earlier version (whole
    chunks or slices of them), by offset, that ``source`` holds unchanged: they are
    yielded without reading those bytes (which may be holes), and only the bytes
    between them are read and cut.

    Cutting starts afresh after each kept extent. Fixed chunking cuts on the drive's
    chunk boundaries whatever is kept, so a region between two slices of one chunk
    becomes one smaller chunk and the next edit still finds the same boundaries;
    content-defined cuts depend only on the bytes since the last cut, so cutting from
    the start of a changed chunk finds the cuts a whole pass would (up to the next
    kept chunk, where a cut is forced).
    """
    chunker = make_chunker(settings.chunking, settings.chunk_size)
    if not reuse:
        yield from chunker.split(source)
        return
    step = settings.chunk_size if settings.chunking == "fixed" else 0
    size = os.fstat(source.fileno()).st_size
    for part in layout(reuse, size, step):
        if isinstance(part, Extent):
            yield part
            continue
        position, length = part
        source.seek(position)
        region = _Region(source, length)
        for piece in chunker.split(cast(BinaryIO, region)):
            yield Piece(position + piece.offset, piece.data)
        if region.left:
            raise OSError(
                f"short read at {position + length - region.left} of a {size}-byte snapshot"
            )


def layout(reuse: Mapping[int, Extent], size: int, step: int) -> Iterator[tuple[int, int] | Extent]:
    """How :func:`pieces` goes through a file ``size`` bytes long: the ``reuse``
    extents in order, and between them the regions it reads and cuts, (offset, length),
    each split on the chunk boundaries when chunks are fixed (``step``, their size;
    0 for content-defined chunks)."""
    position = 0
    for start in [*sorted(o for o in reuse if o < size), size]:
        if start < position:
            raise ValueError(f"kept extents overlap at offset {start}")
        while position < start:
            # Fixed chunks: up to the next chunk boundary; content-defined: the region.
            stop = min(start, (position // step + 1) * step) if step else start
            yield position, stop - position
            position = stop
        if start < size:
            kept = reuse[start]
            yield kept
            position = start + kept.length


class _Region:
    """``length`` bytes of a file from where it is positioned, as a stream."""

    def __init__(self, source: BinaryIO, length: int) -> None:
        self._source = source
        self.left = length

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self._source.read(want) if want else b""
        self.left -= len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer)
        want = min(len(view), self.left)
        if not want:
            return 0
        n = self._source.readinto(view[:want])  # type: ignore[attr-defined]
        self.left -= n
        return int(n)


async def hashed_pieces(
    source: BinaryIO, settings: DriveSettings, reuse: Mapping[int, Extent] | None, depth: int
) -> AsyncIterator[list[_Item]]:
    """:func:`pieces` read in a thread and hashed on the hash pool, at most ``depth``
    pieces ahead of the consumer; in file order, as many at a time as are queued (so
    the consumer can claim them in one metadata call)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item | BaseException | None] = asyncio.Queue(maxsize=depth)
    stop = threading.Event()
    hashers = _hash_pool()

    def produce() -> None:
        item: _Item | BaseException | None = None
        try:
            for piece in pieces(source, settings, reuse):
                if stop.is_set():
                    return
                if isinstance(piece, Piece):
                    item = (piece, hashers.submit(_digest, piece.data))
                else:
                    item = piece
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            item = None
        except BaseException as exc:
            item = exc
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    producer = loop.run_in_executor(None, produce)
    try:
        done = False
        while not done:
            batch, done = _take(await queue.get(), queue)
            if batch:
                yield batch
    finally:
        # On failure the producer may be blocked on a full queue: stop and drain it.
        # (Waited on, not slept past: after the last piece it ends at once.)
        stop.set()
        while not producer.done():
            while not queue.empty():
                queue.get_nowait()
            await asyncio.wait({producer}, timeout=0.01)
        await asyncio.gather(producer, return_exceptions=True)


def _take(
    item: _Item | BaseException | None, queue: asyncio.Queue[_Item | BaseException | None]
) -> tuple[list[_Item], bool]:
    """``item`` and what else is queued (up to a claim batch); True at the end."""
    batch: list[_Item] = []
    while True:
        if isinstance(item, BaseException):
            raise item
        if item is None:
            return batch, True
        batch.append(item)
        if queue.empty() or len(batch) >= _CLAIM_BATCH:
            return batch, False
        item = queue.get_nowait()


@dataclass
class _Run:
    """The state of one upload: what it claimed, sent and found already stored."""

    progress: Progress | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    extents: list[Extent] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    sent: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Sent, not yet recorded as stored (recorded a batch at a time).
    stored: list[str] = field(default_factory=list)
    uploaded: int = 0

    def advance(self, n: int) -> None:
        if self.progress:
            self.progress(n)

    def result(self) -> UploadResult:
        last = self.extents[-1] if self.extents else None
        size = last.offset + last.length if last else 0
        return UploadResult(
            self.extents, size, self.uploaded, len(self.extents), len(self.sent), self.token
        )


class Uploader:
    """Uploads sources for one drive's stores under its chunking settings."""

    def __init__(
        self,
        meta: MetaStore,
        blobs: BlobStore,
        settings: DriveSettings,
        concurrency: int | None = None,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.settings = settings
        # Puts in flight at once (and pieces read ahead): by default as many as fit
        # the upload's memory window for this drive's chunk size.
        self.concurrency = concurrency or window(settings)
        # GC's count of finished chunk deletions as last read (see store_piece).
        self._deletions: int | None = None

    async def upload(
        self,
        source: BinaryIO,
        progress: Progress | None = None,
        reuse: Mapping[int, Extent] | None = None,
    ) -> UploadResult:
        """Chunk, hash and store ``source``; only chunks the drive lacks are sent.

        ``reuse`` names chunks of an earlier version, by offset, that ``source`` holds
        unchanged: they are kept without reading those bytes, which may be holes (see
        :func:`pieces`). A kept chunk the drive no longer stores is ChunkMissing.
        """
        run = _Run(progress)
        slots = asyncio.Semaphore(self.concurrency)
        renewer = asyncio.create_task(self._renew_holds(run))
        try:
            if reuse:
                await self._claim_kept(run, reuse.values())
            batches = hashed_pieces(source, self.settings, reuse, self.concurrency)
            async for batch in batches:
                await self._handle(run, slots, batch)
            await asyncio.gather(*run.sent.values())
            await self._record_stored(run)
        except BaseException:
            for task in run.sent.values():
                task.cancel()
            # Returned only once no put is running: one still writing would leave a
            # half-written object behind the error (stores end their puts on cancel).
            await asyncio.gather(*run.sent.values(), return_exceptions=True)
            # A failed upload is finished: let GC have its chunks (see release).
            with contextlib.suppress(Exception):
                await self.release(sorted(run.claimed), run.token)
            raise
        finally:
            renewer.cancel()
        return run.result()

    def keep(self, extents: Sequence[Extent]) -> UploadResult:
        """An upload whose every byte is in ``extents`` (in file order, end to end)
        of chunks already stored and held, as a commit right after needs them: the
        version they were kept from names them, or an earlier hold (a piece sent
        ahead) keeps them. Nothing to read, send or claim: the commit checks in its
        own transaction that each is still stored (ChunkMissing if not)."""
        run = _Run(None)
        run.extents.extend(extents)
        return run.result()

    async def _claim_kept(self, run: _Run, kept: Iterable[Extent]) -> None:
        """Hold every chunk the upload keeps in one metadata call, before any is met
        in the stream (a small edit's kept extents then cost no claim of their own)."""
        # A kept chunk is already recorded with its size; a slice only says how long
        # the chunk is at least.
        wanted = {e.chunk_id: (e.chunk_offset + e.length, None) for e in kept}
        states = await self._claim_many(wanted, run.token)
        run.claimed.update(wanted)
        for cid, state in sorted(states.items()):
            if state != "stored":
                raise ChunkMissing(f"chunk {cid} of an earlier version is gone")

    async def release(self, chunk_ids: Sequence[str], token: str) -> None:
        """End an upload's holds when no commit will follow (a commit ends them itself)."""
        if chunk_ids:
            await self.meta.hold_chunks(chunk_ids, hold=0, token=token)

    async def _handle(self, run: _Run, slots: asyncio.Semaphore, batch: list[_Item]) -> None:
        """Claim a batch of pieces and kept chunks in file order; send what is missing."""
        rows: list[tuple[Piece | None, Extent, bytes | None]] = []
        for item in batch:
            if isinstance(item, Extent):
                rows.append((None, item, None))
            else:
                piece, hashing = item
                cid, digests = await asyncio.wrap_future(hashing)
                rows.append((piece, Extent(piece.offset, len(piece.data), cid), digests))
        wanted: dict[str, tuple[int, bytes | None]] = {}
        for _, extent, known in rows:
            if extent.chunk_id not in run.claimed and extent.chunk_id not in wanted:
                wanted[extent.chunk_id] = (extent.length, known)
        states = await self._claim_many(wanted, run.token)
        run.claimed.update(wanted)
        for new, extent, _ in rows:
            run.extents.append(extent)
            state = states.pop(extent.chunk_id, None)
            if new is None:
                if state is not None and state != "stored":
                    raise ChunkMissing(f"chunk {extent.chunk_id} of an earlier version is gone")
            elif state is not None and state != "stored":
                await slots.acquire()
                run.sent[extent.chunk_id] = asyncio.create_task(
                    self._send(run, slots, extent.chunk_id, new.data)
                )
                if len(run.stored) >= _CLAIM_BATCH:
                    await self._record_stored(run)
                continue
            run.advance(extent.length)

    async def _send(
        self, run: _Run, slots: asyncio.Semaphore, cid: str, data: bytes | memoryview
    ) -> None:
        try:
            await self.blobs.put(cid, data)
            run.stored.append(cid)
            run.uploaded += len(data)
            run.advance(len(data))
        finally:
            slots.release()

    async def _record_stored(self, run: _Run) -> None:
        done, run.stored = run.stored, []
        if done:
            await self.meta.mark_stored(done)

    async def _renew_holds(self, run: _Run) -> None:
        while True:
            await asyncio.sleep(CHUNK_HOLD / 3)
            await self.meta.hold_chunks(sorted(run.claimed), token=run.token)

    async def _claim_many(
        self, chunks: Mapping[str, tuple[int, bytes | None]], token: str
    ) -> dict[str, str]:
        """Claim chunks; the state of each (``stored``, or missing, pending, damaged)."""
        states: dict[str, str] = {}
        left = dict(chunks)
        while left:
            claims = await self.meta.claim_chunks(
                [(cid, size, digests) for cid, (size, digests) in left.items()], token=token
            )
            busy = set()
            for claim in claims:
                if claim.state == "busy":
                    busy.add(claim.chunk_id)
                else:
                    states[claim.chunk_id] = claim.state
            left = {cid: left[cid] for cid in busy}
            if left:
                # GC is deleting these chunks right now; claim again once the rows go.
                await asyncio.sleep(0.05)
        return states

    async def store_piece(
        self,
        piece: Piece,
        token: str,
        put_first: bool = False,
        on_put: Callable[[], None] | None = None,
        on_landing: Callable[[Landing], None] | None = None,
        identity: tuple[str, bytes] | None = None,
        stream: ChunkStream | None = None,
    ) -> tuple[Extent, bool]:
        """Hash, claim (held under ``token``) and, if the drive lacks it, send one chunk
        ahead of the upload that will keep it: a file still being written sends its
        finished chunks this way, and its commit keeps them by reference (``reuse``).
        The hold lasts until released or renewed (:meth:`renew`). ``put_first``: a
        small piece is put before it is claimed (see _put_first). Returns the chunk's
        extent and whether its bytes were sent (False: the drive had it). ``on_put`` is
        called once the put is handed to the store (for a piece put first by a store that
        can tell: once its bytes are sent), or known not to be needed; ``on_landing``
        (a piece put first) while the put travels, with what a commit needs to record it
        (see Landing; False is returned for a piece such a commit recorded).
        ``identity``: the piece's id and block digests, hashed already. ``stream``: one
        holding the piece's bytes already, every part written: finished as the chunk if
        the drive lacks it (put instead if that fails), aborted otherwise."""
        if put_first and len(piece.data) <= _PUT_FIRST:
            # For an fsync, which waits with nothing else to do: hashed here (no thread
            # hop), and only its id before the put starts (see _put_first).
            cid = chunk_id(piece.data, threads=_PIECE_HASH_THREADS)
            extent = Extent(piece.offset, len(piece.data), cid)
            recorded, digests = await self._put_first(extent, piece.data, token, on_put, on_landing)
            if recorded is not None:
                return extent, recorded
            # Told already: the put below is the same piece's.
            on_put = None
        else:
            if identity is not None:
                cid, digests = identity
            elif len(piece.data) <= BLOCK_SIZE:
                # Hashing a block takes less than handing it to a thread and back.
                cid, digests = identify(piece.data)
            else:
                cid, digests = await asyncio.wrap_future(_hash_pool().submit(_digest, piece.data))
            extent = Extent(piece.offset, len(piece.data), cid)
        try:
            states = await self._claim_many({cid: (len(piece.data), digests)}, token)
        except BaseException:
            if stream is not None:
                await _abort(stream)
            raise
        sent = states.get(cid) != "stored"
        if sent:
            await self._store_claimed(cid, piece.data, stream, on_put)
        else:
            if stream is not None:
                await _abort(stream)
            if on_put is not None:
                on_put()
        return extent, sent

    async def _store_claimed(
        self,
        cid: str,
        data: bytes | memoryview,
        stream: ChunkStream | None,
        on_put: Callable[[], None] | None,
    ) -> None:
        """Store a claimed chunk: its stream finished, or ``data`` put (see store_piece)."""
        if stream is not None:
            try:
                await stream.finish(cid, len(data))
            except Exception as exc:
                log.info("streamed chunk %s not stored (%s); putting it whole", cid, exc)
            else:
                await self.meta.mark_stored([cid])
                return
        putting = asyncio.ensure_future(self.blobs.put(cid, data))
        if on_put is not None:
            on_put()
        await putting
        await self.meta.mark_stored([cid])

    async def _put_first(
        self,
        extent: Extent,
        data: bytes | memoryview,
        token: str,
        on_put: Callable[[], None] | None = None,
        on_landing: Callable[[Landing], None] | None = None,
    ) -> tuple[bool | None, bytes]:
        """Put a small piece, then claim it as stored in one transaction: what an fsync
        sends ahead is on the edit's path, and this saves a metadata round trip before
        the put and one after it, for at most a few MiB sent when the drive had them
        (chunks sent while a file is written are claimed first: a copy of bytes the
        drive has sends nothing). Returns whether its bytes were sent here (True), a
        commit recorded them (False; see Landing) or neither (None: GC is deleting that
        chunk right now, claim it first instead), and its block digests, worked out
        while the put travels (only the record needs them)."""
        cid = extent.chunk_id
        seen = self._deletions
        if seen is None:
            seen = await self.meta.chunk_deletions()
        putting = await _started(self.blobs, cid, data)
        if on_put is not None:
            on_put()
        digests = digests_of(data, cid)
        landing = None
        if on_landing is not None:
            chunk = LandingChunk(cid, len(data), digests, seen, token)
            landing = Landing(extent, chunk, putting, asyncio.get_running_loop().create_future())
            on_landing(landing)
        await putting
        if landing is not None and landing.claimed and await landing.recorded:
            # The commit recorded it, having found no deletion finished since `seen`:
            # the count the next put starts from, with no read of its own.
            self._deletions = seen
            return False, digests
        state, self._deletions = await self.meta.record_put(
            cid, len(data), digests, seen, token=token
        )
        if state == "busy":
            return None, digests
        if state == "pending":
            # A GC deletion finished since `seen`; it may have taken these very bytes.
            # Held now, so nothing takes them again.
            await self.blobs.put(cid, data)
            await self.meta.mark_stored([cid])
        return True, digests

    async def renew(self, chunk_ids: Sequence[str], token: str) -> None:
        """Extend the holds of chunks sent ahead of their commit (see store_piece)."""
        if chunk_ids:
            await self.meta.hold_chunks(chunk_ids, token=token)

    async def claim_existing(self, extents: list[Extent]) -> str:
        """Hold chunks that are already stored (a copy of a version); returns the token."""
        token = uuid.uuid4().hex
        await self.meta.claim_chunks(
            [(e.chunk_id, e.chunk_offset + e.length, None) for e in extents], token=token
        )
        return token


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _started(store: BlobStore, cid: str, data: bytes | memoryview) -> asyncio.Future[None]:
    """Start putting ``data`` into ``store`` and return the put once its bytes have
    left this process (or it ended): what the caller does next then does not hold
    the GIL while the put's thread prepares and sends the request, which is what
    delayed it most. A store that cannot tell gets one step of the loop to start."""
    if not store.signals_sent:
        putting = asyncio.ensure_future(store.put(cid, data))
        await asyncio.sleep(0)
        return putting
    loop = asyncio.get_running_loop()
    out: asyncio.Future[None] = loop.create_future()

    def sent(*_: object) -> None:
        if not out.done():
            out.set_result(None)

    def from_any_thread() -> None:
        if _running_loop() is loop:
            # A put from the loop itself (see S3Store.put_on_loop): no wake-up to send.
            sent()
            return
        # (A loop closed meanwhile has nobody waiting.)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(sent)

    before = put_sent.set(from_any_thread)
    try:
        putting = asyncio.ensure_future(store.put(cid, data))
    finally:
        put_sent.reset(before)
    putting.add_done_callback(sent)
    await out
    return putting


async def _abort(stream: ChunkStream) -> None:
    """Give a stream up; one that cannot be aborted is left to the store's sweep."""
    with contextlib.suppress(Exception):
        await stream.abort()
