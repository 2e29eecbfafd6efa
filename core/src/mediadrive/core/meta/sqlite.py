"""The embedded engine: one SQLite file in WAL mode.

Every statement runs on one worker thread that owns the connection (stdlib
``sqlite3``). A whole transaction -- BEGIN, the body's statements, COMMIT -- runs
there in one hand-off from the event loop: the transaction's methods are
coroutines that finish without suspending, so the body is driven to completion
on the worker instead of hopping threads for every statement.

A read-only transaction whose body never suspends runs at once on the caller's
thread, on a second connection: in WAL mode a reader neither waits for nor blocks
the writer, and a lookup or a listing costs no hand-off to the worker. When that
connection is busy (another process recovering the WAL, say) the read goes to the
worker instead.

A write transaction whose body never suspends runs on the caller's thread too, on a
third connection, when no transaction of this process is under way: a create or a
delete then costs no thread hand-off either. Only when the write lock is not free at
once (another process writes) does it go to the worker, which waits for the lock.

The write-ahead log is copied back into the database on the worker, never on the
event loop's thread: SQLite's own automatic checkpoint runs in whichever commit
crosses its threshold, which would then hold the loop for the checkpoint's disk
syncs (milliseconds, every few dozen writes). Every ``CHECKPOINT_EVERY`` write
transactions the next one goes to the worker and checkpoints there after its
commit, with this process's other writes waiting (without holding the loop) so
that the log is copied back whole and starts over from its beginning.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from .. import private
from ..errors import ConfigError, StoreUnavailable
from . import register
from .schema import SQLITE
from .sql import Row, SqlMetaStore, Tx, landed

T = TypeVar("T")


def check_sqlite_url(url: str) -> None:
    """Accept ``sqlite:///ABSOLUTE/PATH`` only: a relative path would depend on the cwd."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(f"metadata URL {url!r} must be sqlite:///ABSOLUTE/PATH")


