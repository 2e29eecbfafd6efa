"""The metadata-store contract: every engine passes the same tests.

Engines: SQLite (a file per test) and the real PostgreSQL server (a fresh
database per test). The tests use stores only through the ``MetaStore``
protocol (``mediadrive.core.meta.interface``), so any engine can run them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import posixpath
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from mediadrive.core.config import ConflictPolicy, DriveSettings, Retention
from mediadrive.core.errors import (
    AlreadyExists,
    ChunkMissing,
    ConflictError,
    DirectoryNotEmpty,
    DriveNotFound,
    InvalidPath,
    IsADirectory,
    LandingFailed,
    NotADirectory,
    NotFound,
    PathNotFound,
    SchemaError,
    StoreUnavailable,
    VersionNotFound,
)
from mediadrive.core.hashing import chunk_id
from mediadrive.core.meta import (
    CommitOutcome,
    CommitRequest,
    DeletedEntry,
    Extent,
    MetaStore,
    Node,
    NodeKind,
    connect,
)
from mediadrive.core.meta import sql as sql_engine
from mediadrive.core.meta.records import LandingChunk
from mediadrive.core.meta.schema import LATEST, MIGRATIONS
from tests.servers import create_database

ACTOR = "ana@render-01"
LWW = ConflictPolicy.LAST_WRITER_WINS


def raw_execute(url: str, sql: str) -> None:
    """Run one statement on the database behind ``url``, outside the store."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(urlsplit(url).path) as conn:
            conn.execute(sql)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
async def store(meta_url: str) -> AsyncIterator[MetaStore]:
    meta = connect(meta_url, "show")
    await meta.create_drive(DriveSettings())
    try:
        yield meta
    finally:
        await meta.close()


# -- helpers ----------------------------------------------------------------------------


async def stored_extents(meta: MetaStore, *payloads: bytes) -> list[Extent]:
    """Claim and store ``payloads`` as chunks; the extents of their concatenation."""
    extents = []
    offset = 0
    for data in payloads:
        extents.append(Extent(offset, len(data), chunk_id(data)))
        offset += len(data)
    fresh = {e.chunk_id: e.length for e in extents}
    await meta.claim_chunks([(cid, size, None) for cid, size in fresh.items()])
    await meta.mark_stored(list(fresh))
    return extents


async def resolve(meta: MetaStore, path: str) -> Node:
    node = await meta.resolve(path)
    assert node is not None, f"{path} does not resolve"
    return node


async def mkdir(meta: MetaStore, path: str) -> Node:
    parent_path, name = posixpath.split(path)
    parent = await resolve(meta, parent_path)
    return await meta.make_node(parent.id, parent_path, name, NodeKind.DIR, 0o755, ACTOR)


def request(
    parent: Node,
    path: str,
    base: int | None,
    extents: list[Extent],
    host: str = "render-01",
    author: str = ACTOR,
) -> CommitRequest:
    parent_path, name = posixpath.split(path)
    return CommitRequest(
        parent_id=parent.id,
        parent_path=parent_path,
        name=name,
        base_version=base,
        extents=extents,
        size=sum(e.length for e in extents),
        mode=0o644,
        mtime_ns=time.time_ns(),
        author=author,
        message=f"from {host}",
        host=host,
    )


async def commit(
    meta: MetaStore,
    path: str,
    base: int | None,
    *payloads: bytes,
    policy: ConflictPolicy = LWW,
    host: str = "render-01",
) -> CommitOutcome:
    extents = await stored_extents(meta, *payloads)
    parent = await resolve(meta, posixpath.dirname(path))
    return await meta.commit(request(parent, path, base, extents, host), policy)


async def all_events(meta: MetaStore) -> list[tuple[int, str, str]]:
    return [(e.seq, e.kind, e.path) for e in await meta.events_after(0)]


# -- schema and drive lifecycle ---------------------------------------------------------


async def test_migrate_is_idempotent(meta_url: str) -> None:
    meta = connect(meta_url, "show")
    try:
        assert await meta.migrate() == LATEST
        assert await meta.migrate() == LATEST
    finally:
        await meta.close()


async def test_create_then_open_returns_the_settings(meta_url: str) -> None:
    settings = DriveSettings(
        chunking="cdc",
        chunk_size="256KiB",
        conflict=ConflictPolicy.REJECT,
        retention=Retention(keep_last=5, keep_within=86400),
    )
    creator = connect(meta_url, "show")
    await creator.create_drive(settings)
    await creator.close()
    opener = connect(meta_url, "show")
    try:
        assert await opener.open_drive() == settings
        changed = settings.model_copy(update={"conflict": ConflictPolicy.KEEP_BOTH})
        await opener.update_settings(changed)
        assert await opener.open_drive() == changed
    finally:
        await opener.close()


async def test_create_twice_raises_already_exists(store: MetaStore, meta_url: str) -> None:
    with pytest.raises(AlreadyExists, match="show"):
        await store.create_drive(DriveSettings())
    again = connect(meta_url, "show")
    try:
        with pytest.raises(AlreadyExists):
            await again.create_drive(DriveSettings(conflict=ConflictPolicy.REJECT))
        # The first drive's settings are untouched.
        assert (await again.open_drive()).conflict is LWW
    finally:
        await again.close()


async def test_destroy_drive_removes_only_that_drive(store: MetaStore, meta_url: str) -> None:
    await commit(store, "/a.bin", None, b"show's bytes")
    other = connect(meta_url, "other")
    try:
        await other.create_drive(DriveSettings())
        await commit(other, "/b.bin", None, b"other's bytes")
        await store.destroy_drive()
        with pytest.raises(DriveNotFound, match="show"):
            await store.open_drive()
        assert await store.events_after(0) == []
        assert await store.chunk_stats() == (0, 0)
        # Another drive of the same database keeps everything.
        await other.open_drive()
        assert (await other.resolve("/b.bin")) is not None
        assert await other.chunk_stats() != (0, 0)
        # Destroying again is no error, and the name can be used anew.
        await store.destroy_drive()
        await store.create_drive(DriveSettings())
        assert await store.resolve("/a.bin") is None
    finally:
        await other.close()


async def test_unknown_drive_raises_drive_not_found(store: MetaStore, meta_url: str) -> None:
    other = connect(meta_url, "nosuch")
    try:
        with pytest.raises(DriveNotFound, match="nosuch"):
            await other.open_drive()
        # Nothing can be made in a drive that does not exist.
        with pytest.raises(NotFound):
            await other.make_node(1, "/", "x", NodeKind.DIR, 0o755, ACTOR)
    finally:
        await other.close()


async def test_open_before_migration_raises_schema_error(meta_url: str) -> None:
    meta = connect(meta_url, "show")
    try:
        # SQLite: the file is missing (and is not made); a server: its database is empty.
        with pytest.raises(
            (SchemaError, StoreUnavailable), match=r"is missing|holds no mediadrive metadata"
        ):
            await meta.open_drive()
    finally:
        await meta.close()


async def test_newer_schema_is_refused(store: MetaStore, meta_url: str) -> None:
    raw_execute(
        meta_url,
        f"INSERT INTO schema_migrations (version, applied) VALUES ({LATEST + 1}, 0)",
    )
    reopened = connect(meta_url, "show")
    try:
        with pytest.raises(SchemaError, match=f"version {LATEST + 1}"):
            await reopened.open_drive()
        with pytest.raises(SchemaError, match="newer"):
            await reopened.migrate()
        with pytest.raises(SchemaError):
            await reopened.create_drive(DriveSettings())
    finally:
        await reopened.close()


async def test_extents_stored_before_slices_existed_name_whole_chunks(
    store: MetaStore, meta_url: str
) -> None:
    first = await commit(store, "/old.bin", None, b"old", b"bytes")
    # The schema as it was before the migration that added slices (and the later
    # ones that added columns).
    slices = next(n for n, m in enumerate(MIGRATIONS, 1) if "chunk_offset" in "".join(m))
    raw_execute(meta_url, "ALTER TABLE extents DROP COLUMN chunk_offset")
    raw_execute(meta_url, "ALTER TABLE drives DROP COLUMN chunk_deletions")
    raw_execute(meta_url, f"DELETE FROM schema_migrations WHERE version >= {slices}")
    reopened = connect(meta_url, "show")
    try:
        assert await reopened.migrate() == LATEST
        _, extents = await reopened.version(first.file_id, first.version)
        assert [(e.offset, e.length, e.chunk_offset) for e in extents] == [(0, 3, 0), (3, 5, 0)]
    finally:
        await reopened.close()


