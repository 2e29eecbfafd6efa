"""The metadata store over SQL, shared by every engine.

Engines provide a transaction and say which errors are worth a retry; this class
holds all the SQL. The SQL sticks to what SQLite, PostgreSQL and CockroachDB all
run: no LISTEN/NOTIFY, no advisory locks, counters kept in rows, and every write
wrapped in a transaction that is retried when the database reports a
serialization conflict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import posixpath
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from enum import Enum
from typing import Any, Protocol, TypeVar

from ..config import ConflictPolicy, DriveSettings, Retention
from ..credentials import redact_url
from ..errors import (
    AlreadyExists,
    ChunkMissing,
    ConflictError,
    DirectoryNotEmpty,
    DriveNotFound,
    InvalidPath,
    IsADirectory,
    LandingFailed,
    NotADirectory,
    PathNotFound,
    SchemaError,
    VersionNotFound,
)
from .interface import CHUNK_HOLD as CHUNK_HOLD  # re-exported: drive.py imports it here
from .records import (
    ChunkClaim,
    ChunkRecord,
    ChunkUse,
    CommitOutcome,
    CommitRequest,
    DeletedEntry,
    DriveDump,
    Event,
    Extent,
    GcCandidate,
    LandingChunk,
    Node,
    NodeKind,
    StoredExtent,
    TieredVersion,
    VersionInfo,
)
from .schema import BOOKKEEPING, LATEST, MIGRATIONS, POSTGRES, Dialect, render

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]

ROOT_ID = 1
NODE_COLUMNS = (
    "id, parent_id, name, kind, mode, uid, gid, mtime_ns, ctime_ns, size, head_version, "
    "target, deleted_ns, rdev"
)
# NODE_COLUMNS and, for a folder, how many live subfolders it has (its link count is
# 2 + that): one indexed count per folder, nothing to keep in step on every move.
NODE_COLUMNS_AND_SUBDIRS = (
    f"{NODE_COLUMNS}, CASE WHEN kind = 'dir' THEN (SELECT COUNT(*) FROM nodes s "
    "WHERE s.drive = nodes.drive AND s.parent_id = nodes.id AND s.kind = 'dir' "
    "AND s.deleted_ns IS NULL) ELSE 0 END"
)
VERSION_COLUMNS = (
    "file_id, version, size, mode, mtime_ns, created, author, message, parent_version, tier, origin"
)
MAX_ATTEMPTS = 30
# How long a commit recording chunks still on their way (CommitRequest.landing) waits
# for their puts with its transaction open, holding others' writes back meanwhile.
LANDING_PATIENCE = 0.5


async def landed(until: Awaitable[Any]) -> None:
    """Wait, in an open transaction, for the puts of the chunks it records (see
    CommitRequest.landing): at most LANDING_PATIENCE, since it holds others' writes
    back. LandingFailed, for the caller to roll back, if they fail or take longer."""
    try:
        # A timeout around the shield, not wait_for: the put's answer reaches the
        # transaction in two turns of the loop rather than three.
        async with asyncio.timeout(LANDING_PATIENCE):
            await asyncio.shield(until)
    except TimeoutError:
        raise LandingFailed(f"puts still under way after {LANDING_PATIENCE}s") from None
    except Exception as exc:
        raise LandingFailed(f"a put failed: {exc}") from exc


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders whatever the engine."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


# By stored name: a dict lookup, where calling the enum costs more than the rest of a
# row (a listing makes a node per entry).
_KINDS = {kind.value: kind for kind in NodeKind}


def _node(row: Row, subdirs: int = 0) -> Node:
    """A row of NODE_COLUMNS: id, parent_id, name, kind, mode, uid, gid, mtime_ns,
    ctime_ns, size, head_version, target, deleted_ns, rdev."""
    return Node(
        row[0], row[1], row[2], _KINDS[row[3]], row[4], row[5], row[6], row[7], row[8],
        row[9], row[10], row[11], row[12], row[13] or 0, subdirs,
    )  # fmt: skip


def _new_node(
    node_id: int,
    parent_id: int,
    name: str,
    kind: NodeKind,
    mode: int,
    uid: int,
    gid: int,
    now_ns: int,
    target: str | None,
    rdev: int,
) -> Node:
    """A node just made at ``now_ns``, as its row reads."""
    size = len(target.encode()) if target else 0
    return Node(
        node_id, parent_id, name, kind, mode, uid, gid, now_ns, now_ns, size, None, target,
        rdev=rdev,
    )  # fmt: skip


def _check_live_dir(folder: Node | None, path: str) -> Node:
    """``folder`` if it is a live folder; PathNotFound or NotADirectory naming ``path``."""
    if folder is None or folder.deleted_ns is not None:
        raise PathNotFound(f"folder {path!r} does not exist")
    if not folder.is_dir:
        raise NotADirectory(f"{path!r} is not a folder")
    return folder


def _node_and_subdirs(row: Row) -> Node:
    """A row of NODE_COLUMNS_AND_SUBDIRS."""
    return _node(row, int(row[14] or 0))


def _version(row: Row) -> VersionInfo:
    return VersionInfo(*row)


def conflict_name(name: str, host: str, when: float) -> str:
    """``cut.mov`` -> ``cut (conflict from HOST at 2026-11-27 11-36-20).mov``."""
    stem, ext = posixpath.splitext(name)
    stamp = time.strftime("%Y-%m-%d %H-%M-%S", time.gmtime(when))
    return f"{stem} (conflict from {host} at {stamp}){ext}"


class SqlMetaStore(ABC):
    """The metadata of one drive in one SQL database (which may hold many drives).

    Implements :class:`~mediadrive.core.meta.interface.MetaStore`; see there for
    what each operation promises.
    """

    dialect: Dialect

    def __init__(self, url: str, drive: str) -> None:
        self.url = url
        self.drive = drive

    # -- engine hooks -------------------------------------------------------------

    @abstractmethod
    def _transaction(self, write: bool) -> AbstractAsyncContextManager[Tx]:
        """A transaction that commits on clean exit and rolls back on error."""

    @abstractmethod
    def _retryable(self, exc: BaseException) -> bool:
        """True for serialization failures and lock time-outs worth another attempt."""

    @abstractmethod
    async def close(self) -> None: ...

    async def _attempt(
        self, body: Callable[[Tx], Awaitable[T]], write: bool, until: Awaitable[Any] | None = None
    ) -> T:
        """One try of ``body`` in one transaction; engines may run it more cheaply.
        ``until``: what the transaction waits for, open, once ``body`` is done (see
        landed)."""
        async with self._transaction(write) as tx:
            result = await body(tx)
            if until is not None:
                await landed(until)
            return result

    async def _attempt_single(self, body: Callable[[Tx], Awaitable[T]], write: bool) -> T:
        """One try of a body of one statement: an engine whose BEGIN and COMMIT cost
        round trips may run it alone, as its own transaction."""
        return await self._attempt(body, write)

    async def _run(
        self,
        body: Callable[[Tx], Awaitable[T]],
        write: bool = True,
        single: bool = False,
        until: Awaitable[Any] | None = None,
    ) -> T:
        """Run ``body`` in a transaction, again on a serialization conflict. ``single``:
        a body of one statement. ``until``: the transaction ends only once that is done
        (see landed)."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                if single:
                    return await self._attempt_single(body, write)
                return await self._attempt(body, write, until)
            except Exception as exc:
                if not self._retryable(exc) or attempt == MAX_ATTEMPTS - 1:
                    raise
                log.debug("retrying transaction after %s", exc)
                await asyncio.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    # -- schema and drive lifecycle -------------------------------------------------

    async def _schema_version(self, tx: Tx) -> int:
        await tx.execute(render(BOOKKEEPING, self.dialect))
        row = await tx.fetchone("SELECT MAX(version) FROM schema_migrations")
        return int(row[0]) if row and row[0] is not None else 0

    async def migrate(self) -> int:
        """Apply every migration this database lacks; returns the schema version."""

        async def body(tx: Tx) -> int:
            current = await self._schema_version(tx)
            if current > LATEST:
                raise SchemaError(
                    f"metadata schema is version {current}, newer than this program's {LATEST}"
                )
            for number in range(current + 1, LATEST + 1):
                for statement in MIGRATIONS[number - 1]:
                    await tx.execute(render(statement, self.dialect))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, applied) VALUES (?, ?)",
                    (number, time.time()),
                )
            return LATEST

        return await self._run(body)

    async def create_drive(self, settings: DriveSettings) -> None:
        await self.migrate()
        now = time.time()
        now_ns = time.time_ns()

        async def body(tx: Tx) -> None:
            if await tx.fetchone("SELECT 1 FROM drives WHERE name = ?", (self.drive,)):
                raise AlreadyExists(f"drive {self.drive!r} already exists in {self._where()}")
            await tx.execute(
                "INSERT INTO drives (name, settings, next_node, event_seq, created) "
                "VALUES (?, ?, ?, 0, ?)",
                (self.drive, settings.model_dump_json(), ROOT_ID, now),
            )
            await tx.execute(
                f"INSERT INTO nodes (drive, {NODE_COLUMNS}) "
                "VALUES (?, ?, NULL, '', 'dir', ?, 0, 0, ?, ?, 0, NULL, NULL, NULL, 0)",
                (self.drive, ROOT_ID, 0o755, now_ns, now_ns),
            )

        await self._run(body)

    async def open_drive(self) -> DriveSettings:
        """Check the schema is current and return the drive's settings."""

        async def body(tx: Tx) -> DriveSettings:
            version = await self._schema_version(tx)
            if version == 0:
                raise SchemaError(f"{self._where()} holds no mediadrive metadata (empty?)")
            if version != LATEST:
                raise SchemaError(
                    f"metadata schema in {self._where()} is version {version}, "
                    f"this program needs {LATEST}"
                )
            row = await tx.fetchone("SELECT settings FROM drives WHERE name = ?", (self.drive,))
            if row is None:
                raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
            return DriveSettings.model_validate_json(row[0])

        return await self._run(body, write=False)

    async def update_settings(self, settings: DriveSettings) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute(
                "UPDATE drives SET settings = ? WHERE name = ?",
                (settings.model_dump_json(), self.drive),
            )

        await self._run(body)

    async def destroy_drive(self) -> None:
        async def body(tx: Tx) -> None:
            # The drives row goes last: a destroy cut short can be run again.
            for table in ("holds", "events", "extents", "versions", "chunks", "nodes", "drives"):
                key = "name" if table == "drives" else "drive"
                await tx.execute(f"DELETE FROM {table} WHERE {key} = ?", (self.drive,))

        await self._run(body)

    def _where(self) -> str:
        if self.url.startswith("sqlite:"):
            return self.url.removeprefix("sqlite://")
        # Host and database only: no user, no query (a passfile, or a password).
        return redact_url(self.url.split("@")[-1].split("?")[0])

    # -- counters and events ----------------------------------------------------------

    async def _next(self, tx: Tx, column: str) -> int:
        row = await tx.fetchone(
            f"UPDATE drives SET {column} = {column} + 1 WHERE name = ? RETURNING {column}",
            (self.drive,),
        )
        if row is None:
            raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
        return int(row[0])

    async def _next_node_and_event(self, tx: Tx) -> tuple[int, int]:
        """A new node id and a new event number, in one statement."""
        row = await tx.fetchone(
            "UPDATE drives SET next_node = next_node + 1, event_seq = event_seq + 1 "
            "WHERE name = ? RETURNING next_node, event_seq",
            (self.drive,),
        )
        if row is None:
            raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
        return int(row[0]), int(row[1])

    async def _event(
        self,
        tx: Tx,
        kind: str,
        path: str,
        actor: str,
        file_id: int | None = None,
        version: int | None = None,
        *,
        seq: int | None = None,
        **detail: Any,
    ) -> int:
        """Record an event; ``seq`` is a number already taken from the drive's counter."""
        values = (kind, path, file_id, version, actor, time.time(), json.dumps(detail))
        if seq is None and self.dialect is POSTGRES:
            # The number taken and the event recorded in one statement: one round trip.
            row = await tx.fetchone(
                "WITH taken AS (UPDATE drives SET event_seq = event_seq + 1 WHERE name = ? "
                "RETURNING event_seq) "
                "INSERT INTO events (drive, seq, kind, path, file_id, version, actor, created, "
                "detail) SELECT ?, event_seq, ?, ?, ?, ?, ?, ?, ? FROM taken RETURNING seq",
                (self.drive, self.drive, *values),
            )
            if row is None:
                raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
            return int(row[0])
        if seq is None:
            seq = await self._next(tx, "event_seq")
        await tx.execute(
            "INSERT INTO events (drive, seq, kind, path, file_id, version, actor, created, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.drive, seq, *values),
        )
        return seq

    async def record_event(
        self,
        kind: str,
        path: str,
        actor: str,
        file_id: int | None = None,
        version: int | None = None,
        **detail: Any,
    ) -> int:
        async def body(tx: Tx) -> int:
            return await self._event(tx, kind, path, actor, file_id, version, **detail)

        return await self._run(body)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        async def body(tx: Tx) -> list[Event]:
            rows = await tx.fetchall(
                "SELECT seq, kind, path, file_id, version, actor, created, detail FROM events "
                "WHERE drive = ? AND seq > ? ORDER BY seq LIMIT ?",
                (self.drive, seq, limit),
            )
            return [
                Event(
                    seq=row[0],
                    kind=row[1],
                    path=row[2],
                    file_id=row[3],
                    version=row[4],
                    actor=row[5],
                    created=row[6],
                    detail=json.loads(row[7]),
                )
                for row in rows
            ]

        return await self._run(body, write=False, single=True)

    async def last_event_seq(self) -> int:
        async def body(tx: Tx) -> int:
            row = await tx.fetchone("SELECT event_seq FROM drives WHERE name = ?", (self.drive,))
            return int(row[0]) if row else 0

        return await self._run(body, write=False, single=True)

    async def follow_events(self, since: int, poll: float = 0.5) -> AsyncIterator[Event]:
        """Every event after ``since``, then new ones as they land (polling; no NOTIFY)."""
        while True:
            batch = await self.events_after(since)
            for event in batch:
                yield event
                since = event.seq
            if not batch:
                await asyncio.sleep(poll)

    # -- the tree -------------------------------------------------------------------------

    async def _get_node(self, tx: Tx, node_id: int) -> Node | None:
        row = await tx.fetchone(
            f"SELECT {NODE_COLUMNS_AND_SUBDIRS} FROM nodes WHERE drive = ? AND id = ?",
            (self.drive, node_id),
        )
        return _node_and_subdirs(row) if row else None

    async def _lookup(self, tx: Tx, parent_id: int, name: str) -> Node | None:
        row = await tx.fetchone(
            f"SELECT {NODE_COLUMNS_AND_SUBDIRS} FROM nodes "
            "WHERE drive = ? AND parent_id = ? AND name = ? AND deleted_ns IS NULL",
            (self.drive, parent_id, name),
        )
        return _node_and_subdirs(row) if row else None

    async def get_node(self, node_id: int) -> Node | None:
        return await self._run(lambda tx: self._get_node(tx, node_id), write=False, single=True)

    async def lookup(self, parent_id: int, name: str) -> Node | None:
        return await self._run(
            lambda tx: self._lookup(tx, parent_id, name), write=False, single=True
        )

    async def resolve(self, path: str) -> Node | None:
        """The live node at a normalized absolute drive path, in one transaction."""

        return await self._run(lambda tx: self._resolve(tx, path), write=False)

    async def _resolve(self, tx: Tx, path: str) -> Node | None:
        node = await self._get_node(tx, ROOT_ID)
        for part in [p for p in path.split("/") if p]:
            if node is None or not node.is_dir:
                return None
            node = await self._lookup(tx, node.id, part)
        return node

    async def last_deleted(self, parent_id: int, name: str) -> Node | None:
        """The most recently deleted node of that name, for the time machine."""

        async def body(tx: Tx) -> Node | None:
            row = await tx.fetchone(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE drive = ? AND parent_id = ? AND name = ? "
                "AND deleted_ns IS NOT NULL ORDER BY deleted_ns DESC LIMIT 1",
                (self.drive, parent_id, name),
            )
            return _node(row) if row else None

        return await self._run(body, write=False)

    async def _children(
        self, tx: Tx, parents: Sequence[Node], name: str | None = None
    ) -> list[tuple[Node, Node]]:
        """(parent, child) for every child, live or deleted, of these folders (only those
        called ``name`` if given). A child inherits its parent's deletion time when the
        parent went first: a removed folder never marks its contents."""
        found: list[tuple[Node, Node]] = []
        by_id = {p.id: p for p in parents}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ", ".join("?" for _ in batch)
            named = " AND name = ?" if name is not None else ""
            rows = await tx.fetchall(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE drive = ? "
                f"AND parent_id IN ({marks}){named}",
                (self.drive, *batch, *([name] if name is not None else [])),
            )
            for row in rows:
                child = _node(row)
                parent = by_id[child.parent_id or 0]
                gone = [t for t in (child.deleted_ns, parent.deleted_ns) if t is not None]
                found.append(
                    (parent, dataclasses.replace(child, deleted_ns=min(gone, default=None)))
                )
        return found

    async def _history(self, tx: Tx, path: str) -> list[Node]:
        root = await self._get_node(tx, ROOT_ID)
        level = [root] if root is not None else []
        for part in [p for p in path.split("/") if p]:
            folders = [n for n in level if n.is_dir]
            if not folders:
                return []
            level = [child for _, child in await self._children(tx, folders, part)]
        # Live first, then the most recently deleted.
        return sorted(level, key=lambda n: (n.deleted_ns is not None, -(n.deleted_ns or 0), -n.id))

    async def history(self, path: str) -> list[Node]:
        return await self._run(lambda tx: self._history(tx, path), write=False)

    async def deleted_under(self, path: str) -> list[DeletedEntry]:
        async def body(tx: Tx) -> list[DeletedEntry]:
            found: list[DeletedEntry] = []
            folders = [n for n in await self._history(tx, path) if n.is_dir]
            where = {n.id: path for n in folders}
            while folders:
                below: list[Node] = []
                for parent, child in await self._children(tx, folders):
                    child_path = posixpath.join(where[parent.id], child.name)
                    if child.is_dir:
                        where[child.id] = child_path
                        below.append(child)
                    elif child.deleted_ns is not None:
                        found.append(DeletedEntry(child_path, child))
                folders = below
            found.sort(key=lambda e: (-(e.node.deleted_ns or 0), e.path))
            return found

        return await self._run(body, write=False)

    async def list_dir(self, dir_id: int) -> list[Node]:
        async def body(tx: Tx) -> list[Node]:
            rows = await tx.fetchall(
                f"SELECT {NODE_COLUMNS_AND_SUBDIRS} FROM nodes "
                "WHERE drive = ? AND parent_id = ? AND deleted_ns IS NULL ORDER BY name",
                (self.drive, dir_id),
            )
            return [_node_and_subdirs(r) for r in rows]

        return await self._run(body, write=False, single=True)

    async def _insert_node(
        self,
        tx: Tx,
        parent: Node,
        name: str,
        kind: NodeKind,
        mode: int,
        now_ns: int,
        target: str | None = None,
        uid: int = 0,
        gid: int = 0,
        node_id: int | None = None,
        rdev: int = 0,
    ) -> Node:
        if node_id is None:
            node_id = await self._next(tx, "next_node")
        await tx.execute(
            f"INSERT INTO nodes (drive, {NODE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?)",
            (
                self.drive,
                node_id,
                parent.id,
                name,
                kind.value,
                mode,
                uid,
                gid,
                now_ns,
                now_ns,
                len(target.encode()) if target else 0,
                target,
                rdev,
            ),
        )
        await self._touch_dir(tx, parent.id, now_ns)
        return _new_node(node_id, parent.id, name, kind, mode, uid, gid, now_ns, target, rdev)

    async def _touch_dir(self, tx: Tx, dir_id: int, now_ns: int) -> None:
        await tx.execute(
            "UPDATE nodes SET mtime_ns = ?, ctime_ns = ? WHERE drive = ? AND id = ?",
            (now_ns, now_ns, self.drive, dir_id),
        )

    async def _live_dir(self, tx: Tx, dir_id: int, path: str) -> Node:
        return _check_live_dir(await self._get_node(tx, dir_id), path)

    async def _live_dir_and_path(self, tx: Tx, dir_id: int) -> tuple[Node, str]:
        """A live folder by id, and its path (the folder read once for both)."""
        folder = await self._get_node(tx, dir_id)
        path = await self._path_above(tx, folder)
        return _check_live_dir(folder, path), path

    async def _folder_at(self, tx: Tx, path: str) -> Node:
        return _check_live_dir(await self._resolve(tx, path), path)

    async def make_node(
        self,
        parent_id: int,
        parent_path: str,
        name: str,
        kind: NodeKind,
        mode: int,
        actor: str,
        target: str | None = None,
        uid: int = 0,
        gid: int = 0,
        rdev: int = 0,
    ) -> Node:
        """A new folder, symlink or empty file (an empty file has no version yet)."""
        path = posixpath.join(parent_path, name)
        now_ns = time.time_ns()
        event = {NodeKind.DIR: "mkdir", NodeKind.SYMLINK: "symlink"}.get(kind, "create")

        def checked(row: Row | None) -> Node:
            """The parent (the row's first columns) must be a live folder without a
            live child of that name (the row's next column)."""
            parent = _node(row) if row else None
            if parent is None or parent.deleted_ns is not None:
                raise PathNotFound(f"folder {parent_path!r} does not exist")
            if not parent.is_dir:
                raise NotADirectory(f"{parent_path!r} is not a folder")
            assert row is not None
            if row[14]:
                raise AlreadyExists(f"{path!r} already exists")
            return parent

        async def in_steps(tx: Tx) -> Node:
            row = await tx.fetchone(
                f"SELECT {NODE_COLUMNS}, EXISTS (SELECT 1 FROM nodes c WHERE c.drive = ? "
                "AND c.parent_id = ? AND c.name = ? AND c.deleted_ns IS NULL) "
                "FROM nodes WHERE drive = ? AND id = ?",
                (self.drive, parent_id, name, self.drive, parent_id),
            )
            parent = checked(row)
            node_id, seq = await self._next_node_and_event(tx)
            node = await self._insert_node(
                tx, parent, name, kind, mode, now_ns, target, uid, gid, node_id=node_id, rdev=rdev
            )
            await self._event(tx, event, path, actor, node.id, seq=seq, target=target)
            return node

        async def in_one(tx: Tx) -> Node:
            # Checks and writes in one statement, its own transaction: one round trip.
            # The new row and the folder's new times go in as one upsert (CockroachDB
            # lets a statement write a table once): the folder's row meets its own id
            # and takes the times. Nothing is written when a check fails.
            size = len(target.encode()) if target else 0
            values = (name, kind.value, mode, uid, gid, now_ns, now_ns, size, target, rdev)
            happened = (event, path, actor, time.time(), json.dumps({"target": target}))
            row = await tx.fetchone(
                f"WITH parent AS (SELECT {NODE_COLUMNS}, EXISTS (SELECT 1 FROM nodes c "
                "WHERE c.drive = ? AND c.parent_id = ? AND c.name = ? AND c.deleted_ns IS NULL) "
                "AS taken FROM nodes WHERE drive = ? AND id = ?), "
                "ids AS (UPDATE drives SET next_node = next_node + 1, event_seq = event_seq + 1 "
                "WHERE name = ? AND EXISTS (SELECT 1 FROM parent WHERE kind = 'dir' "
                "AND deleted_ns IS NULL AND NOT taken) RETURNING next_node, event_seq), "
                f"made AS (INSERT INTO nodes (drive, {NODE_COLUMNS}) "
                "SELECT ?, next_node, ?, ?, ?, ?::bigint, ?::bigint, ?::bigint, ?::bigint, "
                "?::bigint, ?::bigint, NULL::bigint, ?, NULL::bigint, ?::bigint FROM ids "
                "UNION ALL SELECT drive, id, parent_id, name, kind, mode, uid, gid, ?, ?, size, "
                "head_version, target, deleted_ns, rdev FROM nodes, ids WHERE drive = ? AND id = ? "
                "ON CONFLICT (drive, id) DO UPDATE "
                "SET mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns), "
                "logged AS (INSERT INTO events (drive, seq, kind, path, file_id, version, actor, "
                "created, detail) SELECT ?, event_seq, ?, ?, next_node, NULL, ?, ?, ? FROM ids) "
                "SELECT parent.*, ids.next_node FROM parent LEFT JOIN ids ON TRUE",
                (
                    *(self.drive, parent_id, name, self.drive, parent_id),
                    self.drive,
                    *(self.drive, parent_id, *values),
                    *(now_ns, now_ns, self.drive, parent_id),
                    *(self.drive, *happened),
                ),
            )
            parent = checked(row)
            assert row is not None
            return _new_node(
                int(row[15]), parent.id, name, kind, mode, uid, gid, now_ns, target, rdev
            )

        if self.dialect is POSTGRES:
            return await self._run(in_one, single=True)
        return await self._run(in_steps)

    async def set_attrs(
        self,
        node_id: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
        path: str = "",
        actor: str = "",
    ) -> Node:
        now_ns = time.time_ns()

        async def body(tx: Tx) -> Node:
            changed = await tx.execute(
                "UPDATE nodes SET mode = COALESCE(?, mode), uid = COALESCE(?, uid), "
                "gid = COALESCE(?, gid), mtime_ns = COALESCE(?, mtime_ns), ctime_ns = ? "
                "WHERE drive = ? AND id = ?",
                (mode, uid, gid, mtime_ns, now_ns, self.drive, node_id),
            )
            if not changed:
                raise PathNotFound(f"node {node_id} does not exist")
            # Other mounts follow this to drop what their kernels cached of the node.
            await self._event(tx, "attrs", path, actor, node_id)
            updated = await self._get_node(tx, node_id)
            assert updated is not None
            return updated

        return await self._run(body)

    async def _has_children(self, tx: Tx, dir_id: int) -> bool:
        row = await tx.fetchone(
            "SELECT 1 FROM nodes WHERE drive = ? AND parent_id = ? AND deleted_ns IS NULL LIMIT 1",
            (self.drive, dir_id),
        )
        return row is not None

    async def remove(
        self,
        parent_id: int,
        parent_path: str,
        name: str,
        actor: str,
        recursive: bool = False,
        folder: bool | None = None,
    ) -> Node:
        """Delete a file, symlink or folder. Versions stay in history until retention."""
        path = posixpath.join(parent_path, name)
        now_ns = time.time_ns()

        def checked(node: Node | None, busy: bool) -> Node:
            """``busy``: a folder with live children."""
            if node is None:
                raise PathNotFound(f"{path!r} does not exist")
            if folder is True and not node.is_dir:
                raise NotADirectory(f"{path!r} is not a folder")
            if folder is False and node.is_dir:
                raise IsADirectory(f"{path!r} is a folder")
            if node.is_dir and not recursive and busy:
                raise DirectoryNotEmpty(f"folder {path!r} is not empty")
            return node

        async def in_steps(tx: Tx) -> Node:
            node = await self._lookup(tx, parent_id, name)
            busy = (
                node is not None
                and node.is_dir
                and not recursive
                and await self._has_children(tx, node.id)
            )
            checked(node, busy)
            assert node is not None
            # The node marked and its folder touched in one statement.
            marked, touched = (node.id, now_ns), (parent_id, now_ns)
            await tx.execute(
                "UPDATE nodes SET "
                "deleted_ns = CASE WHEN id = ? THEN ? ELSE deleted_ns END, "
                "mtime_ns = CASE WHEN id = ? THEN ? ELSE mtime_ns END, "
                "ctime_ns = CASE WHEN id = ? THEN ? ELSE ctime_ns END "
                "WHERE drive = ? AND id IN (?, ?)",
                (*marked, *touched, *touched, self.drive, node.id, parent_id),
            )
            await self._event(tx, "delete", path, actor, node.id, node.head_version)
            return dataclasses.replace(node, deleted_ns=now_ns)

        async def in_one(tx: Tx) -> Node:
            # Checks and writes in one statement, its own transaction: one round trip.
            # Nothing is written when a check fails. The checks of ``checked``, as SQL
            # over ``target``:
            kinds = {True: "kind = 'dir'", False: "kind <> 'dir'", None: "TRUE"}[folder]
            emptiness = "TRUE" if recursive else "(kind <> 'dir' OR NOT busy)"
            happened = ("delete", path, actor, time.time(), json.dumps({}))
            row = await tx.fetchone(
                # Asked of folders only: for a file in a big folder the planner may scan
                # the whole table for children it cannot have.
                f"WITH target AS (SELECT {NODE_COLUMNS}, CASE WHEN n.kind = 'dir' THEN "
                "EXISTS (SELECT 1 FROM nodes c WHERE c.drive = n.drive AND c.parent_id = n.id "
                "AND c.deleted_ns IS NULL) ELSE FALSE END AS busy "
                "FROM nodes n WHERE drive = ? AND parent_id = ? AND name = ? "
                "AND deleted_ns IS NULL), "
                f"doomed AS (SELECT id, head_version FROM target WHERE {kinds} AND {emptiness}), "
                "marked AS (UPDATE nodes SET "
                "deleted_ns = CASE WHEN nodes.id = doomed.id THEN ? ELSE nodes.deleted_ns END, "
                "mtime_ns = CASE WHEN nodes.id = ? THEN ? ELSE nodes.mtime_ns END, "
                "ctime_ns = CASE WHEN nodes.id = ? THEN ? ELSE nodes.ctime_ns END "
                "FROM doomed WHERE nodes.drive = ? AND nodes.id IN (doomed.id, ?)), "
                "seq AS (UPDATE drives SET event_seq = event_seq + 1 WHERE name = ? "
                "AND EXISTS (SELECT 1 FROM doomed) RETURNING event_seq), "
                "logged AS (INSERT INTO events (drive, seq, kind, path, file_id, version, actor, "
                "created, detail) SELECT ?, event_seq, ?, ?, id, head_version, ?, ?, ? "
                "FROM seq, doomed) "
                "SELECT * FROM target",
                (
                    *(self.drive, parent_id, name),
                    *(now_ns, parent_id, now_ns, parent_id, now_ns, self.drive, parent_id),
                    self.drive,
                    *(self.drive, *happened),
                ),
            )
            node = checked(_node(row) if row else None, bool(row and row[14]))
            return dataclasses.replace(node, deleted_ns=now_ns)

        if self.dialect is POSTGRES:
            return await self._run(in_one, single=True)
        return await self._run(in_steps)

    async def rename(
        self,
        src_parent: int,
        src_path: str,
        dst_parent: int,
        dst_path: str,
        actor: str,
        replace: bool = True,
    ) -> Node:
        """Atomic move; an existing file or empty folder at the target is replaced."""
        src_name = posixpath.basename(src_path)
        dst_name = posixpath.basename(dst_path)
        now_ns = time.time_ns()

        async def body(tx: Tx) -> Node:
            node = await self._lookup(tx, src_parent, src_name)
            if node is None:
                raise PathNotFound(f"{src_path!r} does not exist")
            target_dir = await self._live_dir(tx, dst_parent, posixpath.dirname(dst_path))
            await self._not_into_itself(tx, node, target_dir, src_path, dst_path)
            existing = await self._lookup(tx, dst_parent, dst_name)
            if existing is not None and existing.id == node.id:
                return node
            if existing is not None:
                if not replace:
                    raise AlreadyExists(f"{dst_path!r} already exists")
                if existing.is_dir and not node.is_dir:
                    raise IsADirectory(f"{dst_path!r} is a folder")
                if node.is_dir and not existing.is_dir:
                    raise NotADirectory(f"{dst_path!r} is not a folder")
                if existing.is_dir and await self._has_children(tx, existing.id):
                    raise DirectoryNotEmpty(f"folder {dst_path!r} is not empty")
                await tx.execute(
                    "UPDATE nodes SET deleted_ns = ? WHERE drive = ? AND id = ?",
                    (now_ns, self.drive, existing.id),
                )
            await tx.execute(
                "UPDATE nodes SET parent_id = ?, name = ?, ctime_ns = ? WHERE drive = ? AND id = ?",
                (dst_parent, dst_name, now_ns, self.drive, node.id),
            )
            await self._touch_dir(tx, src_parent, now_ns)
            if dst_parent != src_parent:
                await self._touch_dir(tx, dst_parent, now_ns)
            await self._event(
                tx, "rename", dst_path, actor, node.id, node.head_version, source=src_path
            )
            moved = await self._get_node(tx, node.id)
            assert moved is not None
            return moved

        return await self._run(body)

    async def _not_into_itself(
        self, tx: Tx, node: Node, target_dir: Node | None, src_path: str, dst_path: str
    ) -> None:
        """Walk up from the target folder: a folder cannot move into itself."""
        cursor = target_dir if node.is_dir else None
        while cursor is not None and cursor.parent_id is not None:
            if cursor.id == node.id:
                raise InvalidPath(f"cannot move {src_path!r} into itself ({dst_path!r})")
            cursor = await self._get_node(tx, cursor.parent_id)

    async def exchange(
        self, a_parent: int, a_path: str, b_parent: int, b_path: str, actor: str
    ) -> tuple[Node, Node]:
        """Swap two existing names atomically (``RENAME_EXCHANGE``): each node takes the
        other's place, history and all. Returns both nodes at their new places."""
        a_name = posixpath.basename(a_path)
        b_name = posixpath.basename(b_path)
        now_ns = time.time_ns()

        async def body(tx: Tx) -> tuple[Node, Node]:
            a = await self._lookup(tx, a_parent, a_name)
            b = await self._lookup(tx, b_parent, b_name)
            for node, path in ((a, a_path), (b, b_path)):
                if node is None:
                    raise PathNotFound(f"{path!r} does not exist")
            assert a is not None and b is not None
            if a.id == b.id:
                return a, b
            await self._not_into_itself(tx, a, await self._get_node(tx, b_parent), a_path, b_path)
            await self._not_into_itself(tx, b, await self._get_node(tx, a_parent), b_path, a_path)
            move = (
                "UPDATE nodes SET parent_id = ?, name = ?, ctime_ns = ? WHERE drive = ? AND id = ?"
            )
            # A name with a slash is never a real one: it holds a's place for a moment.
            await tx.execute(move, (a_parent, f"exchange/{a.id}", now_ns, self.drive, a.id))
            await tx.execute(move, (a_parent, a_name, now_ns, self.drive, b.id))
            await tx.execute(move, (b_parent, b_name, now_ns, self.drive, a.id))
            for parent in {a_parent, b_parent}:
                await self._touch_dir(tx, parent, now_ns)
            await self._event(tx, "rename", b_path, actor, a.id, a.head_version, source=a_path)
            await self._event(tx, "rename", a_path, actor, b.id, b.head_version, source=b_path)
            moved_a = await self._get_node(tx, a.id)
            moved_b = await self._get_node(tx, b.id)
            assert moved_a is not None and moved_b is not None
            return moved_a, moved_b

        return await self._run(body)

    # -- versions ---------------------------------------------------------------------------

    async def commit(
        self, req: CommitRequest, policy: ConflictPolicy, landed: Awaitable[Any] | None = None
    ) -> CommitOutcome:
        """Make a new version from stored chunks, applying ``policy`` if the head moved.

        Raises :class:`ConflictError` under ``reject`` after recording the conflict event.
        """
        chunk_ids = sorted({e.chunk_id for e in req.extents})

        async def body(tx: Tx) -> CommitOutcome:
            now = time.time()
            if req.landing:
                await self._record_landing(tx, req.landing, now)
            parent_path, name = req.parent_path, req.name
            path = posixpath.join(parent_path, name)
            known = await self._get_node(tx, req.file_id) if req.file_id is not None else None
            if req.revive and known is not None and await self._gone(tx, known):
                folder = await self._parent(tx, req)
                known = await self._revive(tx, known, folder.id, parent_path, name)
            node: Node | None
            if known is not None and known.deleted_ns is None and known.parent_id is not None:
                # Where the file is now (moved since it was opened, it lands there); it is
                # the live node of its name in its folder.
                name = known.name
                parent, parent_path = await self._live_dir_and_path(tx, known.parent_id)
                path = posixpath.join(parent_path, name)
                node = known
            else:
                parent = await self._parent(tx, req)
                node = None
            parent_id = parent.id
            await self._require_stored(tx, chunk_ids)
            await tx.execute(
                "DELETE FROM holds WHERE drive = ? AND token = ?", (self.drive, req.hold_token)
            )
            if node is None:
                node = await self._lookup(tx, parent_id, name)
            if node is not None and node.is_dir:
                raise IsADirectory(f"{path!r} is a folder")
            head = node.head_version if node else None
            landed = path
            seq: int | None = None
            if node is not None and head != req.base_version:
                detail: dict[str, Any] = {
                    "policy": policy.value,
                    "base": req.base_version,
                    "head": head,
                }
                if policy is ConflictPolicy.REJECT:
                    await self._event(tx, "conflict", path, req.author, node.id, head, **detail)
                    return CommitOutcome(path, node.id, head or 0, True, head, rejected=True)
                if policy is ConflictPolicy.KEEP_BOTH:
                    sibling = await self._free_name(tx, parent.id, name, req.host, now)
                    sibling_path = posixpath.join(parent_path, sibling)
                    await self._event(
                        tx,
                        "conflict",
                        path,
                        req.author,
                        node.id,
                        head,
                        kept_as=sibling_path,
                        **detail,
                    )
                    node_id, seq = await self._next_node_and_event(tx)
                    node = await self._insert_node(
                        tx,
                        parent,
                        sibling,
                        NodeKind.FILE,
                        req.mode,
                        time.time_ns(),
                        node_id=node_id,
                    )
                    landed, head = sibling_path, None
                else:
                    await self._event(tx, "conflict", path, req.author, node.id, head, **detail)
            if node is None:
                node_id, seq = await self._next_node_and_event(tx)
                node = await self._insert_node(
                    tx, parent, name, NodeKind.FILE, req.mode, time.time_ns(), node_id=node_id
                )
            version = await self._insert_version(tx, node.id, req, head, now)
            await self._event(
                tx,
                req.origin,
                landed,
                req.author,
                node.id,
                version,
                seq=seq,
                size=req.size,
                message=req.message,
                host=req.host,
            )
            return CommitOutcome(
                landed, node.id, version, landed != path or head != req.base_version, head
            )

        outcome = await self._run(body, until=landed if req.landing else None)
        if outcome.rejected:
            raise ConflictError(
                f"{outcome.path!r} changed since version {req.base_version} (head is now "
                f"{outcome.previous_head}); the drive's conflict policy is reject, nothing "
                "was committed"
            )
        return outcome

    async def _record_landing(self, tx: Tx, chunks: Sequence[LandingChunk], now: float) -> None:
        """Record chunks still being put as stored, as record_put would once they are;
        the transaction commits only after their puts (see landed), and is rolled back
        if one could not be recorded stored."""
        for chunk in chunks:
            state, _ = await self._record_put(
                tx,
                chunk.chunk_id,
                chunk.size,
                chunk.blocks,
                chunk.deletions_seen,
                chunk.token,
                now,
                CHUNK_HOLD,
            )
            if state == "pending":
                # A deletion since the put began may have taken these very bytes.
                raise LandingFailed("GC deleted chunks while the commit's puts travelled")
            if state != "stored":
                raise LandingFailed(f"GC is deleting chunk {chunk.chunk_id}")

    async def _gone(self, tx: Tx, node: Node) -> bool:
        """True if the node or a folder above it was removed."""
        cursor: Node | None = node
        while cursor is not None:
            if cursor.deleted_ns is not None:
                return True
            if cursor.parent_id is None:
                return False
            cursor = await self._get_node(tx, cursor.parent_id)
        return True

    async def _revive(
        self, tx: Tx, node: Node, parent_id: int, parent_path: str, name: str
    ) -> Node:
        """Put a deleted node back, live, at a free name (same id: its history goes on)."""
        path = posixpath.join(parent_path, name)
        await self._live_dir(tx, parent_id, parent_path)
        if await self._lookup(tx, parent_id, name) is not None:
            raise AlreadyExists(f"{path!r} already exists")
        now_ns = time.time_ns()
        await tx.execute(
            "UPDATE nodes SET parent_id = ?, name = ?, deleted_ns = NULL, ctime_ns = ? "
            "WHERE drive = ? AND id = ?",
            (parent_id, name, now_ns, self.drive, node.id),
        )
        await self._touch_dir(tx, parent_id, now_ns)
        revived = await self._get_node(tx, node.id)
        assert revived is not None
        return revived

    async def _path_of(self, tx: Tx, dir_id: int) -> str:
        return await self._path_above(tx, await self._get_node(tx, dir_id))

    async def _path_above(self, tx: Tx, node: Node | None) -> str:
        """The path of ``node``, from its name and its parents'."""
        names = []
        while node is not None and node.parent_id is not None:
            names.append(node.name)
            node = await self._get_node(tx, node.parent_id)
        return "/" + "/".join(reversed(names))

    async def _parent(self, tx: Tx, req: CommitRequest) -> Node:
        """The live folder a commit names: by id, or (none given) by its path."""
        if req.parent_id is None:
            return await self._folder_at(tx, req.parent_path)
        return await self._live_dir(tx, req.parent_id, req.parent_path)

    async def _free_name(self, tx: Tx, parent_id: int, name: str, host: str, now: float) -> str:
        candidate = conflict_name(name, host, now)
        stem, ext = posixpath.splitext(candidate)
        n = 1
        while await self._lookup(tx, parent_id, candidate):
            n += 1
            candidate = f"{stem} {n}{ext}"
        return candidate

    async def _insert_version(
        self, tx: Tx, file_id: int, req: CommitRequest, parent_version: int | None, now: float
    ) -> int:
        row = await tx.fetchone(
            "SELECT MAX(version) FROM versions WHERE drive = ? AND file_id = ?",
            (self.drive, file_id),
        )
        version = (int(row[0]) if row and row[0] is not None else 0) + 1
        await tx.execute(
            f"INSERT INTO versions (drive, {VERSION_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.drive,
                file_id,
                version,
                req.size,
                req.mode,
                req.mtime_ns,
                now,
                req.author,
                req.message,
                parent_version,
                req.tier,
                req.origin,
            ),
        )
        await tx.executemany(
            "INSERT INTO extents "
            "(drive, file_id, version, idx, file_offset, length, chunk_id, chunk_offset) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (self.drive, file_id, version, i, e.offset, e.length, e.chunk_id, e.chunk_offset)
                for i, e in enumerate(req.extents)
            ],
        )
        now_ns = time.time_ns()
        await tx.execute(
            "UPDATE nodes SET head_version = ?, size = ?, mode = ?, mtime_ns = ?, ctime_ns = ?, "
            "deleted_ns = NULL WHERE drive = ? AND id = ?",
            (version, req.size, req.mode, req.mtime_ns, now_ns, self.drive, file_id),
        )
        return version

    async def label_version(
        self, file_id: int, version: int, message: str, replaceable: Sequence[str] = ("",)
    ) -> bool:
        """Give ``version`` the message ``message`` if its own is one of ``replaceable``
        (the messages of automatic commits); True when it did."""

        async def body(tx: Tx) -> bool:
            marks = ", ".join("?" for _ in replaceable)
            changed = await tx.execute(
                f"UPDATE versions SET message = ? WHERE drive = ? AND file_id = ? "
                f"AND version = ? AND message IN ({marks})",
                (message, self.drive, file_id, version, *replaceable),
            )
            return changed > 0

        return await self._run(body)

    async def versions(self, file_id: int) -> list[VersionInfo]:
        async def body(tx: Tx) -> list[VersionInfo]:
            rows = await tx.fetchall(
                f"SELECT {VERSION_COLUMNS} FROM versions WHERE drive = ? AND file_id = ? "
                "ORDER BY version",
                (self.drive, file_id),
            )
            return [_version(r) for r in rows]

        return await self._run(body, write=False)

    async def version(self, file_id: int, version: int) -> tuple[VersionInfo, list[Extent]]:
        async def body(tx: Tx) -> tuple[VersionInfo, list[Extent]]:
            row = await tx.fetchone(
                f"SELECT {VERSION_COLUMNS} FROM versions "
                "WHERE drive = ? AND file_id = ? AND version = ?",
                (self.drive, file_id, version),
            )
            if row is None:
                raise VersionNotFound(f"version {version} does not exist")
            rows = await tx.fetchall(
                "SELECT file_offset, length, chunk_id, chunk_offset FROM extents "
                "WHERE drive = ? AND file_id = ? AND version = ? ORDER BY idx",
                (self.drive, file_id, version),
            )
            return _version(row), [Extent(*r) for r in rows]

        return await self._run(body, write=False)

    async def set_version_tier(
        self, file_id: int, version: int, tier: str, path: str, actor: str, **detail: Any
    ) -> int:
        async def body(tx: Tx) -> int:
            changed = await tx.execute(
                "UPDATE versions SET tier = ? WHERE drive = ? AND file_id = ? AND version = ?",
                (tier, self.drive, file_id, version),
            )
            if not changed:
                raise VersionNotFound(f"{path} has no version {version}")
            return await self._event(tx, "publish", path, actor, file_id, version, **detail)

        return await self._run(body)

    async def versions_in_tier(
        self, prefix: str, before: float, limit: int = 1000
    ) -> list[TieredVersion]:
        pattern = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"

        async def body(tx: Tx) -> list[TieredVersion]:
            columns = ", ".join(f"v.{c.strip()}" for c in VERSION_COLUMNS.split(","))
            rows = await tx.fetchall(
                f"SELECT {columns}, n.parent_id, n.name, n.head_version, n.deleted_ns "
                "FROM versions v JOIN nodes n ON n.drive = v.drive AND n.id = v.file_id "
                "WHERE v.drive = ? AND v.tier LIKE ? ESCAPE '!' AND v.created < ? "
                "ORDER BY v.created, v.file_id, v.version LIMIT ?",
                (self.drive, pattern, before, limit),
            )
            found = []
            folders: dict[int, str] = {}
            for row in rows:
                info = _version(row[:11])
                parent_id, name, head, deleted_ns = row[11:]
                if parent_id not in folders:
                    folders[parent_id] = await self._path_of(tx, parent_id)
                deleted = deleted_ns is not None
                found.append(
                    TieredVersion(
                        info,
                        posixpath.join(folders[parent_id], name),
                        head == info.version and not deleted,
                        deleted,
                    )
                )
            return found

        return await self._run(body, write=False)

    # -- chunks -------------------------------------------------------------------------------

    async def claim_chunks(
        self,
        chunks: Sequence[tuple[str, int, bytes | None]],
        hold: float = CHUNK_HOLD,
        token: str = "",
    ) -> list[ChunkClaim]:
        """Announce chunks an upload is about to commit; says which need uploading.

        Each claim is a hold for ``hold`` seconds under the upload's ``token``: GC
        leaves a held chunk alone, whatever its grace period, while the upload and
        the commit that follows it are in flight. The commit releases its own holds.
        """

        async def body(tx: Tx) -> list[ChunkClaim]:
            now = time.time()
            claims = []
            for chunk_id, size, blocks in chunks:
                found = await self._claim_row(tx, chunk_id, size, blocks, now)
                if found is None:
                    claims.append(ChunkClaim(chunk_id, "busy"))
                    continue
                await self._hold(tx, [chunk_id], token, now + hold)
                # A damaged chunk is uploaded again: this upload has its bytes.
                state = "pending" if found == "damaged" else found
                claims.append(ChunkClaim(chunk_id, state))
            return claims

        return await self._run(body)

    async def _claim_row(
        self,
        tx: Tx,
        chunk_id: str,
        size: int,
        blocks: bytes | None,
        now: float,
        put: str | None = None,
    ) -> str | None:
        """Add or refresh a chunk's row for an upload; its state then, None while GC
        deletes it. A new row is ``pending``; with ``put`` (the caller has put the
        bytes: see record_put) it is ``put``, and so is an existing row not stored."""
        state_update = (
            ", state = CASE WHEN chunks.state = 'stored' THEN chunks.state ELSE excluded.state END"
            if put is not None
            else ""
        )
        await tx.execute(
            "INSERT INTO chunks (drive, id, size, state, held_until, blocks) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (drive, id) DO UPDATE "
            "SET held_until = excluded.held_until, "
            # A damaged chunk takes the digests of the bytes that replace it.
            "blocks = CASE WHEN chunks.state = 'damaged' "
            "THEN COALESCE(excluded.blocks, chunks.blocks) "
            f"ELSE COALESCE(chunks.blocks, excluded.blocks) END{state_update} "
            "WHERE chunks.state <> 'deleting'",
            (self.drive, chunk_id, size, put or "pending", now, blocks),
        )
        row = await tx.fetchone(
            "SELECT state FROM chunks WHERE drive = ? AND id = ?", (self.drive, chunk_id)
        )
        assert row is not None
        return None if row[0] == "deleting" else str(row[0])

    async def chunk_deletions(self) -> int:
        """How many chunk deletions GC has finished in this drive (see record_put)."""

        async def body(tx: Tx) -> int:
            return await self._chunk_deletions(tx)

        return await self._run(body, write=False)

    async def _chunk_deletions(self, tx: Tx) -> int:
        row = await tx.fetchone("SELECT chunk_deletions FROM drives WHERE name = ?", (self.drive,))
        if row is None:
            raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
        return int(row[0])

    async def record_put(
        self,
        chunk_id: str,
        size: int,
        blocks: bytes | None,
        deletions_seen: int,
        hold: float = CHUNK_HOLD,
        token: str = "",
    ) -> tuple[str, int]:
        """Claim a chunk whose bytes the caller has just put, in one transaction instead
        of a claim before the put and a mark after it.

        A GC deletion of the same id that ended after the put began may have taken the
        bytes; the caller read ``deletions_seen`` (:meth:`chunk_deletions`) before its
        put, so a count that moved since means it cannot tell: the chunk is then held
        but left ``pending`` for the caller to put again and ``mark_stored``. Returns
        the state (``stored``, ``pending``, or ``busy`` while GC deletes it now) and
        the current count.
        """

        async def body(tx: Tx) -> tuple[str, int]:
            return await self._record_put(
                tx, chunk_id, size, blocks, deletions_seen, token, time.time(), hold
            )

        return await self._run(body)

    async def _record_put(
        self,
        tx: Tx,
        chunk_id: str,
        size: int,
        blocks: bytes | None,
        deletions_seen: int,
        token: str,
        now: float,
        hold: float,
    ) -> tuple[str, int]:
        """record_put's work, in ``tx``."""
        deletions = await self._chunk_deletions(tx)
        put = "stored" if deletions == deletions_seen else "pending"
        found = await self._claim_row(tx, chunk_id, size, blocks, now, put)
        if found is None:
            return "busy", deletions
        await self._hold(tx, [chunk_id], token, now + hold)
        return found, deletions

    async def _hold(self, tx: Tx, chunk_ids: Sequence[str], token: str, until: float) -> None:
        await tx.executemany(
            "INSERT INTO holds (drive, chunk_id, token, until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (drive, chunk_id, token) DO UPDATE SET until = excluded.until",
            [(self.drive, c, token, until) for c in chunk_ids],
        )

    async def hold_chunks(
        self, chunk_ids: Sequence[str], hold: float = CHUNK_HOLD, token: str = ""
    ) -> None:
        """Extend the holds of chunks a long upload is still working on."""

        async def body(tx: Tx) -> None:
            await self._hold(tx, chunk_ids, token, time.time() + hold)

        await self._run(body)

    async def expire_holds(self) -> int:
        """Forget holds whose uploads died without committing."""

        async def body(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM holds WHERE drive = ? AND until < ?", (self.drive, time.time())
            )

        return await self._run(body)

    async def held_unreferenced(self) -> int:
        """How many chunks no version references are held by an upload now."""

        async def body(tx: Tx) -> int:
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM chunks c WHERE c.drive = ? "
                "AND NOT EXISTS (SELECT 1 FROM extents e WHERE e.drive = c.drive "
                "AND e.chunk_id = c.id) "
                "AND EXISTS (SELECT 1 FROM holds h WHERE h.drive = c.drive "
                "AND h.chunk_id = c.id AND h.until >= ?)",
                (self.drive, time.time()),
            )
            return int(row[0]) if row else 0

        return await self._run(body, write=False)

    async def mark_stored(self, chunk_ids: Sequence[str]) -> None:
        async def body(tx: Tx) -> None:
            await tx.executemany(
                "UPDATE chunks SET state = 'stored' "
                "WHERE drive = ? AND id = ? AND state IN ('pending', 'damaged')",
                [(self.drive, c) for c in chunk_ids],
            )

        await self._run(body)

    async def _require_stored(self, tx: Tx, chunk_ids: Sequence[str]) -> None:
        # Writing the rows (not only reading them) makes this commit and a concurrent
        # GC touch the same rows, so one of them waits or retries. The time written is
        # where GC's grace period starts once the chunk is no longer referenced.
        for start in range(0, len(chunk_ids), 500):
            batch = chunk_ids[start : start + 500]
            marks = ", ".join("?" for _ in batch)
            touched = await tx.execute(
                f"UPDATE chunks SET held_until = ? WHERE drive = ? AND state = 'stored' "
                f"AND id IN ({marks})",
                (time.time(), self.drive, *batch),
            )
            if touched != len(batch):
                raise ChunkMissing("a chunk of this commit is no longer stored; upload it again")

    async def chunk_blocks(self, chunk_id: str) -> bytes | None:
        """The per-block digests recorded for a chunk, if any."""

        async def body(tx: Tx) -> bytes | None:
            row = await tx.fetchone(
                "SELECT blocks FROM chunks WHERE drive = ? AND id = ?", (self.drive, chunk_id)
            )
            return bytes(row[0]) if row and row[0] is not None else None

        return await self._run(body, write=False)

    async def chunk_stats(self) -> tuple[int, int]:
        """(number of stored chunks, their total bytes)."""

        async def body(tx: Tx) -> tuple[int, int]:
            row = await tx.fetchone(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chunks "
                "WHERE drive = ? AND state IN ('stored', 'damaged')",
                (self.drive,),
            )
            assert row is not None
            return int(row[0]), int(row[1])

        return await self._run(body, write=False)

    async def mark_damaged(self, chunk_ids: Sequence[str]) -> int:
        """Mark stored chunks found corrupt or missing; their next claim is ``pending``."""

        async def body(tx: Tx) -> int:
            marked = 0
            for chunk_id in chunk_ids:
                marked += await tx.execute(
                    "UPDATE chunks SET state = 'damaged' "
                    "WHERE drive = ? AND id = ? AND state = 'stored'",
                    (self.drive, chunk_id),
                )
            return marked

        return await self._run(body)

    async def unrecorded(self, chunk_ids: Sequence[str]) -> list[str]:
        """Those of ``chunk_ids`` no row records, in the order given."""

        async def body(tx: Tx) -> list[str]:
            known: set[str] = set()
            for start in range(0, len(chunk_ids), 500):
                batch = chunk_ids[start : start + 500]
                marks = ", ".join("?" for _ in batch)
                rows = await tx.fetchall(
                    f"SELECT id FROM chunks WHERE drive = ? AND id IN ({marks})",
                    (self.drive, *batch),
                )
                known.update(str(r[0]) for r in rows)
            return [c for c in chunk_ids if c not in known]

        return await self._run(body, write=False)

    async def record_stray(
        self, chunk_id: str, size: int, blocks: bytes | None, deletions_seen: int
    ) -> bool:
        """Record an object the blob store holds and no row names, read and checked
        after the caller read ``deletions_seen``: ``stored`` with ``blocks`` (its digests),
        or ``damaged`` if None (its bytes do not hash to its id; the next upload of
        the right bytes replaces it). Unreferenced and unheld, GC collects it after
        its grace. False, recording nothing, if a row appeared meanwhile or a GC
        deletion finished since (it may have taken the object after it was read)."""

        async def body(tx: Tx) -> bool:
            if await self._chunk_deletions(tx) != deletions_seen:
                return False
            added = await tx.execute(
                "INSERT INTO chunks (drive, id, size, state, held_until, blocks) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (drive, id) DO NOTHING",
                (
                    self.drive,
                    chunk_id,
                    size,
                    "stored" if blocks is not None else "damaged",
                    time.time(),
                    blocks,
                ),
            )
            return added == 1

        return await self._run(body)

    async def referenced_chunks(self) -> list[ChunkRecord]:
        """Every chunk a version names, with what the store records of it."""

        async def body(tx: Tx) -> list[ChunkRecord]:
            rows = await tx.fetchall(
                "SELECT r.chunk_id, c.size, c.state, c.blocks, r.length FROM "
                # A chunk with no record is at least as long as the furthest slice of it.
                "(SELECT chunk_id, MAX(chunk_offset + length) AS length FROM extents "
                "WHERE drive = ? "
                "GROUP BY chunk_id) r "
                "LEFT JOIN chunks c ON c.drive = ? AND c.id = r.chunk_id ORDER BY r.chunk_id",
                (self.drive, self.drive),
            )
            return [
                ChunkRecord(
                    chunk_id=r[0],
                    size=int(r[1] if r[1] is not None else r[4]),
                    state=str(r[2]) if r[2] is not None else "absent",
                    blocks=bytes(r[3]) if r[3] is not None else None,
                )
                for r in rows
            ]

        return await self._run(body, write=False)

    async def chunk_users(self, chunk_ids: Sequence[str]) -> list[ChunkUse]:
        """The versions naming these chunks, each with its file's (last) path."""

        async def body(tx: Tx) -> list[ChunkUse]:
            uses: list[ChunkUse] = []
            folders: dict[int, str] = {}
            for start in range(0, len(chunk_ids), 500):
                batch = list(chunk_ids[start : start + 500])
                marks = ", ".join("?" for _ in batch)
                rows = await tx.fetchall(
                    "SELECT DISTINCT e.chunk_id, e.file_id, e.version, n.parent_id, n.name, "
                    "n.head_version, n.deleted_ns FROM extents e "
                    "JOIN nodes n ON n.drive = e.drive AND n.id = e.file_id "
                    f"WHERE e.drive = ? AND e.chunk_id IN ({marks}) "
                    "ORDER BY e.file_id, e.version, e.chunk_id",
                    (self.drive, *batch),
                )
                for chunk, file_id, version, parent_id, name, head, deleted_ns in rows:
                    if parent_id not in folders:
                        folders[parent_id] = await self._path_of(tx, parent_id)
                    path = posixpath.join(folders[parent_id], name)
                    deleted = deleted_ns is not None
                    uses.append(
                        ChunkUse(
                            chunk, file_id, version, path, head == version and not deleted, deleted
                        )
                    )
            return uses

        return await self._run(body, write=False)

    async def logical_bytes(self) -> int:
        """Bytes of every version of every file, as if nothing were shared."""

        async def body(tx: Tx) -> int:
            row = await tx.fetchone(
                "SELECT COALESCE(SUM(size), 0) FROM versions WHERE drive = ?", (self.drive,)
            )
            return int(row[0]) if row else 0

        return await self._run(body, write=False)

    # -- retention and garbage collection ----------------------------------------------------

    async def prune_versions(self, retention: Retention, now: float) -> int:
        """Delete versions no rule keeps. Returns how many went.

        A live file's head always stays; a deleted file (also one inside a removed
        folder) has no head to protect, so its history ages out by the same rules
        (``keep_last`` still keeps its last N).
        """
        if retention.keep_last is None and retention.keep_within is None:
            return 0

        async def body(tx: Tx) -> int:
            rows = await tx.fetchall(
                "SELECT v.file_id, v.version, v.created, n.head_version "
                "FROM versions v "
                "JOIN nodes n ON n.drive = v.drive AND n.id = v.file_id "
                "WHERE v.drive = ? ORDER BY v.file_id, v.version DESC",
                (self.drive,),
            )
            gone = await self._gone_ids(tx)
            doomed: list[tuple[int, int]] = []
            rank: dict[int, int] = {}
            for file_id, version, created, head in rows:
                rank[file_id] = rank.get(file_id, 0) + 1
                if version == head and file_id not in gone:
                    continue
                if retention.keep_last is not None and rank[file_id] <= retention.keep_last:
                    continue
                if retention.keep_within is not None and created >= now - retention.keep_within:
                    continue
                doomed.append((file_id, version))
            for file_id, version in doomed:
                for table in ("extents", "versions"):
                    await tx.execute(
                        f"DELETE FROM {table} WHERE drive = ? AND file_id = ? AND version = ?",
                        (self.drive, file_id, version),
                    )
            return len(doomed)

        return await self._run(body)

    async def _gone_ids(self, tx: Tx) -> set[int]:
        """Ids of nodes removed themselves or inside a removed folder."""
        rows = await tx.fetchall(
            "SELECT id, parent_id, deleted_ns FROM nodes WHERE drive = ?", (self.drive,)
        )
        parent = {r[0]: r[1] for r in rows}
        gone = {r[0] for r in rows if r[2] is not None}
        known: dict[int, bool] = {}

        def is_gone(node_id: int) -> bool:
            trail: list[int] = []
            cursor: int | None = node_id
            result = False
            while cursor is not None:
                if cursor in known:
                    result = known[cursor]
                    break
                trail.append(cursor)
                if cursor in gone:
                    result = True
                    break
                cursor = parent.get(cursor)
            for seen in trail:
                known[seen] = result
            return result

        return {node_id for node_id in parent if is_gone(node_id)}

    async def gc_candidates(self, cutoff: float) -> list[GcCandidate]:
        """Chunks no version references and nobody has held since ``cutoff``."""

        async def body(tx: Tx) -> list[GcCandidate]:
            rows = await tx.fetchall(
                "SELECT c.id, c.size FROM chunks c WHERE c.drive = ? AND c.held_until < ? "
                "AND NOT EXISTS (SELECT 1 FROM extents e WHERE e.drive = c.drive "
                "AND e.chunk_id = c.id) "
                "AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.drive = c.drive "
                "AND h.chunk_id = c.id AND h.until >= ?)",
                (self.drive, cutoff, time.time()),
            )
            return [GcCandidate(r[0], r[1]) for r in rows]

        return await self._run(body, write=False)

    async def begin_delete_chunk(self, chunk_id: str, cutoff: float) -> bool:
        """Mark a chunk as being deleted if it is still unreferenced, unheld and stale."""

        async def body(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE chunks SET state = 'deleting' "
                "WHERE drive = ? AND id = ? AND held_until < ? "
                "AND NOT EXISTS (SELECT 1 FROM extents e WHERE e.drive = ? AND e.chunk_id = ?) "
                "AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.drive = ? AND h.chunk_id = ? "
                "AND h.until >= ?)",
                (
                    self.drive,
                    chunk_id,
                    cutoff,
                    self.drive,
                    chunk_id,
                    self.drive,
                    chunk_id,
                    time.time(),
                ),
            )
            return changed == 1

        return await self._run(body)

    async def finish_delete_chunk(self, chunk_id: str) -> None:
        async def body(tx: Tx) -> None:
            deleted = await tx.execute(
                "DELETE FROM chunks WHERE drive = ? AND id = ? AND state = 'deleting'",
                (self.drive, chunk_id),
            )
            if deleted:
                # Counted once the bytes are gone: see record_put.
                await tx.execute(
                    "UPDATE drives SET chunk_deletions = chunk_deletions + 1 WHERE name = ?",
                    (self.drive,),
                )

        await self._run(body)

    async def deleting_chunks(self) -> list[str]:
        """Chunks whose deletion was begun but not finished (a GC that died midway)."""

        async def body(tx: Tx) -> list[str]:
            rows = await tx.fetchall(
                "SELECT id FROM chunks WHERE drive = ? AND state = 'deleting'", (self.drive,)
            )
            return [r[0] for r in rows]

        return await self._run(body, write=False)

    # -- dump and load -------------------------------------------------------------------------

    async def export_drive(self) -> DriveDump:
        """The drive's whole metadata in one read transaction: one consistent snapshot
        (SQLite's WAL keeps it for the reader; PostgreSQL runs it serializable)."""

        async def body(tx: Tx) -> DriveDump:
            row = await tx.fetchone(
                "SELECT settings, created, next_node, event_seq FROM drives WHERE name = ?",
                (self.drive,),
            )
            if row is None:
                raise DriveNotFound(f"drive {self.drive!r} does not exist in {self._where()}")
            dump = DriveDump(self.drive, row[0], float(row[1]), int(row[2]), int(row[3]))
            args = (self.drive,)
            nodes = await tx.fetchall(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE drive = ? ORDER BY id", args
            )
            dump.nodes = [_node(r) for r in nodes]
            versions = await tx.fetchall(
                f"SELECT {VERSION_COLUMNS} FROM versions WHERE drive = ? ORDER BY file_id, version",
                args,
            )
            dump.versions = [_version(r) for r in versions]
            extents = await tx.fetchall(
                "SELECT file_id, version, file_offset, length, chunk_id, chunk_offset "
                "FROM extents WHERE drive = ? ORDER BY file_id, version, idx",
                args,
            )
            dump.extents = [
                StoredExtent(r[0], r[1], Extent(r[2], r[3], r[4], r[5])) for r in extents
            ]
            chunks = await tx.fetchall(
                "SELECT id, size, state, blocks, held_until FROM chunks "
                "WHERE drive = ? ORDER BY id",
                args,
            )
            dump.chunks = [
                ChunkRecord(r[0], r[1], r[2], bytes(r[3]) if r[3] is not None else None, r[4])
                for r in chunks
            ]
            events = await tx.fetchall(
                "SELECT seq, kind, path, file_id, version, actor, created, detail FROM events "
                "WHERE drive = ? ORDER BY seq",
                args,
            )
            dump.events = [
                Event(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in events
            ]
            return dump

        return await self._run(body, write=False)

    async def import_drive(self, dump: DriveDump) -> None:
        """Make this drive from a dump, in one transaction, in a store that lacks it."""
        await self.migrate()

        async def body(tx: Tx) -> None:
            if await tx.fetchone("SELECT 1 FROM drives WHERE name = ?", (self.drive,)):
                raise AlreadyExists(f"drive {self.drive!r} already exists in {self._where()}")
            for table in ("nodes", "versions", "extents", "chunks", "events", "holds"):
                if await tx.fetchone(
                    f"SELECT 1 FROM {table} WHERE drive = ? LIMIT 1", (self.drive,)
                ):
                    raise AlreadyExists(
                        f"{self._where()} already holds {table} of a drive {self.drive!r}; "
                        "load into an empty metadata store"
                    )
            await tx.execute(
                "INSERT INTO drives (name, settings, next_node, event_seq, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.drive, dump.settings, dump.next_node, dump.event_seq, dump.created),
            )
            # Columns by name, so a column a later migration adds to both NODE_COLUMNS
            # and Node comes along without touching this.
            node_columns = [c.strip() for c in NODE_COLUMNS.split(",")]
            marks = ", ".join("?" for _ in node_columns)
            await tx.executemany(
                f"INSERT INTO nodes (drive, {NODE_COLUMNS}) VALUES (?, {marks})",
                [(self.drive, *(_plain(getattr(n, c)) for c in node_columns)) for n in dump.nodes],
            )
            version_columns = [c.strip() for c in VERSION_COLUMNS.split(",")]
            marks = ", ".join("?" for _ in version_columns)
            await tx.executemany(
                f"INSERT INTO versions (drive, {VERSION_COLUMNS}) VALUES (?, {marks})",
                [(self.drive, *(getattr(v, c) for c in version_columns)) for v in dump.versions],
            )
            rows: list[tuple[Any, ...]] = []
            idx = 0
            last: tuple[int, int] | None = None
            for stored in dump.extents:
                key = (stored.file_id, stored.version)
                idx = idx + 1 if key == last else 0
                last = key
                e = stored.extent
                rows.append((self.drive, *key, idx, e.offset, e.length, e.chunk_id, e.chunk_offset))
            await tx.executemany(
                "INSERT INTO extents "
                "(drive, file_id, version, idx, file_offset, length, chunk_id, chunk_offset) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            await tx.executemany(
                "INSERT INTO chunks (drive, id, size, state, held_until, blocks) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (self.drive, c.chunk_id, c.size, c.state, c.held_until, c.blocks)
                    for c in dump.chunks
                ],
            )
            await tx.executemany(
                "INSERT INTO events (drive, seq, kind, path, file_id, version, actor, created, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        self.drive,
                        e.seq,
                        e.kind,
                        e.path,
                        e.file_id,
                        e.version,
                        e.actor,
                        e.created,
                        json.dumps(e.detail),
                    )
                    for e in dump.events
                ],
            )

        await self._run(body)


def _plain(value: Any) -> Any:
    """Enum members as their values: drivers bind plain strings and numbers."""
    return value.value if isinstance(value, Enum) else value
