"""PostgreSQL (and CockroachDB, which speaks its protocol) through a psycopg 3 pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..credentials import redact_url
from ..errors import ConfigError, StoreUnavailable
from . import register
from .schema import POSTGRES
from .sql import Row, SqlMetaStore, Tx

T = TypeVar("T")

# CockroachDB speaks the PostgreSQL protocol; its scheme only says which server it is.
SCHEMES = ("postgresql", "postgres", "cockroachdb")


def check_postgres_url(url: str) -> None:
    """Accept a PostgreSQL/CockroachDB URL that names a host."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"metadata URL {redact_url(url)!r} must start with postgresql:// or cockroachdb://"
        )
    if not parts.hostname:
        raise ConfigError(f"metadata URL {redact_url(url)!r} names no host")


def _first_line(err: BaseException) -> str:
    # psycopg's messages can quote the connection string, password included.
    lines = str(err).strip().splitlines()
    return redact_url(lines[0]) if lines else type(err).__name__


def _pg(sql: str) -> str:
    # The shared SQL is written with qmark placeholders and never contains a literal '?'.
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(_pg(sql), params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cursor:
            await cursor.executemany(_pg(sql), list(rows))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cursor = await self._conn.execute(_pg(sql), params)
        return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(_pg(sql), params)
        return await cursor.fetchall()


class PostgresMetaStore(SqlMetaStore):
    dialect = POSTGRES

    def __init__(self, url: str, drive: str, pool_size: int = 8) -> None:
        super().__init__(url, drive)
        self._conninfo = url.replace("cockroachdb://", "postgresql://", 1)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        # Callers that find no pool at the same moment must not each open one.
        self._opening = asyncio.Lock()

    async def _get_pool(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open_pool()
            return self._pool

    async def _open_pool(self) -> AsyncConnectionPool:
        # One direct attempt first: the pool would retry a dead server for its whole
        # timeout, where a person wants the reason at once.
        try:
            probe = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=10)
        except psycopg.OperationalError as err:
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self._where()}: {_first_line(err)}"
            ) from None
        await probe.close()
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=15,
            kwargs={"autocommit": True, "connect_timeout": 10},
            configure=self._configure,
        )
        try:
            await pool.open(wait=True, timeout=15)
        except (PoolTimeout, psycopg.OperationalError) as err:
            await pool.close()
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self._where()}: {_first_line(err)}"
            ) from None
        return pool

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        # Serializable everywhere: CockroachDB's only level, and the one that makes
        # the commit/GC race safe without locks.
        await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
        # The same for a statement run alone (autocommit), without a BEGIN.
        await conn.execute("SET default_transaction_isolation TO 'serializable'")

    @asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[_PgTx]:
        pool = await self._get_pool()
        async with pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    async def _attempt_single(self, body: Callable[[Tx], Awaitable[T]], write: bool) -> T:
        # The pool's connections autocommit: one statement alone is its own
        # (serializable) transaction, one round trip instead of three (BEGIN, it, COMMIT).
        pool = await self._get_pool()
        async with pool.connection() as conn:
            return await body(_PgTx(conn))

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(
            exc,
            pg_errors.SerializationFailure | pg_errors.DeadlockDetected | pg_errors.UniqueViolation,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# The class is the factory: registering it makes mypy check it against MetaStore.
for _scheme in SCHEMES:
    register(_scheme, PostgresMetaStore, check_postgres_url)