async def test_one_database_holds_many_drives(store: MetaStore, meta_url: str) -> None:
    other = connect(meta_url, "other")
    try:
        await other.create_drive(DriveSettings(chunking="cdc"))
        await mkdir(store, "/only-in-show")
        await commit(other, "/only-in-other.txt", None, b"other")
        assert [n.name for n in await store.list_dir(1)] == ["only-in-show"]
        assert [n.name for n in await other.list_dir(1)] == ["only-in-other.txt"]
        # Sequence numbers are per drive.
        assert [e[0] for e in await all_events(store)] == [1]
        assert [e[0] for e in await all_events(other)] == [1]
        assert (await other.open_drive()).chunking == "cdc"
        assert (await store.open_drive()).chunking == "fixed"
        assert await store.chunk_stats() == (0, 0)
    finally:
        await other.close()


# -- the tree ---------------------------------------------------------------------------


async def test_special_nodes_keep_their_device_number_and_folders_count_subfolders(
    store: MetaStore,
) -> None:
    dev = await store.make_node(1, "/", "null", NodeKind.CHAR, 0o666, ACTOR, rdev=0x103)
    fifo = await store.make_node(1, "/", "pipe", NodeKind.FIFO, 0o600, ACTOR)
    assert dev.rdev == 0x103 and (await resolve(store, "/null")).rdev == 0x103
    assert (await resolve(store, "/pipe")).kind is NodeKind.FIFO and fifo.rdev == 0
    for kind in (NodeKind.BLOCK, NodeKind.SOCKET):
        made = await store.make_node(1, "/", kind.value, kind, 0o600, ACTOR, rdev=7)
        assert await store.get_node(made.id) == made
    shots = await mkdir(store, "/shots")
    await mkdir(store, "/shots/a")
    await mkdir(store, "/shots/b")
    await store.make_node(shots.id, "/shots", "f", NodeKind.FILE, 0o644, ACTOR)
    assert (await resolve(store, "/shots")).subdirs == 2
    assert (await store.get_node(1)).subdirs == 1  # type: ignore[union-attr]
    await store.remove(shots.id, "/shots", "b", ACTOR)
    listed = {n.name: n for n in await store.list_dir(1)}
    assert listed["shots"].subdirs == 1 and listed["null"].subdirs == 0


async def test_make_lookup_resolve_list(store: MetaStore) -> None:
    root = await resolve(store, "/")
    assert root.is_dir and root.parent_id is None
    shots = await mkdir(store, "/shots")
    assert shots.kind is NodeKind.DIR and shots.parent_id == root.id
    s010 = await mkdir(store, "/shots/010")
    link = await store.make_node(
        shots.id, "/shots", "latest", NodeKind.SYMLINK, 0o777, ACTOR, target="010"
    )
    empty = await store.make_node(shots.id, "/shots", "notes.txt", NodeKind.FILE, 0o640, ACTOR)

    assert link.target == "010" and link.size == 3
    assert await store.get_node(link.id) == link
    assert empty.head_version is None and empty.size == 0
    assert (await store.lookup(shots.id, "010")) == (await store.get_node(s010.id))
    assert await store.lookup(shots.id, "nope") is None
    assert (await resolve(store, "/shots/010")).id == s010.id
    assert await store.resolve("/shots/011") is None
    assert await store.resolve("/shots/notes.txt/deeper") is None
    assert [n.name for n in await store.list_dir(shots.id)] == ["010", "latest", "notes.txt"]
    assert [n.name for n in await store.list_dir(s010.id)] == []

    with pytest.raises(AlreadyExists):
        await mkdir(store, "/shots/010")
    with pytest.raises(PathNotFound):
        await store.make_node(9999, "/gone", "x", NodeKind.DIR, 0o755, ACTOR)
    with pytest.raises(NotADirectory):
        await store.make_node(empty.id, "/shots/notes.txt", "x", NodeKind.FILE, 0o644, ACTOR)

    kinds = [(kind, path) for _, kind, path in await all_events(store)]
    assert kinds == [
        ("mkdir", "/shots"),
        ("mkdir", "/shots/010"),
        ("symlink", "/shots/latest"),
        ("create", "/shots/notes.txt"),
    ]


async def test_make_and_remove_touch_the_folder_and_a_refusal_writes_nothing(
    store: MetaStore,
) -> None:
    shots = await mkdir(store, "/shots")
    sub = await mkdir(store, "/shots/sub")
    folder = await store.get_node(shots.id)
    assert folder is not None
    assert (folder.mtime_ns, folder.ctime_ns) == (sub.ctime_ns, sub.ctime_ns)
    plate = await store.make_node(sub.id, "/shots/sub", "plate.exr", NodeKind.FILE, 0o644, ACTOR)

    seq = await store.last_event_seq()
    before = {n.id: await store.get_node(n.id) for n in (shots, sub, plate)}
    refusals = [
        (AlreadyExists, store.make_node(shots.id, "/shots", "sub", NodeKind.DIR, 0o755, ACTOR)),
        (PathNotFound, store.make_node(9999, "/gone", "x", NodeKind.FILE, 0o644, ACTOR)),
        (
            NotADirectory,
            store.make_node(plate.id, "/shots/sub/plate.exr", "x", NodeKind.FILE, 0o644, ACTOR),
        ),
        (DirectoryNotEmpty, store.remove(shots.id, "/shots", "sub", ACTOR)),
        (IsADirectory, store.remove(shots.id, "/shots", "sub", ACTOR, folder=False)),
        (NotADirectory, store.remove(sub.id, "/shots/sub", "plate.exr", ACTOR, folder=True)),
        (PathNotFound, store.remove(shots.id, "/shots", "nope", ACTOR)),
    ]
    for error, refused in refusals:
        with pytest.raises(error):
            await refused
    assert await store.last_event_seq() == seq
    assert {n: await store.get_node(n) for n in before} == before
    # No node id was spent on a refusal.
    again = await store.make_node(sub.id, "/shots/sub", "b.exr", NodeKind.FILE, 0o644, ACTOR)
    assert again.id == plate.id + 1

    removed = await store.remove(sub.id, "/shots/sub", "b.exr", ACTOR, folder=False)
    assert removed.id == again.id and await store.lookup(sub.id, "b.exr") is None
    gone = await store.last_deleted(sub.id, "b.exr")
    after = await store.get_node(sub.id)
    assert gone is not None and after is not None and gone.deleted_ns is not None
    assert (after.mtime_ns, after.ctime_ns) == (gone.deleted_ns, gone.deleted_ns)
    assert removed.deleted_ns == gone.deleted_ns
    assert (await all_events(store))[-1][1:] == ("delete", "/shots/sub/b.exr")
    # A whole folder goes when asked to.
    await store.remove(shots.id, "/shots", "sub", ACTOR, recursive=True)
    assert await store.lookup(shots.id, "sub") is None


async def test_set_attrs(store: MetaStore) -> None:
    node = await mkdir(store, "/a")
    changed = await store.set_attrs(node.id, mode=0o700, uid=1000, mtime_ns=42)
    assert (changed.mode, changed.uid, changed.gid, changed.mtime_ns) == (0o700, 1000, 0, 42)
    assert await store.get_node(node.id) == changed
    with pytest.raises(PathNotFound):
        await store.set_attrs(12345, mode=0o600)


async def test_rename_moves_and_records_source(store: MetaStore) -> None:
    a = await mkdir(store, "/a")
    b = await mkdir(store, "/b")
    moved = await commit(store, "/a/f.txt", None, b"payload")
    node = await store.rename(a.id, "/a/f.txt", b.id, "/b/g.txt", ACTOR)
    assert (node.id, node.parent_id, node.name) == (moved.file_id, b.id, "g.txt")
    assert node.head_version == 1
    assert await store.resolve("/a/f.txt") is None
    assert (await resolve(store, "/b/g.txt")).id == moved.file_id
    event = (await store.events_after(0))[-1]
    assert (event.kind, event.path, event.detail["source"]) == ("rename", "/b/g.txt", "/a/f.txt")
    # Versions travel with the file.
    assert [v.version for v in await store.versions(moved.file_id)] == [1]


async def test_rename_replaces_an_existing_file(store: MetaStore) -> None:
    src = await commit(store, "/src.txt", None, b"new")
    dst = await commit(store, "/dst.txt", None, b"old")
    await store.rename(1, "/src.txt", 1, "/dst.txt", ACTOR)
    assert (await resolve(store, "/dst.txt")).id == src.file_id
    assert await store.resolve("/src.txt") is None
    assert [n.name for n in await store.list_dir(1)] == ["dst.txt"]
    # The replaced file is deleted but stays in history.
    replaced = await store.last_deleted(1, "dst.txt")
    assert replaced is not None and replaced.id == dst.file_id
    assert [v.version for v in await store.versions(dst.file_id)] == [1]


