"""Concurrent writers under each conflict policy, and GC racing commits.

Every writer is a separate :class:`Drive` opened on the same drive, as two
machines would be. Metadata engines: SQLite and the real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Protocol

import pytest

from mediadrive.core.config import ConflictPolicy, DriveSettings, Retention
from mediadrive.core.drive import CommitResult, Drive
from mediadrive.core.errors import ChunkMissing, ConflictError
from mediadrive.core.hashing import chunk_id
from mediadrive.core.identity import Identity
from mediadrive.core.meta import Event

CHUNK = 64 * 1024
PATH = "/shots/010/comp.exr"


class Opener(Protocol):
    def __call__(self, settings: DriveSettings, count: int = 2) -> Awaitable[list[Drive]]: ...


@pytest.fixture
async def open_drives(meta_url: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Create the drive with given settings; return ``count`` writers on it."""
    opened: list[Drive] = []

    async def opener(settings: DriveSettings, count: int = 2) -> list[Drive]:
        store_url = f"file://{tmp_path}/store"
        first = await Drive.create(
            "show", meta_url, store_url, settings, identity=Identity("artist0@render-0", "render-0")
        )
        opened.append(first)
        for n in range(1, count):
            identity = Identity(f"artist{n}@render-{n}", f"render-{n}")
            opened.append(await Drive.open("show", meta_url, store_url, identity=identity))
        await first.mkdir("/shots/010", parents=True)
        return list(opened)

    try:
        yield opener
    finally:
        for drive in opened:
            await drive.close()


def settings(policy: ConflictPolicy) -> DriveSettings:
    return DriveSettings(chunking="fixed", chunk_size=CHUNK, conflict=policy)


async def read_all(drive: Drive, path: str, version: int | None = None) -> bytes:
    out = io.BytesIO()
    await drive.read_to(path, out, version=version)
    return out.getvalue()


async def conflicts(drive: Drive) -> list[Event]:
    return [e async for e in drive.events() if e.kind == "conflict"]


async def race(a: Drive, b: Drive, content_a: bytes, content_b: bytes) -> CommitResult:
    """Both writers start from the same head; ``a`` commits first, then ``b``.

    Returns ``b``'s outcome; ``a``'s commit must land cleanly.
    """
    base_a = await a.head_version(PATH)
    base_b = await b.head_version(PATH)
    assert base_a == base_b
    upload_a = await a.upload(io.BytesIO(content_a))
    upload_b = await b.upload(io.BytesIO(content_b))
    won = await a.commit(PATH, upload_a, base_a, message="from a")
    assert not won.conflict and won.path == PATH
    lost = await b.commit(PATH, upload_b, base_b, message="from b")
    return CommitResult(
        lost.path,
        lost.file_id,
        lost.version,
        upload_b.size,
        upload_b.bytes_uploaded,
        upload_b.chunks_total,
        upload_b.chunks_new,
        lost.conflict,
    )


async def test_last_writer_wins(open_drives: Opener) -> None:
    a, b = await open_drives(settings(ConflictPolicy.LAST_WRITER_WINS))
    original, from_a, from_b = (os.urandom(3 * CHUNK) for _ in range(3))
    await a.write_file(PATH, io.BytesIO(original))

    lost = await race(a, b, from_a, from_b)
    assert (lost.path, lost.version, lost.conflict) == (PATH, 3, True)
    for reader in (a, b):
        assert await read_all(reader, PATH) == from_b
        assert await read_all(reader, PATH, 2) == from_a
        assert await read_all(reader, PATH, 1) == original
    versions = await b.versions(PATH)
    assert [(v.version, v.parent_version, v.author) for v in versions] == [
        (1, None, a.author),
        (2, 1, a.author),
        (3, 2, b.author),
    ]
    (event,) = await conflicts(a)
    assert (event.path, event.actor, event.version) == (PATH, b.author, 2)
    assert event.detail == {"policy": "last-writer-wins", "base": 1, "head": 2}


async def test_keep_both(open_drives: Opener) -> None:
    a, b = await open_drives(settings(ConflictPolicy.KEEP_BOTH))
    original, from_a, from_b = (os.urandom(2 * CHUNK + 7) for _ in range(3))
    await a.write_file(PATH, io.BytesIO(original))

    lost = await race(a, b, from_a, from_b)
    assert lost.conflict
    assert lost.path.startswith("/shots/010/comp (conflict from render-1 at ")
    assert lost.path.endswith(").exr")
    assert lost.version == 1
    names = [n.name for n in await a.listdir("/shots/010")]
    assert sorted(names) == sorted(["comp.exr", lost.path.rsplit("/", 1)[1]])
    for reader in (a, b):
        assert await read_all(reader, PATH) == from_a
        assert await read_all(reader, lost.path) == from_b
    assert [v.version for v in await a.versions(PATH)] == [1, 2]
    (event,) = await conflicts(b)
    assert event.path == PATH and event.actor == b.author
    assert event.detail["kept_as"] == lost.path
    assert event.detail["policy"] == "keep-both"


