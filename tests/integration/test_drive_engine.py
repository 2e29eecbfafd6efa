"""The whole engine on each pairing of metadata and blob store.

Pairings: SQLite + local folder (the embedded default), PostgreSQL + moto and
PostgreSQL + MinIO.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mediadrive.core.blob import BlobStore
from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.config import DriveSettings, Retention
from mediadrive.core.drive import Drive
from mediadrive.core.errors import (
    AlreadyExists,
    ChunkMissing,
    CorruptChunk,
    PathNotFound,
    VersionNotFound,
)
from mediadrive.core.fsck import Fsck
from mediadrive.core.hashing import BLOCK_SIZE, chunk_id
from mediadrive.core.meta import Extent
from tests.servers import S3Server, create_database

MIB = 1 << 20
CHUNK = 2 * MIB

PAIRINGS = [
    "sqlite+local",
    pytest.param("postgres+moto", marks=[pytest.mark.postgres, pytest.mark.s3, pytest.mark.moto]),
    pytest.param("postgres+minio", marks=[pytest.mark.postgres, pytest.mark.s3, pytest.mark.minio]),
]


@dataclass(frozen=True)
class Pairing:
    name: str
    meta_url: str
    store_url: str
    base: Path
    local_root: Path | None = None
    server: S3Server | None = None
    bucket: str = ""
    prefix: str = ""

    def overwrite_chunk(self, cid: str, data: bytes) -> None:
        """Replace a stored chunk's bytes behind the engine's back."""
        if self.local_root is not None:
            (self.local_root / "chunks" / cid[:2] / cid).write_bytes(data)
            return
        assert self.server is not None
        key = f"{self.prefix}/chunks/{cid[:2]}/{cid}"
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture(params=PAIRINGS)
def pairing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Pairing:
    base = tmp_path / "home"
    if request.param == "sqlite+local":
        root = tmp_path / "store"
        return Pairing(request.param, f"sqlite:///{tmp_path}/meta.db", f"file://{root}", base, root)
    meta_url = create_database(request.getfixturevalue("postgres_url"), "drive")
    server: S3Server = request.getfixturevalue(request.param.split("+")[1] + "_s3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    bucket = server.new_bucket("drive")
    store_url = f"s3://{bucket}/show?endpoint={server.endpoint_url}"
    return Pairing(request.param, meta_url, store_url, base, None, server, bucket, "show")


async def open_drive(pairing: Pairing, settings: DriveSettings) -> AsyncIterator[Drive]:
    drive = await Drive.create("show", pairing.meta_url, pairing.store_url, settings)
    try:
        yield drive
    finally:
        await drive.close()


@pytest.fixture
async def drive(pairing: Pairing) -> AsyncIterator[Drive]:
    async for d in open_drive(pairing, DriveSettings(chunking="fixed", chunk_size=CHUNK)):
        yield d


async def read_all(drive: Drive, path: str, version: int | None = None) -> bytes:
    out = io.BytesIO()
    await drive.read_to(path, out, version=version)
    return out.getvalue()


async def stored_ids(drive: Drive) -> set[str]:
    return {cid async for cid in drive.blobs.list()}


def chunk_ids(data: bytes, size: int = CHUNK) -> list[str]:
    return [chunk_id(data[i : i + size]) for i in range(0, len(data), size)]


def edited(data: bytes, offset: int, patch: bytes) -> bytes:
    return data[:offset] + patch + data[offset + len(patch) :]


async def test_versions_dedup_restore_retention_gc(drive: Drive) -> None:
    data1 = os.urandom(6 * CHUNK + 5000)  # six whole chunks and a short one
    await drive.mkdir("/media")

    first = await drive.write_file("/media/a.bin", io.BytesIO(data1), message="first cut")
    assert (first.path, first.version, first.size) == ("/media/a.bin", 1, len(data1))
    assert (first.bytes_uploaded, first.chunks_total, first.chunks_new) == (len(data1), 7, 7)
    assert await stored_ids(drive) == set(chunk_ids(data1))

    # A 1 KiB edit in the middle uploads the one chunk it falls in.
    data2 = edited(data1, 2 * CHUNK + 100, os.urandom(1024))
    second = await drive.write_file("/media/a.bin", io.BytesIO(data2))
    assert (second.version, second.conflict) == (2, False)
    assert (second.bytes_uploaded, second.chunks_total, second.chunks_new) == (CHUNK, 7, 1)

    assert await read_all(drive, "/media/a.bin", 1) == data1
    assert await read_all(drive, "/media/a.bin") == data2
    old = await drive.reader("/media/a.bin", 1)
    assert await old.read(2 * CHUNK, 2048) == data1[2 * CHUNK : 2 * CHUNK + 2048]
    head = await drive.reader("/media/a.bin")
    assert await head.read(2 * CHUNK, 2048) == data2[2 * CHUNK : 2 * CHUNK + 2048]
    assert await head.read(len(data2) - 10, 100) == data2[-10:]

    # The same bytes at another path upload nothing.
    copy = await drive.write_file("/media/copy.bin", io.BytesIO(data2))
    assert (copy.version, copy.bytes_uploaded, copy.chunks_new, copy.chunks_total) == (1, 0, 0, 7)
    before_restore = await stored_ids(drive)
    assert len(before_restore) == 8

    # Restore makes a new head with the old bytes; history stays.
    restored = await drive.restore("/media/a.bin", 1)
    assert (restored.version, restored.conflict) == (3, False)
    versions = await drive.versions("/media/a.bin")
    assert [(v.version, v.origin, v.parent_version) for v in versions] == [
        (1, "commit", None),
        (2, "commit", 1),
        (3, "restore", 2),
    ]
    assert versions[0].message == "first cut"
    assert await read_all(drive, "/media/a.bin") == data1
    assert await read_all(drive, "/media/a.bin", 2) == data2
    assert await stored_ids(drive) == before_restore
    events = [e async for e in drive.events()]
    assert events[-1].kind == "restore" and events[-1].version == 3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    # New heads for both files, then keep only the last version of each.
    await drive.write_file("/media/copy.bin", io.BytesIO(b"small"))
    data3 = edited(data1, 5 * CHUNK + 7, os.urandom(3000))
    await drive.write_file("/media/a.bin", io.BytesIO(data3))
    await drive.write_file("/media/notes.txt", io.BytesIO(b"old notes"))
    await drive.remove("/media/notes.txt")
    drive.settings = drive.settings.model_copy(update={"retention": Retention(keep_last=1)})
    await drive.meta.update_settings(drive.settings)

    gone = {chunk_ids(data2)[2], chunk_ids(data1)[5]}
    assert gone <= await stored_ids(drive)
    report = await drive.gc(grace=0)
    assert (report.versions_pruned, report.chunks_deleted) == (4, 2)
    assert report.bytes_freed == 2 * CHUNK
    expected = set(chunk_ids(data3)) | {chunk_id(b"small"), chunk_id(b"old notes")}
    assert await stored_ids(drive) == expected
    for cid in gone:
        assert not await drive.blobs.exists(cid)
    assert await read_all(drive, "/media/a.bin") == data3
    assert await read_all(drive, "/media/copy.bin") == b"small"
    # A deleted file's last version stays in history.
    assert await read_all(drive, "/media/notes.txt") == b"old notes"
    assert [v.version for v in await drive.versions("/media/a.bin")] == [4]
    with pytest.raises(VersionNotFound):
        await drive.reader("/media/a.bin", 1)
    stats = await drive.stats()
    assert (stats.stored_chunks, stats.stored_bytes) == (
        len(expected),
        len(data3) + len(b"small") + len(b"old notes"),
    )
    assert await drive.gc(grace=0) == type(report)(0, 0, 0)


async def test_an_edit_across_a_chunk_boundary_uploads_two_chunks(drive: Drive) -> None:
    data = os.urandom(4 * CHUNK)
    await drive.write_file("/f", io.BytesIO(data))
    straddle = edited(data, 2 * CHUNK - 10, os.urandom(20))
    result = await drive.write_file("/f", io.BytesIO(straddle))
    assert (result.version, result.bytes_uploaded, result.chunks_new) == (2, 2 * CHUNK, 2)
    grown = straddle + os.urandom(10)
    appended = await drive.write_file("/f", io.BytesIO(grown))
    assert (appended.bytes_uploaded, appended.chunks_new, appended.chunks_total) == (10, 1, 5)
    assert await read_all(drive, "/f", 2) == straddle
    assert await read_all(drive, "/f") == grown


async def test_gc_with_a_grace_period_keeps_recent_chunks(drive: Drive) -> None:
    data = os.urandom(3 * CHUNK)
    newer = os.urandom(100)
    await drive.write_file("/f", io.BytesIO(data))
    await drive.write_file("/f", io.BytesIO(newer))
    drive.settings = drive.settings.model_copy(update={"retention": Retention(keep_last=1)})
    report = await drive.gc(grace=3600)
    assert (report.versions_pruned, report.chunks_deleted) == (1, 0)
    assert set(chunk_ids(data)) <= await stored_ids(drive)
    assert (await drive.gc(grace=0)).chunks_deleted == 3
    assert await stored_ids(drive) == {chunk_id(newer)}


async def test_a_corrupt_chunk_is_an_error_never_wrong_bytes(
    drive: Drive, pairing: Pairing
) -> None:
    data = os.urandom(3 * CHUNK)
    await drive.write_file("/clip.mov", io.BytesIO(data))
    await drive.write_file("/other.mov", io.BytesIO(os.urandom(CHUNK)))
    first, second, third = chunk_ids(data)

    # One flipped byte in the second block of the first chunk.
    bad = bytearray(data[:CHUNK])
    bad[BLOCK_SIZE + 1234] ^= 0xFF
    pairing.overwrite_chunk(first, bytes(bad))
    # The second chunk cut short.
    pairing.overwrite_chunk(second, data[CHUNK : 2 * CHUNK - 1])

    reopened = await Drive.open("show", pairing.meta_url, pairing.store_url)
    for d in (drive, reopened):
        with pytest.raises(CorruptChunk):
            await read_all(d, "/clip.mov")
        reader = await d.reader("/clip.mov")
        with pytest.raises(CorruptChunk):
            await reader.read(BLOCK_SIZE + 1000, 500)
        with pytest.raises(CorruptChunk):
            await reader.read(2 * CHUNK - 100, 10)  # the short block of the short chunk
        with pytest.raises(CorruptChunk):
            await reader.read(CHUNK - 10, 20)  # starts in a sound block, ends in a bad one
        # Blocks that are intact still read, and other files are untouched.
        assert await reader.read(100, 1000) == data[100:1100]
        assert await reader.read(CHUNK + 5, 1000) == data[CHUNK + 5 : CHUNK + 1005]
        assert await reader.read(2 * CHUNK + 5, 1000) == data[2 * CHUNK + 5 : 2 * CHUNK + 1005]
        assert len(await read_all(d, "/other.mov")) == CHUNK
    await reopened.close()

    # A chunk gone from the store is an error too: a damaged file, not a missing one.
    await drive.blobs.delete(third)
    fresh = await Drive.open("show", pairing.meta_url, pairing.store_url)
    try:
        reader = await fresh.reader("/clip.mov")
        with pytest.raises(CorruptChunk):
            await reader.read(2 * CHUNK + 5, 10)
    finally:
        await fresh.close()


async def test_cdc_insertion_uploads_little(pairing: Pairing) -> None:
    settings = DriveSettings(chunking="cdc", chunk_size=64 * 1024)
    async for drive in open_drive(pairing, settings):
        data = os.urandom(8 * MIB)
        first = await drive.write_file("/take.wav", io.BytesIO(data))
        assert first.bytes_uploaded == len(data)
        inserted = os.urandom(100_000) + data
        second = await drive.write_file("/take.wav", io.BytesIO(inserted))
        # The new bytes plus the few chunks around them, not the whole file.
        assert second.bytes_uploaded <= 100_000 + 8 * 256 * 1024
        assert second.chunks_new <= 10
        assert await read_all(drive, "/take.wav") == inserted
        assert await read_all(drive, "/take.wav", 1) == data


class CountingStore(WrappedStore):
    """Counts the bytes put into the store it wraps."""

    def __init__(self, inner: BlobStore) -> None:
        super().__init__(inner)
        self.bytes_put = 0

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await super().put(chunk_id, data)
        self.bytes_put += len(data)


async def test_a_1mib_edit_of_a_large_file_sends_one_4mib_chunk_with_4mib_chunks(
    pairing: Pairing,
) -> None:
    async for drive in open_drive(pairing, DriveSettings(chunk_size="4MiB")):
        assert drive.settings.chunk_size == 4 * MIB
        counting = CountingStore(drive.blobs)
        drive.uploader.blobs = counting
        data = os.urandom(68 * MIB + 4321)
        await drive.write_file("/plate.mov", io.BytesIO(data))
        assert counting.bytes_put == len(data)
        stored = await stored_ids(drive)

        # 1 MiB written in the middle: one 4 MiB chunk is sent, not 64 MiB.
        counting.bytes_put = 0
        new = edited(data, 33 * MIB + 12345, os.urandom(MIB))
        second = await drive.write_file("/plate.mov", io.BytesIO(new))
        assert counting.bytes_put == second.bytes_uploaded == 4 * MIB
        assert second.chunks_new == 1
        assert await read_all(drive, "/plate.mov") == new
        assert await read_all(drive, "/plate.mov", 1) == data
        assert len(await stored_ids(drive)) == len(stored) + 1

        # The same bytes in another file are stored once.
        counting.bytes_put = 0
        copy = await drive.write_file("/copy.mov", io.BytesIO(new))
        assert (copy.bytes_uploaded, counting.bytes_put, copy.chunks_new) == (0, 0, 0)
        assert len(await stored_ids(drive)) == len(stored) + 1

        # Dropping the first version frees the one chunk only it named.
        drive.settings = drive.settings.model_copy(update={"retention": Retention(keep_last=1)})
        await drive.meta.update_settings(drive.settings)
        report = await drive.gc(grace=0)
        assert (report.versions_pruned, report.chunks_deleted) == (1, 1)
        assert report.bytes_freed == 4 * MIB
        assert await stored_ids(drive) == set(chunk_ids(new, 4 * MIB))
        assert await read_all(drive, "/plate.mov") == new
        assert await read_all(drive, "/copy.mov") == new


async def test_a_chunk_named_only_by_slices_stays_stored_and_read_back(
    pairing: Pairing, tmp_path: Path
) -> None:
    async for drive in open_drive(pairing, DriveSettings(chunk_size="4MiB")):
        data = os.urandom(9 * MIB + 5)
        await drive.write_file("/plate.mov", io.BytesIO(data))
        base = (await drive.reader("/plate.mov")).extents
        middle = base[1].chunk_id
        # Block 5 (the second of chunk 1) changes; the rest of chunk 1 is kept as two
        # slices of it, the other chunks whole, and none of it is on disk.
        new = edited(data, 5 * MIB, os.urandom(MIB))
        sparse = tmp_path / "sparse.bin"
        with open(sparse, "wb") as f:
            f.truncate(len(new))
            f.seek(5 * MIB)
            f.write(new[5 * MIB : 6 * MIB])
        reuse = {
            0: base[0],
            4 * MIB: Extent(4 * MIB, MIB, middle),
            6 * MIB: Extent(6 * MIB, 2 * MIB, middle, 2 * MIB),
            8 * MIB: base[2],
        }
        with open(sparse, "rb") as f:
            upload = await drive.upload(f, reuse=reuse)
        assert (upload.bytes_uploaded, upload.chunks_new, upload.chunks_total) == (MIB, 1, 5)
        await drive.commit("/plate.mov", upload, base_version=1)
        assert await read_all(drive, "/plate.mov") == new
        reader = await drive.reader("/plate.mov")
        assert await reader.read(4 * MIB + 7, 3 * MIB) == new[4 * MIB + 7 : 7 * MIB + 7]

        # Once the first version goes, only slices name the middle chunk: GC keeps it.
        drive.settings = drive.settings.model_copy(update={"retention": Retention(keep_last=1)})
        await drive.meta.update_settings(drive.settings)
        report = await drive.gc(grace=0)
        assert (report.versions_pruned, report.chunks_deleted) == (1, 0)
        assert middle in await stored_ids(drive)
        assert await read_all(drive, "/plate.mov") == new
        fsck = Fsck(drive.meta, drive.blobs)
        records, _ = await fsck.chunks()
        assert not (await fsck.check(records)).problems

        # The first version's bytes in another file are stored once: its chunks are.
        copy = await drive.write_file("/copy.mov", io.BytesIO(data))
        assert (copy.bytes_uploaded, copy.chunks_new) == (0, 0)
        assert await read_all(drive, "/copy.mov") == data


async def test_a_drive_made_with_64mib_chunks_keeps_them(pairing: Pairing) -> None:
    # Drives made before the 4 MiB default store their chunk size: it stays.
    async for drive in open_drive(pairing, DriveSettings(chunk_size="64MiB")):
        data = os.urandom(64 * MIB + 10)
        result = await drive.write_file("/f", io.BytesIO(data))
        assert result.chunks_total == 2
        reopened = await Drive.open("show", pairing.meta_url, pairing.store_url)
        try:
            assert reopened.settings.chunk_size == 64 * MIB
            assert await read_all(reopened, "/f") == data
        finally:
            await reopened.close()


async def test_reopened_drive_sees_everything(pairing: Pairing, drive: Drive) -> None:
    data = os.urandom(CHUNK + 1)
    await drive.mkdir("/a/b", parents=True)
    await drive.write_file("/a/b/c.bin", io.BytesIO(data), message="hello")
    await drive.move("/a/b/c.bin", "/a/d.bin")
    reopened = await Drive.open("show", pairing.meta_url, pairing.store_url)
    try:
        assert reopened.settings == drive.settings
        assert [n.name for n in await reopened.listdir("/a")] == ["b", "d.bin"]
        assert await read_all(reopened, "/a/d.bin") == data
        (info,) = await reopened.versions("/a/d.bin")
        assert (info.message, info.size) == ("hello", len(data))
        kinds = [e.kind async for e in reopened.events()]
        assert kinds == ["mkdir", "mkdir", "commit", "rename"]
    finally:
        await reopened.close()


async def test_an_upload_keeps_untouched_chunks_without_reading_them(
    drive: Drive, tmp_path: Path
) -> None:
    data = os.urandom(4 * CHUNK)
    await drive.write_file("/f", io.BytesIO(data))
    base = (await drive.reader("/f")).extents
    # The new content differs in chunk 2 only; chunks 0, 1 and 3 are holes on disk.
    new = edited(data, 2 * CHUNK + 5, b"edit")
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(len(new))
        f.seek(2 * CHUNK)
        f.write(new[2 * CHUNK : 3 * CHUNK])
    reuse = {e.offset: e for e in base if e.offset != 2 * CHUNK}
    with open(sparse, "rb") as f:
        upload = await drive.upload(f, reuse=reuse)
    assert (upload.bytes_uploaded, upload.chunks_new, upload.chunks_total) == (CHUNK, 1, 4)
    outcome = await drive.commit("/f", upload, base_version=1)
    assert await read_all(drive, "/f", outcome.version) == new
    assert [e.chunk_id for e in upload.extents if e.offset != 2 * CHUNK] == [
        e.chunk_id for e in base if e.offset != 2 * CHUNK
    ]


async def test_keeping_a_chunk_the_drive_lost_is_an_error(drive: Drive, tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.bin"
    sparse.write_bytes(bytes(CHUNK))
    gone = Extent(0, CHUNK, chunk_id(os.urandom(CHUNK)))
    with open(sparse, "rb") as f, pytest.raises(ChunkMissing):
        await drive.upload(f, reuse={0: gone})
    with pytest.raises(ChunkMissing):
        await drive.commit("/lost", drive.uploader.keep([gone]), base_version=None)


async def test_a_version_made_only_of_kept_slices_reads_back(drive: Drive) -> None:
    """``Uploader.keep``: an upload that names stored chunks (here slices of one, in
    another order) without reading or sending a byte."""
    data = os.urandom(2 * CHUNK)
    first = await drive.write_file("/f", io.BytesIO(data))
    a, b = (await drive.reader("/f")).extents
    kept = [
        Extent(0, CHUNK, b.chunk_id),
        Extent(CHUNK, 10, a.chunk_id, 0),
        Extent(CHUNK + 10, CHUNK - 10, a.chunk_id, 10),
    ]
    upload = drive.uploader.keep(kept)
    assert (upload.size, upload.bytes_uploaded, upload.chunks_new) == (2 * CHUNK, 0, 0)
    outcome = await drive.commit("/f", upload, base_version=first.version)
    assert await read_all(drive, "/f", outcome.version) == data[CHUNK:] + data[:CHUNK]


# -- history of deleted paths -----------------------------------------------------------------


async def test_a_file_in_a_removed_folder_comes_back_with_its_history(drive: Drive) -> None:
    v1, v2 = os.urandom(CHUNK + 10), b"second take"
    await drive.mkdir("/folder/sub", parents=True)
    first = await drive.write_file("/folder/sub/f.txt", io.BytesIO(v1))
    await drive.write_file("/folder/sub/f.txt", io.BytesIO(v2))
    await drive.remove("/folder", recursive=True)
    with pytest.raises(PathNotFound):
        await drive.stat("/folder/sub/f.txt")
    # Reachable for reading, also after a new folder takes the old one's name.
    assert [v.version for v in await drive.versions("/folder/sub/f.txt")] == [1, 2]
    await drive.mkdir("/folder", parents=True)
    assert await read_all(drive, "/folder/sub/f.txt", 1) == v1
    assert [e.path for e in await drive.deleted("/folder")] == ["/folder/sub/f.txt"]

    restored = await drive.restore("/folder/sub/f.txt", 1)
    assert (restored.path, restored.file_id, restored.version) == (
        "/folder/sub/f.txt",
        first.file_id,
        3,
    )
    assert [(v.version, v.origin) for v in await drive.versions("/folder/sub/f.txt")] == [
        (1, "commit"),
        (2, "commit"),
        (3, "restore"),
    ]
    assert await read_all(drive, "/folder/sub/f.txt") == v1
    assert await read_all(drive, "/folder/sub/f.txt", 2) == v2
    assert await drive.deleted("/folder") == []


async def test_a_file_replaced_by_a_move_keeps_its_history(drive: Drive) -> None:
    await drive.write_file("/a.txt", io.BytesIO(b"a one"))
    await drive.write_file("/a.txt", io.BytesIO(b"a two"))
    mover = await drive.write_file("/b.txt", io.BytesIO(b"b one"))
    await drive.move("/b.txt", "/a.txt")
    live, replaced = await drive.history("/a.txt")
    assert (live.id, live.deleted_ns is None, replaced.deleted_ns is None) == (
        mover.file_id,
        True,
        False,
    )
    assert [e.path for e in await drive.deleted("/")] == ["/a.txt"]
    assert [v.version for v in await drive.versions("/a.txt", file_id=replaced.id)] == [1, 2]
    assert await read_all(drive, "/a.txt") == b"b one"
    # The name is taken, so the replaced file comes back elsewhere, history and all.
    with pytest.raises(AlreadyExists):
        await drive.restore("/a.txt", 1, file_id=replaced.id)
    back = await drive.restore("/a.txt", 1, file_id=replaced.id, to="/old/a.txt")
    assert (back.path, back.file_id, back.version) == ("/old/a.txt", replaced.id, 3)
    assert [v.version for v in await drive.versions("/old/a.txt")] == [1, 2, 3]
    assert await read_all(drive, "/old/a.txt") == b"a one"
    assert await read_all(drive, "/a.txt") == b"b one"


async def test_a_restored_deleted_file_keeps_its_id(drive: Drive) -> None:
    first = await drive.write_file("/clip.mov", io.BytesIO(b"one"))
    await drive.write_file("/clip.mov", io.BytesIO(b"two"))
    await drive.remove("/clip.mov")
    restored = await drive.restore("/clip.mov", 1)
    assert (restored.file_id, restored.version) == (first.file_id, 3)
    assert [v.version for v in await drive.versions("/clip.mov")] == [1, 2, 3]
    assert await read_all(drive, "/clip.mov") == b"one"