async def test_exchange_swaps_two_names_with_their_history(store: MetaStore) -> None:
    shots = await mkdir(store, "/shots")
    a = await commit(store, "/shots/a.exr", None, b"aaaa")
    b = await commit(store, "/b.exr", None, b"bb")
    at_b, at_a = await store.exchange(shots.id, "/shots/a.exr", 1, "/b.exr", ACTOR)
    assert (at_b.id, at_b.parent_id, at_b.name) == (a.file_id, 1, "b.exr")
    assert (at_a.id, at_a.parent_id, at_a.name) == (b.file_id, shots.id, "a.exr")
    assert (await resolve(store, "/b.exr")).size == 4
    assert (await resolve(store, "/shots/a.exr")).size == 2
    events = [(e.kind, e.path, e.detail["source"]) for e in (await store.events_after(0))[-2:]]
    assert events == [("rename", "/b.exr", "/shots/a.exr"), ("rename", "/shots/a.exr", "/b.exr")]
    # A folder and a file swap too; a folder never lands inside itself.
    folder, file = await store.exchange(1, "/shots", 1, "/b.exr", ACTOR)
    assert (folder.name, folder.is_dir, file.name) == ("b.exr", True, "shots")
    inner = await mkdir(store, "/b.exr/inner")
    await commit(store, "/b.exr/inner/x", None, b"x")
    with pytest.raises(InvalidPath):
        await store.exchange(1, "/b.exr", inner.id, "/b.exr/inner/x", ACTOR)
    with pytest.raises(PathNotFound):
        await store.exchange(1, "/nothing", 1, "/b.exr", ACTOR)


async def test_rename_refusals(store: MetaStore) -> None:
    a = await mkdir(store, "/a")
    ab = await mkdir(store, "/a/b")
    full = await mkdir(store, "/full")
    await mkdir(store, "/full/inside")
    await mkdir(store, "/empty")
    await commit(store, "/f.txt", None, b"f")
    await commit(store, "/g.txt", None, b"g")

    with pytest.raises(InvalidPath, match="into itself"):
        await store.rename(1, "/a", a.id, "/a/a2", ACTOR)
    with pytest.raises(InvalidPath, match="into itself"):
        await store.rename(1, "/a", ab.id, "/a/b/a", ACTOR)
    with pytest.raises(AlreadyExists):
        await store.rename(1, "/f.txt", 1, "/g.txt", ACTOR, replace=False)
    with pytest.raises(IsADirectory):
        await store.rename(1, "/f.txt", 1, "/empty", ACTOR)
    with pytest.raises(NotADirectory):
        await store.rename(1, "/a", 1, "/f.txt", ACTOR)
    with pytest.raises(DirectoryNotEmpty):
        await store.rename(1, "/a", 1, "/full", ACTOR)
    with pytest.raises(PathNotFound):
        await store.rename(1, "/missing", 1, "/x", ACTOR)
    with pytest.raises(PathNotFound):
        await store.rename(1, "/f.txt", 9999, "/gone/f.txt", ACTOR)
    with pytest.raises(NotADirectory):
        await store.rename(1, "/f.txt", (await resolve(store, "/g.txt")).id, "/g.txt/f", ACTOR)

    # Nothing changed, and no event was recorded for the refusals.
    assert [n.name for n in await store.list_dir(1)] == ["a", "empty", "f.txt", "full", "g.txt"]
    assert [n.name for n in await store.list_dir(full.id)] == ["inside"]
    assert all(kind != "rename" for _, kind, _ in await all_events(store))

    # A folder may replace an empty folder, and renaming onto itself is a no-op.
    moved = await store.rename(1, "/a", 1, "/empty", ACTOR)
    assert moved.id == a.id
    assert (await resolve(store, "/empty/b")).id == ab.id
    same = await store.rename(1, "/empty", 1, "/empty", ACTOR)
    assert same.id == a.id


async def test_remove(store: MetaStore) -> None:
    d = await mkdir(store, "/d")
    await commit(store, "/d/f.txt", None, b"x")
    await mkdir(store, "/e")
    with pytest.raises(DirectoryNotEmpty):
        await store.remove(1, "/", "d", ACTOR)
    with pytest.raises(PathNotFound):
        await store.remove(1, "/", "missing", ACTOR)
    removed = await store.remove(d.id, "/d", "f.txt", ACTOR)
    assert removed.head_version == 1
    assert await store.resolve("/d/f.txt") is None
    gone = await store.last_deleted(d.id, "f.txt")
    assert gone is not None and gone.id == removed.id and gone.deleted_ns is not None
    await store.remove(1, "/", "d", ACTOR)
    await store.remove(1, "/", "e", ACTOR)
    assert await store.list_dir(1) == []
    # The name is free again.
    again = await mkdir(store, "/d")
    assert again.id != d.id


async def test_remove_recursive(store: MetaStore) -> None:
    await mkdir(store, "/tree")
    await mkdir(store, "/tree/sub")
    await commit(store, "/tree/sub/leaf.bin", None, b"leaf")
    await store.remove(1, "/", "tree", ACTOR, recursive=True)
    assert await store.resolve("/tree") is None
    assert await store.resolve("/tree/sub/leaf.bin") is None
    assert await store.list_dir(1) == []


# -- versions and conflicts -------------------------------------------------------------


async def test_commit_makes_versions(store: MetaStore) -> None:
    await mkdir(store, "/clips")
    first = await commit(store, "/clips/a.mov", None, b"aaaa", b"bbbb")
    assert (first.path, first.version, first.conflict) == ("/clips/a.mov", 1, False)
    second = await commit(store, "/clips/a.mov", 1, b"aaaa", b"cccccc")
    assert (second.version, second.file_id, second.conflict) == (2, first.file_id, False)

    node = await resolve(store, "/clips/a.mov")
    assert (node.head_version, node.size, node.kind) == (2, 10, NodeKind.FILE)
    info, extents = await store.version(first.file_id, 1)
    assert (info.version, info.size, info.parent_version, info.author) == (1, 8, None, ACTOR)
    assert extents == [Extent(0, 4, chunk_id(b"aaaa")), Extent(4, 4, chunk_id(b"bbbb"))]
    info2, extents2 = await store.version(first.file_id, 2)
    assert info2.parent_version == 1 and info2.origin == "commit"
    assert [e.chunk_id for e in extents2] == [chunk_id(b"aaaa"), chunk_id(b"cccccc")]
    assert [v.version for v in await store.versions(first.file_id)] == [1, 2]
    with pytest.raises(VersionNotFound):
        await store.version(first.file_id, 3)
    assert await store.logical_bytes() == 18
    assert await store.chunk_stats() == (3, 14)


async def test_a_pod_tier_is_recorded_and_set_with_a_publish_event(store: MetaStore) -> None:
    await mkdir(store, "/clips")
    extents = await stored_extents(store, b"held")
    parent = await resolve(store, "/clips")
    req = dataclasses.replace(request(parent, "/clips/a.mov", None, extents), tier="pod:la")
    first = await store.commit(req, LWW)
    info, _ = await store.version(first.file_id, 1)
    assert info.tier == "pod:la"
    seq = await store.set_version_tier(
        first.file_id, 1, "cloud", "/clips/a.mov", ACTOR, chunks_sent=1, bytes_sent=4
    )
    info, _ = await store.version(first.file_id, 1)
    assert info.tier == "cloud"
    (event,) = [e for e in await store.events_after(0) if e.kind == "publish"]
    assert (event.seq, event.path, event.file_id, event.version) == (
        seq,
        "/clips/a.mov",
        first.file_id,
        1,
    )
    assert event.detail == {"chunks_sent": 1, "bytes_sent": 4}
    before = await store.last_event_seq()
    with pytest.raises(VersionNotFound):
        await store.set_version_tier(first.file_id, 9, "cloud", "/clips/a.mov", ACTOR)
    # Nothing is recorded for a version that is not there.
    assert await store.last_event_seq() == before


