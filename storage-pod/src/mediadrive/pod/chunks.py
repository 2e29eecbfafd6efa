"""The chunks one pod keeps on its volume, and the index saying how it keeps them.

Files: ``DATA/drives/DRIVE/chunks/ab/abcdef...``, written to a temporary file,
fsynced, renamed and the folder fsynced before a put returns. The index
(``DATA/index.sqlite``) records for each chunk its size, whether it is *held*
(written here, not published: never evicted, maybe with a TTL) or *cached* (a
copy of a published chunk: evicted least recently used first), when it was last
used and when a held chunk's TTL ends. At start the index is checked against the
files: a row whose file is gone goes, and a file the index does not know is
held, so a crash between the rename and the index update loses no held chunk.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from mediadrive.core import private
from mediadrive.core.durability import fsync_dir, write_atomically
from mediadrive.core.units import size_text

T = TypeVar("T")
Holding = Literal["held", "cached"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    drive TEXT NOT NULL,
    id TEXT NOT NULL,
    size INTEGER NOT NULL,
    held INTEGER NOT NULL,
    expires REAL,
    used REAL NOT NULL,
    PRIMARY KEY (drive, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_lru ON chunks (held, used);
"""


class PodFull(Exception):
    """No room for a chunk without evicting held data; the message says how much."""


@dataclass(frozen=True)
class Entry:
    drive: str
    id: str
    size: int
    held: bool
    expires: float | None

    @property
    def holding(self) -> Holding:
        return "held" if self.held else "cached"


def merge_expiry(old: float | None, new: float | None) -> float | None:
    """A chunk held without a TTL stays so; two TTLs: the later end."""
    if old is None or new is None:
        return None
    return max(old, new)


