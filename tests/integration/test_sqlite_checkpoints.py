"""The SQLite engine copies its write-ahead log back on its worker, never on the event
loop's thread (see ``mediadrive.core.meta.sqlite``)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mediadrive.core.config import DriveSettings
from mediadrive.core.meta import NodeKind, connect
from mediadrive.core.meta import sqlite as engine
from mediadrive.core.meta.sqlite import SqliteMetaStore

WRITES = 400


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    meta = connect(f"sqlite:///{tmp_path}/meta.db", "show")
    assert isinstance(meta, SqliteMetaStore)
    await meta.create_drive(DriveSettings())
    try:
        yield meta
    finally:
        await meta.close()


async def write_folders(meta: SqliteMetaStore, count: int) -> None:
    root = await meta.resolve("/")
    assert root is not None
    for n in range(count):
        await meta.make_node(root.id, "/", f"shot{n:04d}", NodeKind.DIR, 0o755, "ana")


def wal_size(meta: SqliteMetaStore) -> int:
    return Path(f"{meta.path}-wal").stat().st_size


async def test_no_commit_copies_the_log_back(
    store: SqliteMetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 10**9)
    await write_folders(store, WRITES)
    # Past SQLite's own threshold (1,000 pages) without a checkpoint.
    assert wal_size(store) > 4096 * 1000


async def test_the_worker_copies_the_log_back(
    store: SqliteMetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 20)
    threads = []
    checkpoint = store._checkpoint

    def recorded(conn: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        checkpoint(conn)

    monkeypatch.setattr(store, "_checkpoint", recorded)
    await write_folders(store, WRITES)
    assert len(threads) >= WRITES // 20
    assert all(name.startswith("sqlite_") for name in threads), threads
    # The log is reused from its start once copied back: it stays small.
    assert wal_size(store) < 4096 * 300
    root = await store.resolve("/")
    assert root is not None
    assert len(await store.list_dir(root.id)) == WRITES