async def test_reject(open_drives: Opener) -> None:
    a, b = await open_drives(settings(ConflictPolicy.REJECT))
    original, from_a, from_b = (os.urandom(CHUNK) for _ in range(3))
    await a.write_file(PATH, io.BytesIO(original))

    with pytest.raises(ConflictError, match="conflict policy is reject"):
        await race(a, b, from_a, from_b)
    node = await b.stat(PATH)
    assert node.head_version == 2
    assert await read_all(b, PATH) == from_a
    assert [v.version for v in await b.versions(PATH)] == [1, 2]
    assert [n.name for n in await b.listdir("/shots/010")] == ["comp.exr"]
    (event,) = await conflicts(a)
    assert (event.path, event.actor) == (PATH, b.author)
    assert event.detail == {"policy": "reject", "base": 1, "head": 2}
    # Starting again from the new head works.
    again = await b.write_file(PATH, io.BytesIO(from_b))
    assert (again.version, again.conflict) == (3, False)
    assert await read_all(a, PATH) == from_b


@pytest.mark.parametrize("policy", list(ConflictPolicy))
async def test_many_writers_lose_nothing(open_drives: Opener, policy: ConflictPolicy) -> None:
    writers = await open_drives(settings(policy), 3)
    await writers[0].write_file(PATH, io.BytesIO(b"original"))
    contents = [os.urandom(CHUNK + n) for n in range(9)]

    async def write(n: int) -> CommitResult | None:
        drive = writers[n % len(writers)]
        try:
            return await drive.write_file(PATH, io.BytesIO(contents[n]))
        except ConflictError:
            return None

    results = await asyncio.gather(*(write(n) for n in range(len(contents))))
    landed = [r for r in results if r is not None]
    events = await conflicts(writers[0])
    assert len(events) == sum(1 for r in results if r is None or r.conflict)

    reader = writers[1]
    found: list[bytes] = []
    for node in await reader.listdir("/shots/010"):
        path = f"/shots/010/{node.name}"
        for info in await reader.versions(path):
            found.append(await read_all(reader, path, info.version))
    assert found.count(b"original") == 1
    found.remove(b"original")
    if policy is ConflictPolicy.REJECT:
        # Every landed write is in history once; every refused one nowhere.
        assert sorted(found) == sorted(contents[n] for n, r in enumerate(results) if r)
        assert len(landed) >= 1
    else:
        # Nothing is lost: every write is a version of the file or of a sibling.
        assert sorted(found) == sorted(contents)
        assert len(landed) == len(contents)
    if policy is ConflictPolicy.LAST_WRITER_WINS:
        versions = await reader.versions(PATH)
        assert [v.version for v in versions] == list(range(1, len(contents) + 2))
    if policy is ConflictPolicy.KEEP_BOTH:
        siblings = {r.path for r in landed if r.path != PATH}
        assert len(siblings) == sum(1 for r in landed if r.conflict)


# -- GC racing commits ------------------------------------------------------------------


async def test_gc_between_upload_and_commit_keeps_the_chunks(open_drives: Opener) -> None:
    writer, collector = await open_drives(settings(ConflictPolicy.LAST_WRITER_WINS))
    content = os.urandom(4 * CHUNK)
    ids = {chunk_id(content[i : i + CHUNK]) for i in range(0, len(content), CHUNK)}

    upload = await writer.upload(io.BytesIO(content))
    assert upload.chunks_new == 4
    report = await collector.gc(grace=0)
    assert report.chunks_deleted == 0
    for cid in ids:
        assert await collector.blobs.exists(cid)

    outcome = await writer.commit(PATH, upload, None)
    assert outcome.version == 1
    assert await read_all(collector, PATH) == content

    # Once no version references them, the same GC takes them.
    newer = os.urandom(CHUNK)
    await writer.write_file(PATH, io.BytesIO(newer))
    collector.settings = collector.settings.model_copy(update={"retention": Retention(keep_last=1)})
    report = await collector.gc(grace=0)
    assert (report.versions_pruned, report.chunks_deleted) == (1, 4)
    for cid in ids:
        assert not await collector.blobs.exists(cid)
    assert {cid async for cid in collector.blobs.list()} == {chunk_id(newer)}
    assert await read_all(writer, PATH) == newer