async def test_versions_in_tier_lists_old_pod_versions_with_their_paths(store: MetaStore) -> None:
    await mkdir(store, "/clips")
    parent = await resolve(store, "/clips")
    made = []
    for name, tier in (("a.mov", "pod:la"), ("b.mov", "cloud"), ("c_%.mov", "pod:ny")):
        extents = await stored_extents(store, name.encode())
        req = request(parent, f"/clips/{name}", None, extents)
        made.append(await store.commit(dataclasses.replace(req, tier=tier), LWW))
    a, _, c = made
    second = await store.commit(
        dataclasses.replace(
            request(parent, "/clips/a.mov", 1, await stored_extents(store, b"a2")), tier="pod:la"
        ),
        LWW,
    )
    cutoff = time.time() + 1
    found = await store.versions_in_tier("pod:", cutoff)
    assert [(t.path, t.info.version, t.info.tier, t.head) for t in found] == [
        ("/clips/a.mov", 1, "pod:la", False),
        ("/clips/c_%.mov", 1, "pod:ny", True),
        ("/clips/a.mov", 2, "pod:la", True),
    ]
    assert [t.info.file_id for t in found] == [a.file_id, c.file_id, second.file_id]
    assert [t.path for t in await store.versions_in_tier("pod:ny", cutoff)] == ["/clips/c_%.mov"]
    assert len(await store.versions_in_tier("pod:", cutoff, limit=1)) == 1
    # Made after the time asked for: not listed.
    assert await store.versions_in_tier("pod:", 0.0) == []
    # A LIKE wildcard in the prefix matches only itself.
    assert await store.versions_in_tier("pod%", cutoff) == []
    await store.set_version_tier(a.file_id, 1, "cloud", "/clips/a.mov", ACTOR)
    await store.remove(parent.id, "/clips", "c_%.mov", ACTOR)
    found = await store.versions_in_tier("pod:", cutoff)
    assert [(t.path, t.info.version, t.deleted) for t in found] == [
        ("/clips/c_%.mov", 1, True),
        ("/clips/a.mov", 2, False),
    ]


async def test_label_version_replaces_only_automatic_messages(store: MetaStore) -> None:
    await mkdir(store, "/clips")
    first = await commit(store, "/clips/a.mov", None, b"aaaa")
    auto = ("from render-01", "checkpoint")
    assert await store.label_version(first.file_id, 1, "final cut", replaceable=auto)
    info, _ = await store.version(first.file_id, 1)
    assert info.message == "final cut"
    # A message someone gave is never overwritten; an unknown version changes nothing.
    assert not await store.label_version(first.file_id, 1, "other", replaceable=auto)
    assert not await store.label_version(first.file_id, 9, "other", replaceable=auto)
    info, _ = await store.version(first.file_id, 1)
    assert info.message == "final cut"


async def test_commit_of_an_empty_file_and_to_a_folder(store: MetaStore) -> None:
    empty = await commit(store, "/empty.bin", None)
    assert empty.version == 1
    _, extents = await store.version(empty.file_id, 1)
    assert extents == []
    await mkdir(store, "/dir")
    with pytest.raises(IsADirectory):
        await commit(store, "/dir", None, b"x")
    root = await resolve(store, "/")
    await store.remove(1, "/", "dir", ACTOR)
    parent_gone = request(root, "/dir/x", None, await stored_extents(store, b"x"))
    dir_node = await store.last_deleted(1, "dir")
    assert dir_node is not None
    with pytest.raises(PathNotFound):
        await store.commit(dataclasses.replace(parent_gone, parent_id=dir_node.id), LWW)


async def test_commit_requires_stored_chunks(store: MetaStore) -> None:
    root = await resolve(store, "/")
    never = Extent(0, 5, chunk_id(b"never"))
    with pytest.raises(ChunkMissing):
        await store.commit(request(root, "/x.bin", None, [never]), LWW)
    # Claimed but not yet stored is not enough either.
    (claim,) = await store.claim_chunks([(chunk_id(b"pending"), 7, None)])
    assert claim.state == "pending"
    pending = Extent(0, 7, chunk_id(b"pending"))
    with pytest.raises(ChunkMissing):
        await store.commit(request(root, "/x.bin", None, [pending]), LWW)
    # One good chunk does not carry a missing one.
    (good,) = await stored_extents(store, b"good")
    with pytest.raises(ChunkMissing):
        await store.commit(request(root, "/x.bin", None, [good, Extent(4, 5, never.chunk_id)]), LWW)
    assert await store.resolve("/x.bin") is None
    assert await all_events(store) == []
    await store.mark_stored([pending.chunk_id])
    outcome = await store.commit(request(root, "/x.bin", None, [pending]), LWW)
    assert outcome.version == 1


async def test_last_writer_wins_keeps_the_loser_in_history(store: MetaStore) -> None:
    first = await commit(store, "/cut.mov", None, b"v1")
    winner = await commit(store, "/cut.mov", 1, b"from-a", host="render-a")
    late = await commit(store, "/cut.mov", 1, b"from-b", host="render-b")
    assert (winner.version, winner.conflict) == (2, False)
    assert (late.path, late.file_id, late.version) == ("/cut.mov", first.file_id, 3)
    assert late.conflict and late.previous_head == 2
    info, extents = await store.version(first.file_id, 3)
    assert extents[0].chunk_id == chunk_id(b"from-b")
    assert info.parent_version == 2
    assert [v.version for v in await store.versions(first.file_id)] == [1, 2, 3]
    conflicts = [e for e in await store.events_after(0) if e.kind == "conflict"]
    assert len(conflicts) == 1
    assert conflicts[0].path == "/cut.mov"
    assert conflicts[0].detail == {"policy": "last-writer-wins", "base": 1, "head": 2}


async def test_new_file_created_twice_is_a_conflict(store: MetaStore) -> None:
    await commit(store, "/new.txt", None, b"a")
    late = await commit(store, "/new.txt", None, b"b")
    assert late.conflict and late.version == 2 and late.previous_head == 1


async def test_keep_both_lands_the_loser_beside(store: MetaStore) -> None:
    keep = ConflictPolicy.KEEP_BOTH
    first = await commit(store, "/cut.mov", None, b"v1", policy=keep)
    await commit(store, "/cut.mov", 1, b"from-a", policy=keep, host="render-a")
    late = await commit(store, "/cut.mov", 1, b"from-b", policy=keep, host="render-b")
    assert late.conflict
    assert late.path.startswith("/cut (conflict from render-b at ")
    assert late.path.endswith(").mov")
    assert late.file_id != first.file_id and late.version == 1

    head = await resolve(store, "/cut.mov")
    assert head.head_version == 2
    sibling = await resolve(store, late.path)
    assert sibling.id == late.file_id
    _, extents = await store.version(sibling.id, 1)
    assert extents[0].chunk_id == chunk_id(b"from-b")
    _, head_extents = await store.version(head.id, 2)
    assert head_extents[0].chunk_id == chunk_id(b"from-a")

    # A third writer from the same stale base gets a name of its own.
    third = await commit(store, "/cut.mov", 1, b"from-c", policy=keep, host="render-b")
    assert third.path not in (late.path, "/cut.mov")
    assert len(await store.list_dir(1)) == 3

    conflicts = [e for e in await store.events_after(0) if e.kind == "conflict"]
    assert [c.detail["kept_as"] for c in conflicts] == [late.path, third.path]
    assert all(c.detail["policy"] == "keep-both" for c in conflicts)


async def test_reject_raises_and_changes_nothing_but_the_log(store: MetaStore) -> None:
    reject = ConflictPolicy.REJECT
    first = await commit(store, "/cut.mov", None, b"v1", policy=reject)
    await commit(store, "/cut.mov", 1, b"from-a", policy=reject)
    before = await store.last_event_seq()
    with pytest.raises(ConflictError, match="reject"):
        await commit(store, "/cut.mov", 1, b"from-b", policy=reject)
    node = await resolve(store, "/cut.mov")
    assert node.head_version == 2
    assert [v.version for v in await store.versions(first.file_id)] == [1, 2]
    assert [n.name for n in await store.list_dir(1)] == ["cut.mov"]
    events = await store.events_after(before)
    assert [(e.seq, e.kind, e.path) for e in events] == [(before + 1, "conflict", "/cut.mov")]
    assert events[0].detail == {"policy": "reject", "base": 1, "head": 2}
    # The writer may try again from the new head.
    again = await commit(store, "/cut.mov", 2, b"from-b", policy=reject)
    assert (again.version, again.conflict) == (3, False)


async def test_recommit_after_delete_revives_the_name(store: MetaStore) -> None:
    first = await commit(store, "/f.txt", None, b"one")
    await store.remove(1, "/", "f.txt", ACTOR)
    fresh = await commit(store, "/f.txt", None, b"two")
    assert fresh.file_id != first.file_id and fresh.version == 1 and not fresh.conflict


# -- chunks -----------------------------------------------------------------------------