class ChunkStore:
    """The chunks on this pod's volume; ``capacity`` bounds held + cached bytes."""

    def __init__(
        self, root: Path, capacity: int, on_evict: Callable[[int], None] | None = None
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.bytes_held = 0
        self.bytes_cached = 0
        self._reserved = 0
        self._on_evict = on_evict or (lambda n: None)
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="pod-index")
        self._db: sqlite3.Connection | None = None
        self._room = asyncio.Lock()
        # (drive, id) -> its lock and how many callers hold or wait for it.
        self._key_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        self._used: dict[tuple[str, str], float] = {}

    # -- opening -----------------------------------------------------------------------

    async def open(self) -> None:
        await self._index(self._open)

    def _open(self) -> None:
        private.make_dir(self.root / "drives")
        index = self.root / "index.sqlite"
        private.touch(index)
        db = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        self._reconcile(db)
        totals = db.execute("SELECT held, COALESCE(SUM(size), 0) FROM chunks GROUP BY held")
        for held, total in totals:
            if held:
                self.bytes_held = int(total)
            else:
                self.bytes_cached = int(total)

    def _files(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        drives = self.root / "drives"
        for drive in os.scandir(drives):
            chunks = Path(drive.path) / "chunks"
            if not chunks.is_dir():
                continue
            for fan in os.scandir(chunks):
                for entry in os.scandir(fan.path):
                    if entry.name.endswith(".tmp"):
                        # A put that never finished: nobody was told it was stored.
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                        continue
                    found[(drive.name, entry.name)] = entry.stat().st_size
        return found

    def _reconcile(self, db: sqlite3.Connection) -> None:
        files = self._files()
        rows = {(d, i): s for d, i, s in db.execute("SELECT drive, id, size FROM chunks")}
        now = time.time()
        db.execute("BEGIN")
        for key in rows.keys() - files.keys():
            db.execute("DELETE FROM chunks WHERE drive = ? AND id = ?", key)
        for key in files.keys() - rows.keys():
            db.execute(
                "INSERT INTO chunks (drive, id, size, held, expires, used) "
                "VALUES (?, ?, ?, 1, NULL, ?)",
                (*key, files[key], now),
            )
        for key in files.keys() & rows.keys():
            if files[key] != rows[key]:
                db.execute(
                    "UPDATE chunks SET size = ? WHERE drive = ? AND id = ?", (files[key], *key)
                )
        db.execute("COMMIT")

    async def close(self) -> None:
        if self._db is not None:
            await self.flush_uses()

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._index(shut)
        self._db_thread.shutdown(wait=True)

    # -- plumbing ----------------------------------------------------------------------

    async def _index(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn)

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "the chunk store is not open"
        return self._db

    def drive_dir(self, drive: str) -> Path:
        return self.root / "drives" / drive

    def path(self, drive: str, chunk_id: str) -> Path:
        return self.drive_dir(drive) / "chunks" / chunk_id[:2] / chunk_id

    @contextlib.asynccontextmanager
    async def _exclusive(self, drive: str, chunk_id: str) -> AsyncIterator[None]:
        """One put or delete of a chunk at a time."""
        key = (drive, chunk_id)
        lock, users = self._key_locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._key_locks[key]

    # -- drives ------------------------------------------------------------------------

    def drive_exists(self, drive: str) -> bool:
        return self.drive_dir(drive).is_dir()

    async def create_drive(self, drive: str) -> None:
        def make() -> None:
            private.make_dir(self.drive_dir(drive) / "chunks")
            fsync_dir(self.root / "drives")

        await asyncio.to_thread(make)

    # -- reading -----------------------------------------------------------------------

    async def lookup(self, drive: str, chunk_id: str) -> Entry | None:
        def find() -> Entry | None:
            row = (
                self._conn()
                .execute(
                    "SELECT size, held, expires FROM chunks WHERE drive = ? AND id = ?",
                    (drive, chunk_id),
                )
                .fetchone()
            )
            return None if row is None else Entry(drive, chunk_id, row[0], bool(row[1]), row[2])

        return await self._index(find)

    async def touch(self, drive: str, chunk_id: str) -> None:
        """Note a use of a chunk. Kept in memory and written in batches (before an
        eviction picks its victims, on :meth:`flush_uses` and on close): an index
        write per read would cost a sync each."""
        self._used[(drive, chunk_id)] = time.time()

    async def flush_uses(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}

        def write() -> None:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany(
                "UPDATE chunks SET used = ? WHERE drive = ? AND id = ?",
                [(when, drive, cid) for (drive, cid), when in used.items()],
            )
            db.execute("COMMIT")

        await self._index(write)

    async def holding(self, drive: str, chunk_ids: Sequence[str]) -> dict[str, Holding]:
        def find() -> dict[str, Holding]:
            found: dict[str, Holding] = {}
            db = self._conn()
            for chunk_id in chunk_ids:
                row = db.execute(
                    "SELECT held FROM chunks WHERE drive = ? AND id = ?", (drive, chunk_id)
                ).fetchone()
                if row is not None:
                    found[chunk_id] = "held" if row[0] else "cached"
            return found

        return await self._index(find)

    async def list(self, drive: str, prefix: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` ids of a drive starting with ``prefix``, after ``after``, ascending."""

        def page() -> list[str]:
            # Ids starting with the prefix are a contiguous run from the prefix on:
            # the first rows from there are the matching ones, if any.
            rows = self._conn().execute(
                "SELECT id FROM chunks WHERE drive = ? AND id > ? AND id >= ? ORDER BY id LIMIT ?",
                (drive, after, prefix, limit),
            )
            return [r[0] for r in rows if r[0].startswith(prefix)]

        return await self._index(page)

    async def held_chunks(self) -> builtins.list[Entry]:
        def rows() -> builtins.list[Entry]:
            return [
                Entry(d, i, s, True, e)
                for d, i, s, e in self._conn().execute(
                    "SELECT drive, id, size, expires FROM chunks WHERE held = 1 ORDER BY drive, id"
                )
            ]

        return await self._index(rows)

    # -- writing -----------------------------------------------------------------------

    async def put(
        self, drive: str, chunk_id: str, data: bytes, *, held: bool, ttl: float | None = None
    ) -> None:
        """Store ``data`` (already verified against ``chunk_id``); PodFull if it cannot fit."""
        expires = None if ttl is None else time.time() + ttl
        async with self._exclusive(drive, chunk_id):
            entry = await self.lookup(drive, chunk_id)
            if entry is not None:
                if self.path(drive, chunk_id).exists():
                    await self._update(entry, held=held, expires=expires)
                    return
                await self._remove(drive, chunk_id)  # a row whose file went: start over
            await self._store_new(drive, chunk_id, data, held=held, expires=expires)

    async def _update(self, entry: Entry, *, held: bool, expires: float | None) -> None:
        if entry.held and held:
            new = merge_expiry(entry.expires, expires)
            await self._set(entry, held=True, expires=new)
        elif held:
            async with self._room:
                if self.bytes_held + self._reserved + entry.size > self.capacity:
                    raise PodFull(self._full_message(entry.size))
                self.bytes_cached -= entry.size
                self.bytes_held += entry.size
            await self._set(entry, held=True, expires=expires)
        else:
            await self.touch(entry.drive, entry.id)

    async def _set(self, entry: Entry, *, held: bool, expires: float | None) -> None:
        await self._index(
            lambda: self._conn().execute(
                "UPDATE chunks SET held = ?, expires = ?, used = ? WHERE drive = ? AND id = ?",
                (int(held), expires, time.time(), entry.drive, entry.id),
            )
        )

    def _full_message(self, size: int) -> str:
        return (
            f"the storage pod is full: {size_text(size)} more would pass its capacity of "
            f"{size_text(self.capacity)} ({size_text(self.bytes_held)} held)"
        )

    async def _admit(self, size: int) -> None:
        """Reserve room for ``size`` bytes, evicting cached chunks; PodFull if held data
        (and writes in flight) leave no room."""
        async with self._room:
            if self.bytes_held + self._reserved + size > self.capacity:
                raise PodFull(self._full_message(size))
            while self.bytes_held + self.bytes_cached + self._reserved + size > self.capacity:
                if not await self._evict_some():
                    raise PodFull(self._full_message(size))
            self._reserved += size

    async def _evict_some(self) -> bool:
        await self.flush_uses()
        victims = await self._index(
            lambda: (
                self._conn()
                .execute("SELECT drive, id, size FROM chunks WHERE held = 0 ORDER BY used LIMIT 16")
                .fetchall()
            )
        )
        for drive, chunk_id, size in victims:
            if await self._remove(drive, chunk_id, only_cached=True):
                self._on_evict(size)
            if self.bytes_held + self.bytes_cached + self._reserved <= self.capacity:
                break
        return bool(victims)

    async def _store_new(
        self, drive: str, chunk_id: str, data: bytes, *, held: bool, expires: float | None
    ) -> None:
        size = len(data)
        await self._admit(size)
        try:
            await asyncio.to_thread(self._write, self.path(drive, chunk_id), data)
            await self._index(
                lambda: self._conn().execute(
                    "INSERT OR REPLACE INTO chunks (drive, id, size, held, expires, used) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (drive, chunk_id, size, int(held), expires, time.time()),
                )
            )
        finally:
            self._reserved -= size
        if held:
            self.bytes_held += size
        else:
            self.bytes_cached += size

    def _write(self, final: Path, data: bytes) -> None:
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            write_atomically(final, data, tmp)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PodFull(f"the storage pod's volume is full ({err.strerror})") from None
            raise

    async def _remove(
        self,
        drive: str,
        chunk_id: str,
        *,
        only_cached: bool = False,
        expired_at: float | None = None,
    ) -> bool:
        """Remove a chunk (only if cached, or only if a held one's TTL ended by ``expired_at``)."""

        def spared(held: bool, expires: float | None) -> bool:
            if only_cached:
                return held
            if expired_at is not None:
                return not held or expires is None or expires >= expired_at
            return False

        def drop() -> tuple[int, bool] | None:
            db = self._conn()
            row = db.execute(
                "SELECT size, held, expires FROM chunks WHERE drive = ? AND id = ?",
                (drive, chunk_id),
            ).fetchone()
            if row is None or spared(bool(row[1]), row[2]):
                return None
            # The file goes first: a row without a file is dropped at start, while a
            # file without a row would come back as held.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(drive, chunk_id))
            db.execute("DELETE FROM chunks WHERE drive = ? AND id = ?", (drive, chunk_id))
            return int(row[0]), bool(row[1])

        removed = await self._index(drop)
        if removed is None:
            return False
        size, was_held = removed
        if was_held:
            self.bytes_held -= size
        else:
            self.bytes_cached -= size
        return True

    async def delete(self, drive: str, chunk_id: str) -> bool:
        async with self._exclusive(drive, chunk_id):
            return await self._remove(drive, chunk_id)

    async def release(self, drive: str, chunk_ids: Iterable[str]) -> None:
        ids = list(chunk_ids)

        def publish() -> int:
            db = self._conn()
            moved = 0
            db.execute("BEGIN")
            for chunk_id in ids:
                row = db.execute(
                    "SELECT size FROM chunks WHERE drive = ? AND id = ? AND held = 1",
                    (drive, chunk_id),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE chunks SET held = 0, expires = NULL WHERE drive = ? AND id = ?",
                        (drive, chunk_id),
                    )
                    moved += int(row[0])
            db.execute("COMMIT")
            return moved

        async with self._room:
            moved = await self._index(publish)
            self.bytes_held -= moved
            self.bytes_cached += moved

    async def sweep_expired(self, now: float | None = None) -> int:
        """Remove held chunks whose TTL has ended; returns how many went."""
        cutoff = time.time() if now is None else now
        expired = await self._index(
            lambda: (
                self._conn()
                .execute(
                    "SELECT drive, id FROM chunks WHERE held = 1 AND expires IS NOT NULL "
                    "AND expires < ?",
                    (cutoff,),
                )
                .fetchall()
            )
        )
        gone = 0
        for drive, chunk_id in expired:
            # Checked again under the chunk's lock: a put may have renewed it meanwhile.
            async with self._exclusive(drive, chunk_id):
                gone += await self._remove(drive, chunk_id, expired_at=cutoff)
        return gone
