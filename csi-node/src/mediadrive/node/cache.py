"""The block cache: verified 1 MiB blocks of chunks, on local disk, kept across remounts.

A block is named by its chunk id and its index inside the chunk, so it is shared by
every file and version that uses the chunk. The cache is bounded by size and evicts
the least recently used blocks, except those of pinned files, which stay whatever
the bound. Concurrent readers of one missing block share one fetch.

Layout under the cache folder::

    blocks/ab/<chunk id>.<index>   the bytes of one block
    index.db                       SQLite: blocks (size, last use) and pins

The index is rebuilt from what is on disk if it is lost; a block file whose size
does not match its index row is dropped when the cache opens. A block read back
from disk is checked against its digest (when given a ``check``): a damaged one is
dropped, logged and fetched again, never returned.

A block checked once (or written by the cache from verified bytes) is remembered
with the signature of its file (inode, size, modification time), and stays open (up
to ``_OPEN_BLOCKS`` of them, least recently used closed first): a read of it is one
``pread`` of the bytes asked for, as long as the file is the one checked, unchanged
since. Anything else reads the whole block and checks it again.

:meth:`BlockCache.fill` brings many blocks in the background (a file read at random,
a hydrate) as runs of several blocks, a few runs at a time; blocks a reader waits for
go out on their own meanwhile and are never queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mediadrive.core import buffers, private
from mediadrive.core.hashing import BLOCK_SIZE

log = logging.getLogger(__name__)

# A block's bytes: views of one buffer when a run of blocks came in one request.
Block = bytes | memoryview
Fetch = Callable[[str, int], Awaitable[Block]]
# Blocks ``first`` .. ``first + count - 1`` of a chunk in one request, each verified.
FetchRun = Callable[[str, int, int], Awaitable[Sequence[Block]]]
# Whether block bytes read back from disk are still what was fetched.
Check = Callable[[str, int, bytes], Awaitable[bool]]
BlockKey = tuple[str, int]

# Consecutive missing blocks of one chunk asked for together go out as one ranged
# request of at most this many blocks (several such requests run side by side). Each
# request costs the agent CPU of its own (a cold read took 6% less with 16 than 8).
MAX_RUN_BLOCKS = 16

# Recently used blocks also stay in memory: a sequential reader asks for the same
# block several times when the kernel splits its requests. A few runs of blocks are
# enough for that; more would only hold pages a fresh agent must fault in (see heap.py).
_MEMORY_BYTES = 16 << 20
_INDEX_FLUSH_SECONDS = 5.0
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
# Checked blocks kept open for small reads.
_OPEN_BLOCKS = 256
# Checked blocks whose file signature is remembered (reopened without a new check).
_CHECKED_BLOCKS = 1 << 16

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blocks ("
    " chunk TEXT NOT NULL, idx INTEGER NOT NULL, size INTEGER NOT NULL,"
    " used REAL NOT NULL, PRIMARY KEY (chunk, idx))",
    "CREATE TABLE IF NOT EXISTS pins ("
    " path TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0, added REAL NOT NULL,"
    " PRIMARY KEY (path, version))",
)


@dataclass(frozen=True)
class Pin:
    path: str
    # 0: the head of the file (or everything under a folder), followed as it changes.
    version: int


@dataclass
class CacheFigures:
    bytes_fetched: int = 0
    blocks_fetched: int = 0
    hits: int = 0
    misses: int = 0
    evicted_bytes: int = 0
    # Blocks found damaged on local disk (and fetched again).
    corrupt: int = 0


def runs_of(keys: Iterable[BlockKey]) -> list[list[BlockKey]]:
    """The keys in order, cut into runs of consecutive blocks of one chunk (each at
    most ``MAX_RUN_BLOCKS``): what one ranged request can fetch."""
    runs: list[list[BlockKey]] = []
    for key in sorted(set(keys)):
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last[0] == key[0]
            and last[1] + 1 == key[1]
            and len(runs[-1]) < MAX_RUN_BLOCKS
        ):
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BlockCache:
    def __init__(
        self,
        root: Path,
        capacity: int,
        fetch: Fetch,
        fetch_concurrency: int = 16,
        fetch_run: FetchRun | None = None,
        check: Check | None = None,
    ) -> None:
        self.root = root
        self.capacity = capacity
        self._fetch = fetch
        self.fetch_run = fetch_run
        self._check = check
        self._slots = asyncio.Semaphore(fetch_concurrency)
        self._blocks_dir = root / "blocks"
        self._blocks_root = str(self._blocks_dir)
        self._sizes: OrderedDict[BlockKey, int] = OrderedDict()
        self._memory: OrderedDict[BlockKey, Block] = OrderedDict()
        self._memory_bytes = 0
        # Checked blocks: an open descriptor and the (inode, size, mtime) checked.
        self._open: OrderedDict[BlockKey, tuple[int, tuple[int, int, int]]] = OrderedDict()
        # Blocks whose file was checked (or written from verified bytes): its signature.
        self._checked: OrderedDict[BlockKey, tuple[int, int, int]] = OrderedDict()
        self._inflight: dict[BlockKey, asyncio.Future[Block]] = {}
        self._touched: set[BlockKey] = set()
        # Index rows of blocks added since the last flush (a crash loses only rows:
        # blocks on disk without one are adopted when the cache opens).
        self._new_rows: dict[BlockKey, tuple[int, float]] = {}
        self._dirs: set[Path] = set()
        self._db: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._fills: set[asyncio.Task[None]] = set()
        self.total = 0
        # Blocks received into aligned memory go to disk with direct I/O (off where the
        # file system refuses it).
        self.direct_io = hasattr(os, "O_DIRECT")
        self.pinned_chunks: frozenset[str] = frozenset()
        self.figures = CacheFigures()

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        # Cached blocks are file contents: the cache is its owner's only, also one
        # made before it was kept private.
        private.make_dir(self.root, tighten=True)
        private.make_dir(self._blocks_dir, tighten=True)
        index = private.touch(self.root / "index.db")
        os.chmod(index, private.FILE_MODE)
        db = sqlite3.connect(index, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        for statement in _SCHEMA:
            db.execute(statement)
        self._db = db
        known, stale = self._load_index(db)
        adopted = self._adopt_unindexed(known, stale)
        for key in stale:
            self._path(key).unlink(missing_ok=True)
            db.execute("DELETE FROM blocks WHERE chunk = ? AND idx = ?", key)
        if adopted:
            db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)", adopted)
        self._evict()

    def _load_index(self, db: sqlite3.Connection) -> tuple[set[BlockKey], list[BlockKey]]:
        """Take in the indexed blocks whose file is there at its recorded size, least
        recent first; returns them and the stale rows (missing or resized files)."""
        rows = db.execute("SELECT chunk, idx, size FROM blocks ORDER BY used").fetchall()
        known: set[BlockKey] = set()
        stale: list[BlockKey] = []
        for chunk, idx, size in rows:
            key = (str(chunk), int(idx))
            try:
                on_disk = self._path(key).stat().st_size
            except FileNotFoundError:
                on_disk = -1
            if on_disk != size:
                stale.append(key)
                continue
            known.add(key)
            self._sizes[key] = int(size)
            self.total += int(size)
        return known, stale

    def _adopt_unindexed(
        self, known: set[BlockKey], stale: list[BlockKey]
    ) -> list[tuple[str, int, int, float]]:
        """Blocks on disk without a row (the index was lost): adopt them as least recent.

        Returns the rows to add for them; leftovers of unfinished writes are removed.
        """
        adopted: list[tuple[str, int, int, float]] = []
        for sub in self._blocks_dir.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                if path.name.startswith("."):
                    path.unlink(missing_ok=True)  # a write that never finished
                    continue
                chunk, _, index = path.name.partition(".")
                if not index.isdigit():
                    continue
                key = (chunk, int(index))
                if key in known or key in stale:
                    continue
                size = path.stat().st_size
                self._sizes[key] = size
                self._sizes.move_to_end(key, last=False)
                self.total += size
                adopted.append((chunk, int(index), size, 0.0))
        return adopted

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for future in list(self._inflight.values()):
            with contextlib.suppress(BaseException):
                await future
        self._flush_index()
        for key in list(self._open):
            self._close_open(key)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_INDEX_FLUSH_SECONDS)
            self._flush_index()

    def _flush_index(self) -> None:
        if self._db is None:
            return
        if self._new_rows:
            added = [(c, i, size, used) for (c, i), (size, used) in self._new_rows.items()]
            self._new_rows.clear()
            self._db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)", added)
        if not self._touched:
            return
        now = time.time()
        rows = [(now, c, i) for c, i in self._touched if (c, i) in self._sizes]
        self._touched.clear()
        self._db.executemany("UPDATE blocks SET used = ? WHERE chunk = ? AND idx = ?", rows)

    # -- blocks --------------------------------------------------------------------------

    def _path(self, key: BlockKey) -> Path:
        return self._blocks_dir / key[0][:2] / f"{key[0]}.{key[1]}"

    def _file(self, key: BlockKey) -> str:
        """:meth:`_path` as a string, for the system calls of every read."""
        return f"{self._blocks_root}/{key[0][:2]}/{key[0]}.{key[1]}"

    def has(self, chunk: str, index: int) -> bool:
        return (chunk, index) in self._sizes

    def at_hand(self, chunk: str, index: int) -> bool:
        """Whether the block is here without a fetch: in memory (its file may still be
        on the way to disk) or on disk."""
        key = (chunk, index)
        return key in self._memory or key in self._sizes

    def block_path(self, chunk: str, index: int) -> Path | None:
        """Where a cached block's bytes are on disk (None when it is not cached)."""
        key = (chunk, index)
        if key not in self._sizes:
            return None
        self._use(key)
        return self._path(key)

    async def get(self, chunk: str, index: int) -> bytes:
        """Block ``index`` of ``chunk``: from memory, from disk, or fetched once."""
        data = await self.view(chunk, index)
        return data if isinstance(data, bytes) else bytes(data)

    async def view(self, chunk: str, index: int) -> Block:
        """:meth:`get`, but maybe a view of a larger buffer (no copy of its own)."""
        key = (chunk, index)
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            self._use(key)
            self.figures.hits += 1
            return data
        if key in self._sizes:
            try:
                fd, data, signature = self._read_file(key)
            except FileNotFoundError:
                self._forget(key)
            else:
                if (
                    self._checked.get(key) == signature
                    or self._check is None
                    or await self._check(chunk, index, data)
                ):
                    self._use(key)
                    self._remember(key, data)
                    self._keep_open(key, fd, signature)
                    self.figures.hits += 1
                    return data
                os.close(fd)
                log.error("cached block %d of chunk %s is damaged; fetching it again", index, chunk)
                self.figures.corrupt += 1
                self._forget(key)
        future = self._inflight.get(key)
        if future is None:
            self.figures.misses += 1
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            self._spawn(chunk, index, [future])
        return await asyncio.shield(future)

    async def read(self, chunk: str, index: int, start: int, end: int) -> bytes | memoryview:
        """Bytes ``start:end`` of a block: a view of memory, one ``pread`` of a block
        checked before and unchanged since, or else the whole block by :meth:`get`."""
        key = (chunk, index)
        data = self._memory.get(key)
        if data is None:
            part = self._read_open(key, start, end)
            if part is not None:
                return part
            data = await self.view(chunk, index)
        else:
            self._memory.move_to_end(key)
            self._use(key)
            self.figures.hits += 1
        if start == 0 and end >= len(data):
            return data
        # A view: the reply is copied to the kernel from it, not copied once more before.
        return memoryview(data)[start:end]

    def _read_open(self, key: BlockKey, start: int, end: int) -> bytes | None:
        """The bytes from the block's open descriptor, or None when it has none or its
        file is not the one checked any more."""
        if key not in self._sizes:
            return None
        entry = self._open.get(key)
        if entry is None:
            entry = self._reopen(key)
            if entry is None:
                return None
        fd, signature = entry
        try:
            if (
                _signature(os.fstat(fd)) != signature
                or os.stat(self._file(key)).st_ino != (signature[0])
            ):
                raise OSError("changed")
            part = os.pread(fd, end - start, start)
        except OSError:
            self._close_open(key)
            return None
        self._open.move_to_end(key)
        self._use(key)
        self.figures.hits += 1
        return part

    def _reopen(self, key: BlockKey) -> tuple[int, tuple[int, int, int]] | None:
        """Open a block checked before, but closed since (its signature is compared by
        the caller before any byte of it is used)."""
        signature = self._checked.get(key)
        if signature is None:
            return None
        try:
            fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        self._keep_open(key, fd, signature)
        return fd, signature

    def _mark_checked(self, key: BlockKey, signature: tuple[int, int, int]) -> None:
        self._checked[key] = signature
        self._checked.move_to_end(key)
        while len(self._checked) > _CHECKED_BLOCKS:
            self._checked.popitem(last=False)

    def _keep_open(self, key: BlockKey, fd: int, signature: tuple[int, int, int]) -> None:
        self._close_open(key)
        self._mark_checked(key, signature)
        self._open[key] = (fd, signature)
        while len(self._open) > _OPEN_BLOCKS:
            self._close_open(next(iter(self._open)))

    def _close_open(self, key: BlockKey) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            os.close(entry[0])

    def prefetch(self, chunk: str, index: int) -> None:
        """Start fetching a block in the background unless it is here or on its way."""
        self.prefetch_many([(chunk, index)])

    def prefetch_many(self, keys: Iterable[BlockKey]) -> list[asyncio.Future[Block]]:
        """Start fetching the blocks that are neither here nor on their way; returns
        the futures of those started.

        Consecutive blocks of one chunk share a request (up to ``MAX_RUN_BLOCKS``).
        """
        started: list[asyncio.Future[Block]] = []
        run: list[asyncio.Future[Block]] = []
        run_chunk, run_first = "", 0
        loop = asyncio.get_running_loop()
        for key in keys:
            if key in self._sizes or key in self._inflight or key in self._memory:
                continue
            chunk, index = key
            if run and (
                chunk != run_chunk
                or index != run_first + len(run)
                or len(run) >= MAX_RUN_BLOCKS
                or self.fetch_run is None
            ):
                self._spawn(run_chunk, run_first, run)
                run = []
            if not run:
                run_chunk, run_first = chunk, index
            future = loop.create_future()
            self._inflight[key] = future
            # Nobody may ever await a read-ahead: mark its failure as seen.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            run.append(future)
            started.append(future)
        if run:
            self._spawn(run_chunk, run_first, run)
        return started

    async def fill(
        self,
        keys: Iterable[BlockKey],
        parallel: int = 4,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        """Bring blocks into the cache in the background: runs of up to
        ``MAX_RUN_BLOCKS`` blocks, ``parallel`` runs at a time, while ``keep_going()``
        and while they fit in the cache's bound beside its pinned blocks. Failures
        are left to whoever reads the block (it is fetched again on its own)."""
        keys = list(keys)
        room = self.capacity - self.pinned_bytes
        # The blocks of the runs in flight (awaited as they are, never cancelled here:
        # readers may be waiting on them too).
        pending: set[asyncio.Future[Block]] = set()
        for n in range(0, len(keys), MAX_RUN_BLOCKS):
            while len(pending) >= parallel * MAX_RUN_BLOCKS:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not keep_going():
                return
            run = [key for key in keys[n : n + MAX_RUN_BLOCKS] if key not in self._sizes]
            run = run[: max(room // BLOCK_SIZE, 0)]
            room -= len(run) * BLOCK_SIZE
            pending.update(self.prefetch_many(run))
            if room < BLOCK_SIZE:
                break
        if pending:
            await asyncio.wait(pending)

    def _spawn(self, chunk: str, first: int, futures: list[asyncio.Future[Block]]) -> None:
        task = asyncio.create_task(self._fill(chunk, first, futures))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fetch_blocks(self, chunk: str, first: int, count: int) -> Sequence[Block]:
        if self.fetch_run is not None:
            return await self.fetch_run(chunk, first, count)
        return [await self._fetch(chunk, first)]

    async def _fill(self, chunk: str, first: int, futures: list[asyncio.Future[Block]]) -> None:
        keys = [(chunk, first + n) for n in range(len(futures))]
        try:
            blocks = await self._fetch_or_split(chunk, first, futures)
            if blocks is None:
                return
            kept = self._hand_out(keys, futures, blocks)
            signatures = await asyncio.to_thread(self._write_files, kept)
            for (key, data), signature in zip(kept, signatures, strict=True):
                self._add(key, len(data), signature)
        except BaseException as exc:
            self._fail_waiting(chunk, futures, exc)
            # Cancellation and the like must still reach whoever runs this fill.
            if not isinstance(exc, Exception):
                raise
        finally:
            self._drop_inflight(keys, futures)

    async def _fetch_or_split(
        self, chunk: str, first: int, futures: list[asyncio.Future[Block]]
    ) -> Sequence[Block] | None:
        """The blocks of the run, or None when a failed run was filled block by block."""
        try:
            async with self._slots:
                return await self._fetch_blocks(chunk, first, len(futures))
        except Exception as exc:
            if len(futures) == 1:
                raise
            # One block at a time, so that a bad block fails only its own readers.
            log.info("fetching blocks of %s one by one: %s", chunk, exc)
            await asyncio.gather(
                *(self._fill(chunk, first + n, [f]) for n, f in enumerate(futures))
            )
            return None

    def _hand_out(
        self, keys: list[BlockKey], futures: list[asyncio.Future[Block]], blocks: Sequence[Block]
    ) -> list[tuple[BlockKey, Block]]:
        """Answer the waiting readers and remember the blocks in memory; returns the
        non-empty blocks, which still have to go to disk."""
        kept: list[tuple[BlockKey, Block]] = []
        for n, (key, future) in enumerate(zip(keys, futures, strict=True)):
            data = blocks[n] if n < len(blocks) else b""
            if data:
                self.figures.bytes_fetched += len(data)
                self.figures.blocks_fetched += 1
                # Readers go on at once; the copy on disk follows.
                self._remember(key, data)
                kept.append((key, data))
            if not future.done():
                future.set_result(data)
        return kept

    def _fail_waiting(
        self, chunk: str, futures: list[asyncio.Future[Block]], exc: BaseException
    ) -> None:
        """Pass a failed fill on to the readers still waiting (or just log it when all
        of them were answered and only keeping the blocks failed)."""
        failed = [f for f in futures if not f.done()]
        for future in failed:
            future.set_exception(exc)
        if not failed:
            log.warning("cannot keep blocks of %s in the cache: %s", chunk, exc)

    def _drop_inflight(self, keys: list[BlockKey], futures: list[asyncio.Future[Block]]) -> None:
        # Only entries still ours: block-by-block fills of a failed run clear their own.
        for key, future in zip(keys, futures, strict=True):
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def _read_file(self, key: BlockKey) -> tuple[int, bytes, tuple[int, int, int]]:
        """An open descriptor of the block's file, its bytes, and its signature."""
        fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            parts = []
            while chunk := os.read(fd, max(before.st_size, 1 << 20)):
                parts.append(chunk)
        except BaseException:
            os.close(fd)
            raise
        return fd, b"".join(parts), _signature(before)

    def _write_files(self, blocks: list[tuple[BlockKey, Block]]) -> list[tuple[int, int, int]]:
        return [self._write_file(key, data) for key, data in blocks]

    def _write_file(self, key: BlockKey, data: bytes | memoryview) -> tuple[int, int, int]:
        """Write a block's file; returns its signature (renaming keeps it)."""
        path = self._path(key)
        if path.parent not in self._dirs:
            private.make_dir(path.parent)
            self._dirs.add(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}")
        # A new name in the cache's private folder (leftovers go when the cache opens):
        # created 0600, no chmod (an inode change of its own) needed.
        if self.direct_io and buffers.direct_io_ready(data):
            signature = self._write_direct(tmp, data)
            if signature is not None:
                os.replace(tmp, path)
                return signature
        fd = os.open(tmp, _NEW_FILE, private.FILE_MODE)
        try:
            _write_all(fd, data)
            signature = _signature(os.fstat(fd))
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return signature

    def _write_direct(self, tmp: Path, data: bytes | memoryview) -> tuple[int, int, int] | None:
        """Write a block file from aligned memory with direct I/O (the bytes go to the
        disk without a copy into the page cache, see ``buffers.py``); None, with direct
        I/O turned off for the cache, where the file system or disk refuses it."""
        fd = -1
        try:
            fd = os.open(tmp, _NEW_FILE | os.O_DIRECT, private.FILE_MODE)
            _write_all(fd, data)
            return _signature(os.fstat(fd))
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.info("block cache: direct I/O refused (%s); writing through the page cache", exc)
            self.direct_io = False
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    def hold(self, blocks: Iterable[tuple[str, int, Block]]) -> None:
        """Keep blocks known to be right in memory (their files may follow)."""
        for chunk, index, data in blocks:
            self._remember((chunk, index), data)

    async def put_many(self, blocks: Iterable[tuple[str, int, bytes | memoryview]]) -> None:
        """Add blocks known to be right (just committed from local data)."""
        for chunk, index, data in blocks:
            key = (chunk, index)
            if key in self._sizes:
                continue
            signature = await asyncio.to_thread(self._write_file, key, data)
            self._add(key, len(data), signature)

    def _add(self, key: BlockKey, size: int, signature: tuple[int, int, int]) -> None:
        """Index a block just written from bytes known right (its file's signature)."""
        if key in self._sizes:
            self._use(key)
            return
        self._sizes[key] = size
        self.total += size
        self._new_rows[key] = (size, time.time())
        self._mark_checked(key, signature)
        self._evict()

    def _use(self, key: BlockKey) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)
            self._touched.add(key)

    def _remember(self, key: BlockKey, data: Block) -> None:
        if key in self._memory:
            return
        self._memory[key] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > _MEMORY_BYTES and self._memory:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    def _forget(self, key: BlockKey) -> None:
        self._close_open(key)
        self._checked.pop(key, None)
        size = self._sizes.pop(key, None)
        if size is None:
            return
        self.total -= size
        self._new_rows.pop(key, None)
        dropped = self._memory.pop(key, None)
        if dropped is not None:
            self._memory_bytes -= len(dropped)
        self._path(key).unlink(missing_ok=True)
        if self._db is not None:
            self._db.execute("DELETE FROM blocks WHERE chunk = ? AND idx = ?", key)

    def _evict(self) -> None:
        if self.total <= self.capacity:
            return
        for key in list(self._sizes):
            if self.total <= self.capacity:
                break
            if key[0] in self.pinned_chunks:
                continue
            self.figures.evicted_bytes += self._sizes[key]
            self._forget(key)

    def set_pinned(self, chunks: Iterable[str]) -> None:
        self.pinned_chunks = frozenset(chunks)
        self._evict()

    @property
    def pinned_bytes(self) -> int:
        pinned = self.pinned_chunks
        return sum(size for (chunk, _), size in self._sizes.items() if chunk in pinned)

    # -- pins ----------------------------------------------------------------------------

    def pins(self) -> list[Pin]:
        assert self._db is not None
        rows = self._db.execute("SELECT path, version FROM pins ORDER BY path").fetchall()
        return [Pin(str(p), int(v)) for p, v in rows]

    def add_pin(self, path: str, version: int = 0) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT OR REPLACE INTO pins VALUES (?, ?, ?)", (path, version, time.time())
        )

    def remove_pin(self, path: str) -> int:
        """Unpin ``path`` and everything pinned under it; returns how many pins went."""
        assert self._db is not None
        prefix = path.rstrip("/") + "/"
        cursor = self._db.execute(
            "DELETE FROM pins WHERE path = ? OR substr(path, 1, ?) = ?",
            (path, len(prefix), prefix),
        )
        return cursor.rowcount