async def test_an_upload_waits_for_a_deletion_in_progress(open_drives: Opener) -> None:
    writer, collector = await open_drives(settings(ConflictPolicy.LAST_WRITER_WINS))
    content = os.urandom(2 * CHUNK)
    doomed = chunk_id(content[:CHUNK])
    await writer.write_file(PATH, io.BytesIO(content))
    await writer.write_file(PATH, io.BytesIO(b"replacement"))
    assert await collector.meta.prune_versions(Retention(keep_last=1), time.time()) == 1

    # GC has marked a chunk for deletion but not yet removed it.
    cutoff = time.time() + 1
    assert await collector.meta.begin_delete_chunk(doomed, cutoff)
    upload = asyncio.create_task(writer.write_file("/again.bin", io.BytesIO(content)))
    await asyncio.sleep(0.3)
    assert not upload.done(), "the upload must not reuse a chunk that is being deleted"
    await collector.blobs.delete(doomed)
    await collector.meta.finish_delete_chunk(doomed)
    result = await asyncio.wait_for(upload, timeout=30)
    # The doomed chunk was sent again; its sibling was still stored.
    assert (result.chunks_new, result.bytes_uploaded) == (1, CHUNK)
    assert await collector.blobs.exists(doomed)
    assert await read_all(collector, "/again.bin") == content


async def test_another_commit_does_not_end_an_uploads_hold(open_drives: Opener) -> None:
    writer, other, collector = await open_drives(settings(ConflictPolicy.LAST_WRITER_WINS), 3)
    content = os.urandom(2 * CHUNK)
    await other.write_file("/shots/010/first.exr", io.BytesIO(content))
    # The writer's upload finds every chunk stored and holds them for its commit.
    upload = await writer.upload(io.BytesIO(content))
    assert upload.chunks_new == 0
    # Meanwhile another machine commits the same bytes, then replaces both files,
    # and retention drops every version that named those chunks.
    await other.write_file("/shots/010/second.exr", io.BytesIO(content))
    await other.write_file("/shots/010/first.exr", io.BytesIO(b"one"))
    await other.write_file("/shots/010/second.exr", io.BytesIO(b"two"))
    collector.settings = collector.settings.model_copy(update={"retention": Retention(keep_last=1)})
    await collector.gc(grace=0)
    # The writer's upload was still in flight: its commit must land.
    outcome = await writer.commit(PATH, upload, None)
    assert await read_all(collector, PATH) == content
    assert outcome.version == 1


async def test_gc_running_alongside_writers_never_breaks_a_version(
    open_drives: Opener,
) -> None:
    first, second, collector = await open_drives(
        DriveSettings(
            chunking="fixed",
            chunk_size=CHUNK,
            retention=Retention(keep_last=1),
        ),
        3,
    )
    # Contents share chunks, so writes keep reviving chunks GC is eyeing.
    pieces = [os.urandom(CHUNK) for _ in range(6)]
    contents = [b"".join(pieces[i : i + 3]) for i in range(4)]
    done = asyncio.Event()
    sweeps = 0

    last: dict[str, bytes] = {}

    async def write(drive: Drive, path: str, offset: int) -> None:
        for n in range(12):
            content = contents[(n + offset) % len(contents)]
            try:
                await drive.write_file(path, io.BytesIO(content))
            except ChunkMissing:
                # Refused, never recorded (see the hold test above); safety holds.
                continue
            last[path] = content

    async def sweep() -> None:
        nonlocal sweeps
        while not done.is_set():
            await collector.gc(grace=0)
            sweeps += 1
            await asyncio.sleep(0)

    sweeper = asyncio.create_task(sweep())
    try:
        await asyncio.gather(
            write(first, "/shots/010/a.exr", 0),
            write(second, "/shots/010/b.exr", 1),
            write(second, "/shots/010/c.exr", 2),
        )
    finally:
        done.set()
        await sweeper
    assert sweeps >= 2

    # Every version left reads back whole and verified.
    assert len(last) == 3
    for path, content in last.items():
        assert await read_all(collector, path) == content
        for info in await collector.versions(path):
            assert await read_all(collector, path, info.version) in contents
    # And a last sweep leaves every chunk a version needs.
    await collector.gc(grace=0)
    for name in ("a.exr", "b.exr", "c.exr"):
        assert len(await read_all(first, f"/shots/010/{name}")) == 3 * CHUNK