async def test_claim_and_mark_stored(store: MetaStore) -> None:
    a, b = chunk_id(b"a"), chunk_id(b"b")
    claims = await store.claim_chunks([(a, 1, b"\x01" * 32), (b, 1, None)])
    assert [(c.chunk_id, c.state) for c in claims] == [(a, "pending"), (b, "pending")]
    assert await store.chunk_stats() == (0, 0)
    await store.mark_stored([a])
    claims = await store.claim_chunks([(a, 1, None), (b, 1, b"\x02" * 32)])
    assert [c.state for c in claims] == ["stored", "pending"]
    assert await store.chunk_stats() == (1, 1)
    # Block digests recorded first are kept; a later claim fills them in only if missing.
    assert await store.chunk_blocks(a) == b"\x01" * 32
    assert await store.chunk_blocks(b) == b"\x02" * 32
    assert await store.chunk_blocks(chunk_id(b"unknown")) is None
    # Marking an unknown chunk stored does not invent it.
    await store.mark_stored([chunk_id(b"unknown")])
    assert await store.chunk_stats() == (1, 1)


# -- events -----------------------------------------------------------------------------


async def test_event_sequence_is_gapless(store: MetaStore) -> None:
    await mkdir(store, "/a")
    await commit(store, "/a/f", None, b"1")
    with pytest.raises(AlreadyExists):
        await mkdir(store, "/a")  # a failed change takes no number
    await store.rename(1, "/a", 1, "/b", ACTOR)
    await store.remove((await resolve(store, "/b")).id, "/b", "f", ACTOR)
    seq = await store.record_event("publish", "/b", ACTOR, None, None, tier="cloud")
    events = await store.events_after(0)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.kind for e in events] == ["mkdir", "commit", "rename", "delete", "publish"]
    assert seq == 5 == await store.last_event_seq()
    assert events[1].version == 1 and events[1].detail["size"] == 1
    assert events[4].detail == {"tier": "cloud"}
    assert all(e.actor == ACTOR for e in events)
    assert [e.seq for e in await store.events_after(3)] == [4, 5]
    assert [e.seq for e in await store.events_after(1, limit=2)] == [2, 3]
    assert await store.events_after(5) == []
    assert events == sorted(events, key=lambda e: e.created)


async def test_event_sequence_is_gapless_under_concurrent_writers(
    store: MetaStore, meta_url: str
) -> None:
    second = connect(meta_url, "show")
    try:
        await second.open_drive()

        async def make(meta: MetaStore, name: str) -> None:
            await meta.make_node(1, "/", name, NodeKind.DIR, 0o755, ACTOR)

        await asyncio.gather(
            *(make(store, f"s{i}") for i in range(12)),
            *(make(second, f"t{i}") for i in range(12)),
        )
        events = await second.events_after(0)
        assert [e.seq for e in events] == list(range(1, 25))
        assert sorted(e.path for e in events) == sorted(
            [f"/s{i}" for i in range(12)] + [f"/t{i}" for i in range(12)]
        )
        assert len(await store.list_dir(1)) == 24
    finally:
        await second.close()


async def test_follow_events_sees_new_events(store: MetaStore) -> None:
    await mkdir(store, "/before")
    seen: list[str] = []

    async def follow() -> None:
        async for event in store.follow_events(0, poll=0.02):
            seen.append(event.path)
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await mkdir(store, "/after")
    await asyncio.wait_for(task, timeout=10)
    assert seen == ["/before", "/after"]


# -- retention and garbage collection ---------------------------------------------------


async def _file_with_versions(meta: MetaStore, path: str, count: int) -> int:
    file_id = 0
    for n in range(1, count + 1):
        outcome = await commit(meta, path, n - 1 or None, f"{path} v{n}".encode())
        file_id = outcome.file_id
    return file_id


async def test_prune_keep_last(store: MetaStore) -> None:
    f = await _file_with_versions(store, "/f", 5)
    g = await _file_with_versions(store, "/g", 2)
    assert await store.prune_versions(Retention(), time.time()) == 0
    assert await store.prune_versions(Retention(keep_last=2), time.time()) == 3
    assert [v.version for v in await store.versions(f)] == [4, 5]
    assert [v.version for v in await store.versions(g)] == [1, 2]
    with pytest.raises(VersionNotFound):
        await store.version(f, 1)
    assert await store.prune_versions(Retention(keep_last=1), time.time()) == 2
    assert [v.version for v in await store.versions(f)] == [5]
    assert [v.version for v in await store.versions(g)] == [2]
    assert await store.prune_versions(Retention(keep_last=1), time.time()) == 0


async def test_prune_keep_within(store: MetaStore) -> None:
    f = await _file_with_versions(store, "/f", 3)
    await asyncio.sleep(0.05)
    middle = time.time()
    await asyncio.sleep(0.05)
    await commit(store, "/f", 3, b"v4")
    await commit(store, "/f", 4, b"v5")
    now = middle + 1000.0
    # Versions younger than 1000 s at ``now`` are those made after ``middle``.
    assert await store.prune_versions(Retention(keep_within=1000.0), now) == 3
    assert [v.version for v in await store.versions(f)] == [4, 5]
    # Far in the future only the head is left, whatever its age.
    assert await store.prune_versions(Retention(keep_within=60.0), now + 10**6) == 1
    assert [v.version for v in await store.versions(f)] == [5]


async def test_prune_rules_combine_as_either_keeps(store: MetaStore) -> None:
    f = await _file_with_versions(store, "/f", 4)
    now = time.time()
    # keep_last=2 alone would drop 1 and 2; keep_within keeps everything recent.
    both = Retention(keep_last=2, keep_within=3600.0)
    assert await store.prune_versions(both, now) == 0
    assert await store.prune_versions(both, now + 7200.0) == 2
    assert [v.version for v in await store.versions(f)] == [3, 4]


async def test_gc_candidates_and_deletion(store: MetaStore) -> None:
    await commit(store, "/f", None, b"shared", b"only-v1")
    await commit(store, "/f", 1, b"shared", b"only-v2")
    orphan = chunk_id(b"orphan")
    held = chunk_id(b"held")
    await store.claim_chunks([(orphan, 6, None)], hold=0)
    await store.mark_stored([orphan])
    await store.claim_chunks([(held, 4, None)])  # the default hold: an upload in flight
    await store.mark_stored([held])

    later = time.time() + 1
    # Everything was touched just now: a grace period of an hour protects all.
    assert await store.gc_candidates(time.time() - 3600) == []
    assert {c.chunk_id for c in await store.gc_candidates(later)} == {orphan}

    assert await store.prune_versions(Retention(keep_last=1), time.time()) == 1
    candidates = {c.chunk_id: c.size for c in await store.gc_candidates(later)}
    assert candidates == {orphan: 6, chunk_id(b"only-v1"): 7}

    # Referenced and held chunks cannot be marked for deletion.
    assert not await store.begin_delete_chunk(chunk_id(b"shared"), later)
    assert not await store.begin_delete_chunk(held, later)
    assert await store.begin_delete_chunk(orphan, later)
    assert await store.deleting_chunks() == [orphan]
    (busy,) = await store.claim_chunks([(orphan, 6, None)])
    assert busy.state == "busy"
    await store.finish_delete_chunk(orphan)
    assert await store.deleting_chunks() == []
    (fresh,) = await store.claim_chunks([(orphan, 6, None)])
    assert fresh.state == "pending"
    assert await store.chunk_stats() == (4, len(b"shared" + b"only-v1" + b"only-v2" + b"held"))


async def test_a_chunk_put_before_its_claim_is_stored_and_held_in_one_call(
    store: MetaStore,
) -> None:
    cid = chunk_id(b"sent ahead")
    seen = await store.chunk_deletions()
    state, now = await store.record_put(cid, 10, b"\x03" * 32, seen, token="t")
    assert (state, now) == ("stored", seen)
    assert await store.chunk_stats() == (1, 10)
    assert await store.chunk_blocks(cid) == b"\x03" * 32
    assert await store.held_unreferenced() == 1
    # Held: GC can neither list nor take it, whatever the grace period.
    assert await store.gc_candidates(time.time() + 1) == []
    assert not await store.begin_delete_chunk(cid, time.time() + 1)
    # Already stored: a second put-then-record keeps it stored.
    assert (await store.record_put(cid, 10, None, seen, token="u"))[0] == "stored"


async def test_a_put_that_a_gc_deletion_may_have_undone_is_left_pending(
    store: MetaStore,
) -> None:
    cid = chunk_id(b"doomed then sent again")
    seen = await store.chunk_deletions()
    await store.claim_chunks([(cid, 6, None)], hold=0)
    await store.mark_stored([cid])
    assert await store.begin_delete_chunk(cid, time.time() + 1)
    # While GC deletes the bytes the chunk cannot be recorded.
    assert (await store.record_put(cid, 6, None, seen))[0] == "busy"
    await store.finish_delete_chunk(cid)
    assert await store.chunk_deletions() == seen + 1
    # A put that began before that deletion ended may be what it deleted: pending
    # (held, to be put again), never stored.
    state, now = await store.record_put(cid, 6, None, seen, token="t")
    assert (state, now) == ("pending", seen + 1)
    assert await store.chunk_stats() == (0, 0)
    assert await store.held_unreferenced() == 1
    await store.mark_stored([cid])
    assert await store.chunk_stats() == (1, 6)
    # A put that began after it (the count read then) is stored at once.
    other = chunk_id(b"sent after the deletion")
    assert (await store.record_put(other, 5, None, now))[0] == "stored"