class _SqliteTx:
    """Statements on the worker thread's connection; each call completes at once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._conn.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]


class _ThreadTx:
    """The same statements, each sent to the worker thread from the event loop."""

    def __init__(self, store: SqliteMetaStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._sync = _SqliteTx(conn)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._store._on_worker(_finish, self._sync.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._store._on_worker(_finish, self._sync.executemany(sql, list(rows)))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._store._on_worker(_finish, self._sync.fetchone(sql, params))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._store._on_worker(_finish, self._sync.fetchall(sql, params))


class _Busy(Exception):
    """The reading connection could not run a transaction at once."""


# How long a read on the event loop's thread may wait for a lock before it goes to
# the worker (which waits as long as busy_timeout says).
_READER_BUSY_SECONDS = 0.05


class _Suspended(Exception):
    """A transaction body waited on something other than its transaction."""


def _finish(step: Awaitable[T]) -> T:
    """Run an awaitable that never suspends to its result, synchronously."""
    steps = step.__await__()
    try:
        steps.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    except RuntimeError as err:
        # asyncio refuses to work off the event loop's thread.
        if "event loop" not in str(err):
            raise
        raise _Suspended(str(err)) from err
    steps.close()
    raise _Suspended("a SQLite transaction body may only await its own statements")


log = logging.getLogger(__name__)

# Write transactions between two checkpoints (about SQLite's own threshold of 1,000
# pages, for commits of a few pages).
CHECKPOINT_EVERY = 200


class SqliteMetaStore(SqlMetaStore):
    dialect = SQLITE

    def __init__(self, url: str, drive: str) -> None:
        super().__init__(url, drive)
        # sqlite:////abs/path (four slashes) names /abs/path too.
        self.path = Path("/" + urlsplit(url).path.lstrip("/"))
        self._conn: sqlite3.Connection | None = None
        self._may_create = False
        # One thread owns the connection, so this process's transactions run one at
        # a time; other processes queue on SQLite's own locks (busy_timeout).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._lock = asyncio.Lock()
        # Read and write transactions on the event loop's thread (opened once the
        # worker's connection proved the file is there).
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        # Write transactions so far, and whether the next one checkpoints (see the
        # module doc).
        self._writes = 0
        self._checkpoint_due = False

    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def migrate(self) -> int:
        # Making the schema (as create_drive does) is the one call that may make the
        # file; every other call needs it to exist, and leaves nothing when it does not.
        self._may_create = True
        return await super().migrate()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.parent.is_dir():
                raise StoreUnavailable(f"metadata folder {self.path.parent} does not exist")
            if not self._may_create and not self.path.exists():
                raise StoreUnavailable(
                    f"metadata file {self.path} is missing (deleted or moved?); nothing was changed"
                )
            mode = "rwc" if self._may_create else "rw"
            try:
                # Made 0600 before SQLite creates it: its -wal and -shm files take
                # the database's mode.
                private.touch(self.path)
                conn = sqlite3.connect(
                    f"{self.path.as_uri()}?mode={mode}",
                    uri=True,
                    isolation_level=None,
                    timeout=30,
                    cached_statements=256,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            except (sqlite3.Error, OSError) as err:
                raise StoreUnavailable(f"cannot open metadata file {self.path}: {err}") from None
            self._conn = conn
        return self._conn

    def _begin(self, write: bool) -> sqlite3.Connection:
        conn = self._connection()
        # IMMEDIATE takes the write lock up front, so two writers queue on
        # busy_timeout instead of deadlocking on a lock upgrade.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return conn

    def _end(self, conn: sqlite3.Connection, ok: bool) -> None:
        try:
            if ok:
                conn.execute("COMMIT")
        finally:
            # A failed COMMIT leaves the transaction open; never carry it over.
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _whole(self, body: Callable[[Tx], Awaitable[T]], write: bool) -> T:
        conn = self._begin(write)
        try:
            result = _finish(body(_SqliteTx(conn)))
        except BaseException:
            self._end(conn, ok=False)
            raise
        if write:
            self._end_write(conn)
        else:
            self._end(conn, ok=True)
        return result

    def _end_write(self, conn: sqlite3.Connection) -> None:
        """Commit a write transaction on the worker, then checkpoint if one is due."""
        self._end(conn, ok=True)
        self._wrote()
        if self._checkpoint_due:
            self._checkpoint(conn)

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % CHECKPOINT_EVERY == 0:
            self._checkpoint_due = True

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the log back into the database (on the worker, its lock held)."""
        self._checkpoint_due = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as err:
            # The next one copies what this one could not.
            log.info("checkpoint of %s put off: %s", self.path, err)

    def _loop_connection(self, pragma: str) -> sqlite3.Connection:
        """A connection for transactions run on the event loop's thread: it waits at most
        briefly for a lock (raising _Busy), so the loop is never held up."""
        try:
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=rw",
                uri=True,
                isolation_level=None,
                timeout=_READER_BUSY_SECONDS,
                cached_statements=256,
                check_same_thread=False,
            )
            conn.execute(pragma)
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as err:
            raise _Busy(str(err)) from err
        return conn

    def _begin_writing(self) -> sqlite3.Connection:
        """This thread's writing connection, a write transaction begun on it; _Busy
        when the lock is not free at once (or the connection is in a transaction)."""
        conn = self._writer
        if conn is None:
            conn = self._writer = self._loop_connection("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise _Busy(str(err)) from err
        return conn

    def _write_here(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        """Run a write transaction on this thread's writing connection; raises
        _Suspended (body awaits something else) or _Busy (no write lock at once)."""
        conn = self._begin_writing()
        try:
            result = _finish(body(_SqliteTx(conn)))
        except sqlite3.OperationalError as err:
            self._end(conn, ok=False)
            if not self._retryable(err) and "busy" not in str(err):
                raise
            raise _Busy(str(err)) from err
        except BaseException:
            self._end(conn, ok=False)
            raise
        try:
            self._end(conn, ok=True)
        except sqlite3.OperationalError as err:
            if not self._retryable(err) and "busy" not in str(err):
                raise
            raise _Busy(str(err)) from err
        self._wrote()
        return result

    def _read_here(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        """Run a read transaction on this thread's connection; raises _Suspended (body
        awaits something else) or _Busy (the connection could not read at once)."""
        conn = self._reader
        if conn is None:
            conn = self._reader = self._loop_connection("PRAGMA query_only=ON")
        try:
            conn.execute("BEGIN")
        except sqlite3.OperationalError as err:
            raise _Busy(str(err)) from err
        try:
            return _finish(body(_SqliteTx(conn)))
        except sqlite3.OperationalError as err:
            if not self._retryable(err) and "busy" not in str(err):
                raise
            raise _Busy(str(err)) from err
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    async def _attempt_single(self, body: Callable[[Tx], Awaitable[T]], write: bool) -> T:
        # One statement is its own read transaction: no BEGIN and ROLLBACK around it.
        conn = self._reader
        if not write and conn is not None and not conn.in_transaction:
            try:
                return _finish(body(_SqliteTx(conn)))
            except _Suspended:
                pass
            except sqlite3.OperationalError as err:
                if not self._retryable(err) and "busy" not in str(err):
                    raise
        return await self._attempt(body, write)

    async def _write_here_until(
        self, body: Callable[[Tx], Awaitable[T]], until: Awaitable[Any]
    ) -> T:
        """_write_here with the transaction left open until ``until`` is done (see
        landed). Writes meanwhile find this connection taken and go to the worker,
        whose connection waits for the lock."""
        conn = self._begin_writing()
        try:
            result = _finish(body(_SqliteTx(conn)))
            await landed(until)
        except BaseException:
            self._end(conn, ok=False)
            raise
        self._end(conn, ok=True)
        self._wrote()
        return result

    async def _attempt(
        self, body: Callable[[Tx], Awaitable[T]], write: bool, until: Awaitable[Any] | None = None
    ) -> T:
        if until is not None:
            if self._conn is not None and not self._lock.locked():
                try:
                    return await self._write_here_until(body, until)
                except (_Suspended, _Busy):
                    pass
            return await super()._attempt(body, write, until)
        if not write and self._conn is not None:
            try:
                return self._read_here(body)
            except (_Suspended, _Busy):
                pass
        # With the lock free the worker is idle, and nothing runs here until this
        # transaction (which never suspends) is over. A checkpoint is the worker's.
        if (
            write
            and self._conn is not None
            and not self._lock.locked()
            and not self._checkpoint_due
        ):
            try:
                return self._write_here(body)
            except (_Suspended, _Busy):
                pass
        async with self._lock:
            try:
                return await self._on_worker(self._whole, body, write)
            except _Suspended:
                pass
        # A body that awaits something else runs statement by statement instead.
        return await super()._attempt(body, write)

    @asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[_ThreadTx]:
        async with self._lock:
            conn = await self._on_worker(self._begin, write)
            try:
                yield _ThreadTx(self, conn)
            except BaseException:
                await self._on_worker(self._end, conn, False)
                raise
            if write:
                await self._on_worker(self._end_write, conn)
            else:
                await self._on_worker(self._end, conn, True)

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    async def close(self) -> None:
        for here in (self._reader, self._writer):
            if here is not None:
                here.close()
        self._reader = self._writer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._on_worker(conn.close)
        # A closed store reconnects on its next use, on a fresh worker.
        self._worker.shutdown(wait=False)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sqlite")


# The class is the factory: registering it makes mypy check it against MetaStore.
register("sqlite", SqliteMetaStore, check_sqlite_url)
