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

A block checked once stays open (up to ``_OPEN_BLOCKS`` of them, least recently used
closed first): a small read of it is one ``pread`` of the bytes asked for, as long as
the file is the one checked, unchanged since (same inode, size and modification
time). Anything else reads the whole block and checks it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mediadrive.core import private

log = logging.getLogger(__name__)

Fetch = Callable[[str, int], Awaitable[bytes]]
# Blocks ``first`` .. ``first + count - 1`` of a chunk in one request, each verified.
FetchRun = Callable[[str, int, int], Awaitable[list[bytes]]]
# Whether block bytes read back from disk are still what was fetched.
Check = Callable[[str, int, bytes], Awaitable[bool]]
BlockKey = tuple[str, int]

# Consecutive missing blocks of one chunk asked for together go out as one ranged
# request of at most this many blocks (several such requests run side by side).
MAX_RUN_BLOCKS = 8

# Recently used blocks also stay in memory: a sequential reader asks for the same
# block several times when the kernel splits its requests.
_MEMORY_BYTES = 64 << 20
_INDEX_FLUSH_SECONDS = 5.0
# Checked blocks kept open for small reads.
_OPEN_BLOCKS = 256

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
        self._sizes: OrderedDict[BlockKey, int] = OrderedDict()
        self._memory: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._memory_bytes = 0
        # Checked blocks: an open descriptor and the (inode, size, mtime) checked.
        self._open: OrderedDict[BlockKey, tuple[int, tuple[int, int, int]]] = OrderedDict()
        self._inflight: dict[BlockKey, asyncio.Future[bytes]] = {}
        self._touched: set[BlockKey] = set()
        # Index rows of blocks added since the last flush (a crash loses only rows:
        # blocks on disk without one are adopted when the cache opens).
        self._new_rows: dict[BlockKey, tuple[int, float]] = {}
        self._dirs: set[Path] = set()
        self._db: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._fills: set[asyncio.Task[None]] = set()
        self.total = 0
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

    def has(self, chunk: str, index: int) -> bool:
        return (chunk, index) in self._sizes

    def block_path(self, chunk: str, index: int) -> Path | None:
        """Where a cached block's bytes are on disk (None when it is not cached)."""
        key = (chunk, index)
        if key not in self._sizes:
            return None
        self._use(key)
        return self._path(key)

    async def get(self, chunk: str, index: int) -> bytes:
        """Block ``index`` of ``chunk``: from memory, from disk, or fetched once."""
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
                if self._check is None or await self._check(chunk, index, data):
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

    async def read(self, chunk: str, index: int, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of a block: a slice of memory, one ``pread`` of a block
        checked before and unchanged since, or else the whole block by :meth:`get`."""
        key = (chunk, index)
        data = self._memory.get(key)
        if data is None:
            part = self._read_open(key, start, end)
            if part is not None:
                return part
            data = await self.get(chunk, index)
        else:
            self._memory.move_to_end(key)
            self._use(key)
            self.figures.hits += 1
        return data[start:end]

    def _read_open(self, key: BlockKey, start: int, end: int) -> bytes | None:
        """The bytes from the block's open descriptor, or None when it has none or its
        file is not the one checked any more."""
        entry = self._open.get(key)
        if entry is None or key not in self._sizes:
            return None
        fd, signature = entry
        try:
            if (
                _signature(os.fstat(fd)) != signature
                or os.stat(self._path(key)).st_ino != (signature[0])
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

    def _keep_open(self, key: BlockKey, fd: int, signature: tuple[int, int, int]) -> None:
        self._close_open(key)
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

    def prefetch_many(self, keys: Iterable[BlockKey]) -> None:
        """Start fetching the blocks that are neither here nor on their way.

        Consecutive blocks of one chunk share a request (up to ``MAX_RUN_BLOCKS``).
        """
        run: list[asyncio.Future[bytes]] = []
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
        if run:
            self._spawn(run_chunk, run_first, run)

    def _spawn(self, chunk: str, first: int, futures: list[asyncio.Future[bytes]]) -> None:
        task = asyncio.create_task(self._fill(chunk, first, futures))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fetch_blocks(self, chunk: str, first: int, count: int) -> list[bytes]:
        if self.fetch_run is not None:
            return await self.fetch_run(chunk, first, count)
        return [await self._fetch(chunk, first)]

    async def _fill(self, chunk: str, first: int, futures: list[asyncio.Future[bytes]]) -> None:
        keys = [(chunk, first + n) for n in range(len(futures))]
        try:
            blocks = await self._fetch_or_split(chunk, first, futures)
            if blocks is None:
                return
            kept = self._hand_out(keys, futures, blocks)
            await asyncio.to_thread(self._write_files, kept)
            for key, data in kept:
                self._add(key, len(data))
        except BaseException as exc:
            self._fail_waiting(chunk, futures, exc)
            # Cancellation and the like must still reach whoever runs this fill.
            if not isinstance(exc, Exception):
                raise
        finally:
            self._drop_inflight(keys, futures)

    async def _fetch_or_split(
        self, chunk: str, first: int, futures: list[asyncio.Future[bytes]]
    ) -> list[bytes] | None:
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
        self, keys: list[BlockKey], futures: list[asyncio.Future[bytes]], blocks: list[bytes]
    ) -> list[tuple[BlockKey, bytes]]:
        """Answer the waiting readers and remember the blocks in memory; returns the
        non-empty blocks, which still have to go to disk."""
        kept: list[tuple[BlockKey, bytes]] = []
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
        self, chunk: str, futures: list[asyncio.Future[bytes]], exc: BaseException
    ) -> None:
        """Pass a failed fill on to the readers still waiting (or just log it when all
        of them were answered and only keeping the blocks failed)."""
        failed = [f for f in futures if not f.done()]
        for future in failed:
            future.set_exception(exc)
        if not failed:
            log.warning("cannot keep blocks of %s in the cache: %s", chunk, exc)

    def _drop_inflight(self, keys: list[BlockKey], futures: list[asyncio.Future[bytes]]) -> None:
        # Only entries still ours: block-by-block fills of a failed run clear their own.
        for key, future in zip(keys, futures, strict=True):
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def _read_file(self, key: BlockKey) -> tuple[int, bytes, tuple[int, int, int]]:
        """An open descriptor of the block's file, its bytes, and its signature."""
        fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            parts = []
            while chunk := os.read(fd, max(before.st_size, 1 << 20)):
                parts.append(chunk)
        except BaseException:
            os.close(fd)
            raise
        return fd, b"".join(parts), _signature(before)

    def _write_files(self, blocks: list[tuple[BlockKey, bytes]]) -> None:
        for key, data in blocks:
            self._write_file(key, data)

    def _write_file(self, key: BlockKey, data: bytes | memoryview) -> None:
        path = self._path(key)
        if path.parent not in self._dirs:
            private.make_dir(path.parent)
            self._dirs.add(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}")
        with open(tmp, "wb", opener=private.opener) as f:
            f.write(data)
        os.replace(tmp, path)

    async def put_many(self, blocks: Iterable[tuple[str, int, bytes | memoryview]]) -> None:
        """Add blocks known to be right (just committed from local data)."""
        for chunk, index, data in blocks:
            key = (chunk, index)
            if key in self._sizes:
                continue
            await asyncio.to_thread(self._write_file, key, data)
            self._add(key, len(data))

    def _add(self, key: BlockKey, size: int) -> None:
        if key in self._sizes:
            self._use(key)
            return
        self._sizes[key] = size
        self.total += size
        self._new_rows[key] = (size, time.time())
        self._evict()

    def _use(self, key: BlockKey) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)
            self._touched.add(key)

    def _remember(self, key: BlockKey, data: bytes) -> None:
        if key in self._memory:
            return
        self._memory[key] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > _MEMORY_BYTES and self._memory:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    def _forget(self, key: BlockKey) -> None:
        self._close_open(key)
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