async def test_strays_are_told_from_recorded_chunks_and_recorded_for_gc(
    store: MetaStore,
) -> None:
    kept, sound, bad, taken = (chunk_id(b"stray %d" % i) for i in range(4))
    await store.claim_chunks([(kept, 7, None)], hold=0)
    await store.mark_stored([kept])
    many = [chunk_id(b"%d" % i) for i in range(1200)]  # more than one batch
    assert await store.unrecorded([sound, kept, bad, *many]) == [sound, bad, *many]
    seen = await store.chunk_deletions()
    assert await store.record_stray(sound, 9, b"\x01" * 32, seen)
    assert await store.record_stray(bad, 5, None, seen)
    # A row now: recorded once only.
    assert not await store.record_stray(sound, 9, b"\x01" * 32, seen)
    assert await store.unrecorded([sound, kept, bad]) == []
    assert await store.chunk_blocks(sound) == b"\x01" * 32
    # Stored and damaged alike count as bytes the store keeps; the damaged one is
    # uploaded again by the next claim of its bytes.
    assert await store.chunk_stats() == (3, 7 + 9 + 5)
    (claim,) = await store.claim_chunks([(bad, 5, None)], hold=0)
    assert claim.state == "pending"
    # Nobody holds them and no version names them: GC collects them after its grace.
    cutoff = time.time() + 1
    assert {c.chunk_id for c in await store.gc_candidates(cutoff)} >= {sound, kept}
    assert await store.begin_delete_chunk(sound, cutoff)
    await store.finish_delete_chunk(sound)
    # A deletion finished after the count was read: what was read may be gone.
    assert not await store.record_stray(taken, 4, b"\x02" * 32, seen)
    assert await store.unrecorded([taken]) == [taken]


# -- a commit that records chunks still being put ------------------------------------


async def landing_commit(
    meta: MetaStore, path: str, data: bytes, landed: asyncio.Future[None], seen: int | None = None
) -> tuple[asyncio.Task[CommitOutcome], str]:
    """Start a commit of ``data`` as one chunk whose put ends with ``landed``."""
    cid = chunk_id(data)
    if seen is None:
        seen = await meta.chunk_deletions()
    parent = await resolve(meta, posixpath.dirname(path))
    req = dataclasses.replace(
        request(parent, path, None, [Extent(0, len(data), cid)]),
        landing=(LandingChunk(cid, len(data), b"\x07" * 32, seen, "file-token"),),
    )
    return asyncio.create_task(meta.commit(req, LWW, landed)), cid


async def test_a_commit_records_chunks_being_put_once_their_puts_land(
    store: MetaStore,
) -> None:
    put: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task, cid = await landing_commit(store, "/edit.bin", b"edit bytes", put)
    await asyncio.sleep(0.1)
    # Prepared, not committed: nobody sees the version or the chunk yet.
    assert not task.done()
    assert await store.resolve("/edit.bin") is None
    assert await store.chunk_stats() == (0, 0)
    put.set_result(None)
    outcome = await asyncio.wait_for(task, 10)
    assert (outcome.path, outcome.version) == ("/edit.bin", 1)
    assert await store.chunk_stats() == (1, len(b"edit bytes"))
    assert await store.chunk_blocks(cid) == b"\x07" * 32
    _, extents = await store.version(outcome.file_id, 1)
    assert [e.chunk_id for e in extents] == [cid]


async def test_a_commit_whose_put_fails_records_nothing(store: MetaStore) -> None:
    put: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task, _ = await landing_commit(store, "/edit.bin", b"never arrives", put)
    await asyncio.sleep(0.05)
    put.set_exception(StoreUnavailable("S3 store refused"))
    with pytest.raises(LandingFailed, match="S3 store refused"):
        await asyncio.wait_for(task, 10)
    assert await store.resolve("/edit.bin") is None
    assert await store.chunk_stats() == (0, 0)
    # The store goes on: the same commit, once its bytes are stored, lands.
    assert (await commit(store, "/edit.bin", None, b"never arrives")).version == 1


async def test_a_commit_lets_go_of_a_put_that_takes_too_long(
    store: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_engine, "LANDING_PATIENCE", 0.2)
    put: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task, _ = await landing_commit(store, "/slow.bin", b"slow", put)
    # Another writer meanwhile waits at most that long, and then goes on.
    made = asyncio.create_task(mkdir(store, "/renders"))
    with pytest.raises(LandingFailed, match="still under way"):
        await asyncio.wait_for(task, 10)
    assert (await asyncio.wait_for(made, 10)).name == "renders"
    assert await store.resolve("/slow.bin") is None
    assert await store.chunk_stats() == (0, 0)
    put.set_result(None)


async def test_a_commit_does_not_record_a_put_a_gc_deletion_may_have_undone(
    store: MetaStore,
) -> None:
    seen = await store.chunk_deletions()
    doomed = chunk_id(b"deleted meanwhile")
    await store.claim_chunks([(doomed, 17, None)], hold=0)
    await store.mark_stored([doomed])
    assert await store.begin_delete_chunk(doomed, time.time() + 1)
    await store.finish_delete_chunk(doomed)
    put: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    put.set_result(None)
    # The put began before that deletion ended (the count read then): not recorded.
    task, _ = await landing_commit(store, "/late.bin", b"deleted meanwhile", put, seen)
    with pytest.raises(LandingFailed, match="GC"):
        await asyncio.wait_for(task, 10)
    assert await store.resolve("/late.bin") is None
    assert await store.chunk_stats() == (0, 0)


async def test_writes_during_a_landing_commit_wait_and_then_go_through(
    store: MetaStore,
) -> None:
    put: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task, _ = await landing_commit(store, "/edit.bin", b"edit", put)
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(mkdir(store, f"/shot{i}")) for i in range(3)]
    await asyncio.sleep(0.1)
    put.set_result(None)
    assert (await asyncio.wait_for(task, 10)).version == 1
    made = await asyncio.wait_for(asyncio.gather(*others), 30)
    assert sorted(node.name for node in made) == ["shot0", "shot1", "shot2"]
    assert [n.name for n in await store.list_dir((await resolve(store, "/")).id)] == [
        "edit.bin",
        "shot0",
        "shot1",
        "shot2",
    ]


async def test_a_put_replaces_a_damaged_chunk(store: MetaStore) -> None:
    done = await commit(store, "/a.bin", None, b"good bytes")
    (extent,) = (await store.version(done.file_id, done.version))[1]
    assert await store.mark_damaged([extent.chunk_id]) == 1
    seen = await store.chunk_deletions()
    state, _ = await store.record_put(extent.chunk_id, extent.length, b"\x05" * 32, seen)
    assert state == "stored"
    assert await store.chunk_blocks(extent.chunk_id) == b"\x05" * 32
    await store.commit(request(await resolve(store, "/"), "/b.bin", None, [extent]), LWW)


async def test_commit_loses_to_a_chunk_being_deleted(store: MetaStore) -> None:
    extents = await stored_extents(store, b"doomed")
    later = time.time() + 1
    await store.claim_chunks([(extents[0].chunk_id, 6, None)], hold=0)
    assert await store.begin_delete_chunk(extents[0].chunk_id, later)
    root = await resolve(store, "/")
    with pytest.raises(ChunkMissing):
        await store.commit(request(root, "/f", None, extents), LWW)
    assert await store.resolve("/f") is None


async def test_a_commit_never_lands_on_a_chunk_gc_took(store: MetaStore) -> None:
    # Writer B's upload finds the chunk already stored and claims it for its commit.
    await commit(store, "/a", None, b"common")
    (claim,) = await store.claim_chunks([(chunk_id(b"common"), 6, None)])
    assert claim.state == "stored"
    # Meanwhile writer A commits it again, replaces it, and retention drops both
    # versions. Whether GC may take the chunk now is the engine's call (a commit
    # refreshes holds); what must never happen is B's version naming a deleted chunk.
    await commit(store, "/a", 1, b"common")
    await commit(store, "/a", 2, b"other")
    assert await store.prune_versions(Retention(keep_last=1), time.time()) == 2
    taken = await store.begin_delete_chunk(chunk_id(b"common"), time.time() + 1)
    root = await resolve(store, "/")
    extents = [Extent(0, 6, chunk_id(b"common"))]
    if taken:
        await store.finish_delete_chunk(chunk_id(b"common"))
        with pytest.raises(ChunkMissing):
            await store.commit(request(root, "/b", None, extents), LWW)
        assert await store.resolve("/b") is None
        assert await store.chunk_stats() == (1, len(b"other"))
    else:
        assert (await store.commit(request(root, "/b", None, extents), LWW)).version == 1


