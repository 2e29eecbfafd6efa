"""The embedded engine: one SQLite file in WAL mode."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite

from ..errors import StoreUnavailable
from .schema import SQLITE
from .sql import Row, SqlMetaStore


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cursor = await self._conn.execute(sql, params)
        row = await cursor.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(sql, params)
        return [tuple(r) for r in await cursor.fetchall()]


class SqliteMetaStore(SqlMetaStore):
    dialect = SQLITE

    def __init__(self, url: str, drive: str) -> None:
        super().__init__(url, drive)
        self.path = Path(urlsplit(url).path)
        self._conn: aiosqlite.Connection | None = None
        # One connection serves this process; its transactions must not interleave.
        self._lock = asyncio.Lock()

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            if not self.path.parent.is_dir():
                raise StoreUnavailable(f"metadata folder {self.path.parent} does not exist")
            try:
                conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=NORMAL")
                await conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as err:
                raise StoreUnavailable(f"cannot open metadata file {self.path}: {err}") from None
            self._conn = conn
        return self._conn

    @asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            conn = await self._connection()
            # IMMEDIATE takes the write lock up front, so two writers queue on
            # busy_timeout instead of deadlocking on a lock upgrade.
            await conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