async def test_hold_chunks_extends_a_hold(store: MetaStore) -> None:
    cid = chunk_id(b"long upload")
    await store.claim_chunks([(cid, 11, None)], hold=0)
    soon = time.time() + 1
    assert [c.chunk_id for c in await store.gc_candidates(soon)] == [cid]
    await store.hold_chunks([cid], hold=600)
    assert await store.gc_candidates(soon) == []
    assert not await store.begin_delete_chunk(cid, soon)


async def test_commit_by_file_id_follows_a_rename(store: MetaStore) -> None:
    root = await resolve(store, "/")
    first = await store.commit(
        request(root, "/cut.mov", None, await stored_extents(store, b"take one")),
        ConflictPolicy.LAST_WRITER_WINS,
    )
    shots = await mkdir(store, "/shots")
    await store.rename(root.id, "/cut.mov", shots.id, "/shots/final.mov", ACTOR)
    # The writer still knows the old name, and the file's id.
    stale = dataclasses.replace(
        request(root, "/cut.mov", 1, await stored_extents(store, b"take two")),
        file_id=first.file_id,
    )
    outcome = await store.commit(stale, ConflictPolicy.LAST_WRITER_WINS)
    assert (outcome.path, outcome.file_id, outcome.version) == (
        "/shots/final.mov",
        first.file_id,
        2,
    )
    assert outcome.conflict is False
    assert await store.resolve("/cut.mov") is None


async def test_a_deleted_file_ages_out_by_the_same_rules(store: MetaStore) -> None:
    await commit(store, "/gone.exr", None, b"old frame")
    await commit(store, "/kept.exr", None, b"live frame")
    root = await resolve(store, "/")
    await store.remove(root.id, "/", "gone.exr", ACTOR)
    later = time.time() + 7200
    # keep_last still keeps a deleted file's last version...
    assert await store.prune_versions(Retention(keep_last=1), later) == 0
    # ...but a deleted file has no head to protect from keep_within.
    assert await store.prune_versions(Retention(keep_within=3600), later) == 1
    gone = await store.last_deleted(root.id, "gone.exr")
    assert gone is not None and await store.versions(gone.id) == []
    kept = await resolve(store, "/kept.exr")
    assert [v.version for v in await store.versions(kept.id)] == [1]


# -- history of deleted paths -------------------------------------------------------------


async def test_history_walks_through_removed_folders(store: MetaStore) -> None:
    await mkdir(store, "/folder")
    await mkdir(store, "/folder/sub")
    first = await commit(store, "/folder/sub/f.txt", None, b"one")
    await commit(store, "/folder/sub/f.txt", 1, b"two")
    await store.remove(1, "/", "folder", ACTOR, recursive=True)
    assert await store.resolve("/folder/sub/f.txt") is None
    (folder,) = await store.history("/folder")
    assert folder.deleted_ns is not None
    # The file's own row was never marked: it counts as deleted when its folder went.
    (old,) = await store.history("/folder/sub/f.txt")
    assert (old.id, old.head_version, old.deleted_ns) == (first.file_id, 2, folder.deleted_ns)
    assert [v.version for v in await store.versions(old.id)] == [1, 2]

    # A new folder of that name hides nothing; a new file there comes first.
    again = await mkdir(store, "/folder")
    assert [n.id for n in await store.history("/folder")] == [again.id, folder.id]
    assert [n.id for n in await store.history("/folder/sub/f.txt")] == [first.file_id]
    await mkdir(store, "/folder/sub")
    fresh = await commit(store, "/folder/sub/f.txt", None, b"new")
    found = await store.history("/folder/sub/f.txt")
    assert [(n.id, n.deleted_ns is None) for n in found] == [
        (fresh.file_id, True),
        (first.file_id, False),
    ]
    assert await store.history("/nothing/f.txt") == []
    assert await store.history("/folder/sub/f.txt/below") == []


async def test_history_keeps_a_file_replaced_by_a_rename(store: MetaStore) -> None:
    replaced = await commit(store, "/a.txt", None, b"a1")
    await commit(store, "/a.txt", 1, b"a2")
    mover = await commit(store, "/b.txt", None, b"b1")
    await store.rename(1, "/b.txt", 1, "/a.txt", ACTOR)
    found = await store.history("/a.txt")
    assert [(n.id, n.deleted_ns is None) for n in found] == [
        (mover.file_id, True),
        (replaced.file_id, False),
    ]
    assert [v.version for v in await store.versions(replaced.file_id)] == [1, 2]


async def test_deleted_under_lists_removed_files_also_inside_removed_folders(
    store: MetaStore,
) -> None:
    await mkdir(store, "/show")
    await mkdir(store, "/show/seq")
    await commit(store, "/show/seq/a.exr", None, b"a")
    await commit(store, "/show/seq/b.exr", None, b"b")
    await commit(store, "/show/kept.exr", None, b"k")
    await commit(store, "/show/gone.exr", None, b"g")
    show = await resolve(store, "/show")
    await store.remove(show.id, "/show", "gone.exr", ACTOR)
    await store.remove(show.id, "/show", "seq", ACTOR, recursive=True)
    entries = await store.deleted_under("/show")
    # Most recent first: the folder's files went after gone.exr.
    assert [e.path for e in entries] == ["/show/seq/a.exr", "/show/seq/b.exr", "/show/gone.exr"]
    (seq,) = await store.history("/show/seq")
    assert [e.node.deleted_ns for e in entries[:2]] == [seq.deleted_ns, seq.deleted_ns]
    assert [e.path for e in await store.deleted_under("/show/seq")] == entries_paths(entries[:2])
    # Removing the whole tree and making the folder again keeps the trash reachable.
    await store.remove(1, "/", "show", ACTOR, recursive=True)
    await mkdir(store, "/show")
    paths = [e.path for e in await store.deleted_under("/show")]
    assert sorted(paths) == [
        "/show/gone.exr",
        "/show/kept.exr",
        "/show/seq/a.exr",
        "/show/seq/b.exr",
    ]
    assert [e.path for e in await store.deleted_under("/")] == [
        e.path for e in await store.deleted_under("/show")
    ]
    assert await store.deleted_under("/missing") == []


def entries_paths(entries: list[DeletedEntry]) -> list[str]:
    return [e.path for e in entries]


async def test_a_commit_without_a_folder_id_finds_the_folder_by_its_path(
    store: MetaStore,
) -> None:
    root = await resolve(store, "/")
    shots = await mkdir(store, "/shots")
    # A new file: the folder at the path.
    by_path = dataclasses.replace(
        request(shots, "/shots/a.mov", None, await stored_extents(store, b"a")), parent_id=None
    )
    first = await store.commit(by_path, LWW)
    assert (first.path, (await resolve(store, "/shots/a.mov")).id) == (
        "/shots/a.mov",
        first.file_id,
    )
    # A file known by id lands where it is now, wherever the request says.
    await store.rename(shots.id, "/shots/a.mov", root.id, "/a.mov", ACTOR)
    moved = dataclasses.replace(
        request(shots, "/shots/a.mov", 1, await stored_extents(store, b"b")),
        parent_id=None,
        file_id=first.file_id,
    )
    outcome = await store.commit(moved, LWW)
    assert (outcome.path, outcome.file_id, outcome.version) == ("/a.mov", first.file_id, 2)
    # Gone, it lands at the path again; a folder that is not there is an error.
    await store.remove(root.id, "/", "a.mov", ACTOR)
    again = await store.commit(dataclasses.replace(moved, base_version=None), LWW)
    assert again.path == "/shots/a.mov"
    nowhere = dataclasses.replace(
        request(shots, "/takes/c.mov", None, await stored_extents(store, b"c")), parent_id=None
    )
    with pytest.raises(PathNotFound, match="/takes"):
        await store.commit(nowhere, LWW)
    await store.commit(request(shots, "/shots/file", None, await stored_extents(store, b"d")), LWW)
    under_a_file = dataclasses.replace(
        request(shots, "/shots/file/e.mov", None, await stored_extents(store, b"e")),
        parent_id=None,
    )
    with pytest.raises(NotADirectory, match="/shots/file"):
        await store.commit(under_a_file, LWW)


async def test_commit_revives_a_deleted_file_with_its_history(store: MetaStore) -> None:
    await mkdir(store, "/folder")
    first = await commit(store, "/folder/f.txt", None, b"one")
    await commit(store, "/folder/f.txt", 1, b"two")
    await store.remove(1, "/", "folder", ACTOR, recursive=True)
    back = await mkdir(store, "/back")
    revive = dataclasses.replace(
        request(back, "/back/f.txt", 2, await stored_extents(store, b"one")),
        file_id=first.file_id,
        revive=True,
    )
    # Not onto a name another file holds.
    taken = await commit(store, "/back/f.txt", None, b"other")
    with pytest.raises(AlreadyExists):
        await store.commit(revive, LWW)
    assert [n.id for n in await store.history("/back/f.txt")] == [taken.file_id]
    await store.remove(back.id, "/back", "f.txt", ACTOR)

    outcome = await store.commit(revive, LWW)
    assert (outcome.path, outcome.file_id, outcome.version, outcome.conflict) == (
        "/back/f.txt",
        first.file_id,
        3,
        False,
    )
    node = await resolve(store, "/back/f.txt")
    assert (node.id, node.head_version, node.deleted_ns) == (first.file_id, 3, None)
    assert [v.version for v in await store.versions(first.file_id)] == [1, 2, 3]
    _, extents = await store.version(first.file_id, 3)
    assert [e.chunk_id for e in extents] == [chunk_id(b"one")]
    # Its old place is empty: the file lives in one place only.
    assert await store.history("/folder/f.txt") == []


async def test_a_file_inside_a_removed_folder_ages_out_like_a_deleted_file(
    store: MetaStore,
) -> None:
    await mkdir(store, "/folder")
    await commit(store, "/folder/f.exr", None, b"frame")
    await commit(store, "/kept.exr", None, b"live frame")
    await store.remove(1, "/", "folder", ACTOR, recursive=True)
    later = time.time() + 7200
    assert await store.prune_versions(Retention(keep_last=1), later) == 0
    assert await store.prune_versions(Retention(keep_within=3600), later) == 1
    (gone,) = await store.history("/folder/f.exr")
    assert await store.versions(gone.id) == []
    kept = await resolve(store, "/kept.exr")
    assert [v.version for v in await store.versions(kept.id)] == [1]


# -- damaged chunks, fsck queries, dump and load --------------------------------------------


async def test_a_damaged_chunk_is_claimed_as_pending_until_stored_again(store: MetaStore) -> None:
    done = await commit(store, "/a.bin", None, b"good bytes")
    (extent,) = (await store.version(done.file_id, done.version))[1]
    assert await store.mark_damaged([extent.chunk_id, "0" * 64]) == 1
    # Marked once: a second report changes nothing.
    assert await store.mark_damaged([extent.chunk_id]) == 0
    (claim,) = await store.claim_chunks([(extent.chunk_id, extent.length, None)])
    assert claim.state == "pending"
    # A commit naming a damaged chunk is refused until its bytes are stored again.
    parent = await resolve(store, "/")
    with pytest.raises(ChunkMissing):
        await store.commit(request(parent, "/b.bin", None, [extent]), LWW)
    await store.mark_stored([extent.chunk_id])
    (claim,) = await store.claim_chunks([(extent.chunk_id, extent.length, None)])
    assert claim.state == "stored"
    await store.commit(request(parent, "/b.bin", None, [extent]), LWW)


async def test_referenced_chunks_and_their_users(store: MetaStore) -> None:
    await mkdir(store, "/dir")
    first = await commit(store, "/dir/a.bin", None, b"one", b"two")
    await commit(store, "/dir/a.bin", first.version, b"one", b"three")
    gone = await commit(store, "/b.bin", None, b"two")
    await store.remove(1, "/", "b.bin", ACTOR)
    ids = {data: chunk_id(data) for data in (b"one", b"two", b"three")}
    records = await store.referenced_chunks()
    assert sorted(r.chunk_id for r in records) == sorted(ids.values())
    assert {r.state for r in records} == {"stored"}
    assert {r.size for r in records if r.chunk_id == ids[b"three"]} == {5}
    uses = await store.chunk_users([ids[b"two"]])
    assert sorted((u.path, u.version, u.head, u.deleted) for u in uses) == [
        ("/b.bin", gone.version, False, True),
        ("/dir/a.bin", first.version, False, False),
    ]
    (use,) = await store.chunk_users([ids[b"three"]])
    assert (use.path, use.head) == ("/dir/a.bin", True)


async def test_slices_of_a_chunk_round_trip(store: MetaStore, tmp_path: Path) -> None:
    first = await commit(store, "/plate.bin", None, b"a" * 40)
    (whole,) = (await store.version(first.file_id, first.version))[1]
    assert whole.chunk_offset == 0
    (edit,) = await stored_extents(store, b"edit")
    # The edited version names two slices of the first chunk around a new one.
    extents = [
        Extent(0, 10, whole.chunk_id, 0),
        Extent(10, 4, edit.chunk_id),
        Extent(14, 26, whole.chunk_id, 14),
    ]
    parent = await resolve(store, "/")
    second = await store.commit(request(parent, "/plate.bin", first.version, extents), LWW)
    info, read = await store.version(second.file_id, second.version)
    assert read == extents
    assert info.size == 40
    # Whole chunks and slices alike name their chunk for GC, fsck and tiers.
    assert {r.chunk_id for r in await store.referenced_chunks()} == {
        whole.chunk_id,
        edit.chunk_id,
    }
    dump = await store.export_drive()
    assert [s.extent for s in dump.extents if s.version == second.version] == extents
    target = connect(f"sqlite:///{tmp_path}/loaded.db", "copy")
    try:
        await target.import_drive(dump)
        assert (await target.version(second.file_id, second.version))[1] == extents
    finally:
        await target.close()


async def test_export_then_import_makes_the_same_drive(store: MetaStore, tmp_path: Path) -> None:
    await mkdir(store, "/d")
    v1 = await commit(store, "/d/a.bin", None, b"alpha", b"beta")
    await commit(store, "/d/a.bin", v1.version, b"alpha", b"gamma")
    await commit(store, "/b.bin", None, b"beta")
    await store.rename(1, "/b.bin", 1, "/c.bin", ACTOR)
    await store.remove(1, "/", "c.bin", ACTOR)
    dump = await store.export_drive()
    target = connect(f"sqlite:///{tmp_path}/loaded.db", "copy")
    try:
        await target.import_drive(dump)
        assert (await target.open_drive()).model_dump_json() == dump.settings
        again = await target.export_drive()
        assert dataclasses.replace(again, name=dump.name) == dump
        with pytest.raises(AlreadyExists):
            await target.import_drive(dump)
        # The loaded drive goes on: new ids and event numbers follow the old ones.
        node = await target.make_node(1, "/", "new", NodeKind.DIR, 0o755, ACTOR)
        assert node.id == dump.next_node + 1
        assert await target.last_event_seq() == dump.event_seq + 1
    finally:
        await target.close()


async def test_a_fresh_postgres_store_opens_one_pool_for_concurrent_callers(
    postgres_url: str,
) -> None:
    from mediadrive.core.meta.postgres import PostgresMetaStore

    url = create_database(postgres_url, "pool")
    creator = connect(url, "show")
    await creator.create_drive(DriveSettings())
    await creator.close()
    meta = connect(url, "show")
    assert isinstance(meta, PostgresMetaStore)
    opened = 0
    open_pool = meta._open_pool

    async def counting() -> Any:
        nonlocal opened
        opened += 1
        return await open_pool()

    meta._open_pool = counting  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(meta.resolve("/") for _ in range(8)))
        assert opened == 1
    finally:
        await meta.close()


async def test_a_lookup_in_a_big_new_folder_reads_one_row_on_postgres(
    postgres_url: str,
) -> None:
    """Before the first statistics of a new drive, the planner may take any index with
    the folder as prefix: each must have the name too, or a lookup reads the folder."""
    url = create_database(postgres_url, "plans")
    meta = connect(url, "show")
    await meta.create_drive(DriveSettings())
    try:
        folder = await meta.make_node(1, "/", "shots", NodeKind.DIR, 0o755, ACTOR)
        for i in range(1500):
            await meta.make_node(folder.id, "/shots", f"f{i:05d}", NodeKind.FILE, 0o644, ACTOR)
    finally:
        await meta.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "PREPARE lookup(text, bigint, text) AS SELECT id FROM nodes "
            "WHERE drive = $1 AND parent_id = $2 AND name = $3 AND deleted_ns IS NULL"
        )
        conn.execute("SET plan_cache_mode = force_generic_plan")
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE lookup('show', {folder.id}, 'f00017')"
        ).fetchone()
    assert plan is not None
    scan = plan[0][0]["Plan"]
    assert "$3" in scan.get("Index Cond", ""), scan
    assert scan.get("Rows Removed by Filter", 0) == 0, scan
