"""Full chunks of a file still being written are sent before it is closed; the
commit keeps them by reference and sends only the rest, and never names a chunk
whose bytes the copy no longer holds."""

from __future__ import annotations

import asyncio
import ctypes
import io
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from mediadrive.core.blob import ChunkStream
from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.chunking import make_chunker
from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.hashing import chunk_id
from mediadrive.node import staging as staging_module
from mediadrive.node.options import CommitOn
from mediadrive.node.staging import WRITE_BEHIND

from .vfs_harness import CALLER, TestVFS, drive_urls, make_test_vfs

CHUNK = 4096
MiB = 1 << 20


class CountingStore(WrappedStore):
    """Remembers every chunk put; puts wait while ``gate`` is clear."""

    def __init__(self, inner: WrappedStore) -> None:
        super().__init__(inner)
        self.puts: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await self.gate.wait()
        self.puts.append(chunk_id)
        await super().put(chunk_id, data)


def counting(vfs: TestVFS) -> CountingStore:
    uploader = vfs.parts.drive.uploader
    store = CountingStore(uploader.blobs)  # type: ignore[arg-type]
    uploader.blobs = store
    return store


async def create(vfs: TestVFS, name: str) -> int:
    opened, _ = await vfs.vfs.create(1, name, 0o644, os.O_WRONLY, CALLER)
    return opened.fh


async def write_in_mib(
    vfs: TestVFS, fh: int, data: bytes | bytearray, start: int = 0, end: int | None = None
) -> None:
    """Write ``data[start:end]`` where it belongs, 1 MiB a call, as a copy in would."""
    for offset in range(start, len(data) if end is None else end, MiB):
        await vfs.vfs.write(fh, offset, bytes(data[offset : offset + MiB]))


async def sent_early(vfs: TestVFS, count: int) -> None:
    """Wait until ``count`` chunks of open files were sent ahead of their commits."""
    early = vfs.parts.writeback.early
    for _ in range(200):
        if sum(len(state.sent) for state in early._files.values()) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} chunks were sent early")


async def committed(vfs: TestVFS) -> None:
    if vfs.parts.options.commit_on is CommitOn.SAVE:
        await vfs.parts.writeback.save("/", "")
    await vfs.parts.writeback.settle()
    for _ in range(200):
        if not vfs.parts.writeback.busy and not vfs.parts.staging.files:
            return
        await asyncio.sleep(0.02)


async def read_back(tmp_path: Path, name: str) -> bytes:
    """``name`` as a new mount with an empty cache reads it from the store."""
    check = await make_test_vfs(tmp_path, cache="check")
    try:
        return await check.read_file(name)
    finally:
        await check.close()


async def version_holds(vfs: TestVFS, name: str, data: bytes) -> None:
    """The head version of ``name`` names the fixed chunks of ``data`` and reads back as it."""
    reader = await vfs.parts.drive.reader(f"/{name}")
    assert [e.chunk_id for e in reader.extents] == ids(data)
    assert await reader.read(0, reader.size) == data


async def released_and_read_back(vfs: TestVFS, fh: int, tmp_path: Path, name: str) -> bytes:
    """Close ``fh`` (unless -1), wait for the commit, unmount, and read ``name`` back as
    a new mount with an empty cache does."""
    if fh >= 0:
        vfs.vfs.release(fh)
    await committed(vfs)
    await vfs.close()
    return await read_back(tmp_path, name)


def ids(data: bytes) -> list[str]:
    return [chunk_id(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


async def test_full_chunks_travel_before_close_and_the_commit_sends_the_rest(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    store = counting(vfs)
    data = os.urandom(3 * CHUNK + 100)
    fh = await create(vfs, "clip.bin")
    # Written as cp does, a piece at a time; the file stays open.
    for offset in range(0, len(data), 1000):
        await vfs.vfs.write(fh, offset, data[offset : offset + 1000])
    await sent_early(vfs, 3)
    assert sorted(store.puts) == sorted(ids(data)[:3])
    assert vfs.parts.writeback.figures.commits == 0

    vfs.vfs.release(fh)
    await committed(vfs)
    # The commit sent only the tail; the version names the chunks sent early.
    assert store.puts[3:] == ids(data)[3:]
    figures = vfs.parts.writeback.figures
    assert (figures.commits, figures.bytes_uploaded) == (1, len(data))
    reader = await vfs.parts.drive.reader("/clip.bin")
    assert [e.chunk_id for e in reader.extents] == ids(data)
    # The chunks sent early stay out of the block cache (a file written that large is
    # output, rarely read back here); the tail the commit sent is in it.
    assert await vfs.read_file("clip.bin") == data
    assert vfs.parts.cache.figures.bytes_fetched == 3 * CHUNK
    await vfs.close()

    assert await read_back(tmp_path, "clip.bin") == data


async def test_chunks_the_drive_has_are_not_sent_again_while_a_copy_is_written(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    data = os.urandom(3 * CHUNK + 100)
    fh = await create(vfs, "take-1.bin")
    await vfs.vfs.write(fh, 0, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    store = counting(vfs)
    # The same bytes again under another name, written as cp does and left open.
    fh = await create(vfs, "take-2.bin")
    for offset in range(0, len(data), 1000):
        await vfs.vfs.write(fh, offset, data[offset : offset + 1000])
    await sent_early(vfs, 3)
    vfs.vfs.release(fh)
    await committed(vfs)
    assert store.puts == []
    await version_holds(vfs, "take-2.bin", data)
    await vfs.close()


async def test_a_chunk_rewritten_after_it_was_sent_is_sent_again(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path)
    store = counting(vfs)
    data = bytearray(os.urandom(4 * CHUNK))
    fh = await create(vfs, "clip.bin")
    await vfs.vfs.write(fh, 0, bytes(data))
    await sent_early(vfs, 4)
    # Rewrite part of the second chunk while the file is still open.
    await vfs.vfs.write(fh, CHUNK + 10, b"graded")
    data[CHUNK + 10 : CHUNK + 16] = b"graded"
    vfs.vfs.release(fh)
    await committed(vfs)

    reader = await vfs.parts.drive.reader("/clip.bin")
    assert [e.chunk_id for e in reader.extents] == ids(bytes(data))
    assert await reader.read(0, reader.size) == bytes(data)
    # Four chunks early, then only the rewritten one again.
    assert len(store.puts) == 5 and store.puts[4] == ids(bytes(data))[1]
    await vfs.close()


async def test_a_write_while_a_chunk_is_in_flight_is_not_lost(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path)
    store = counting(vfs)
    store.gate.clear()
    data = bytearray(os.urandom(2 * CHUNK))
    fh = await create(vfs, "clip.bin")
    await vfs.vfs.write(fh, 0, bytes(data))
    # Both chunks were read and wait to be put: change the first under them.
    for _ in range(100):
        if vfs.parts.writeback.early._files and all(
            not task.done()
            for state in vfs.parts.writeback.early._files.values()
            for task in state.tasks.values()
        ):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await vfs.vfs.write(fh, 5, b"late")
    data[5:9] = b"late"
    vfs.vfs.release(fh)
    store.gate.set()
    await committed(vfs)

    reader = await vfs.parts.drive.reader("/clip.bin")
    assert await reader.read(0, reader.size) == bytes(data)
    assert [e.chunk_id for e in reader.extents] == ids(bytes(data))
    await vfs.close()


async def test_a_truncate_after_chunks_were_sent_commits_what_the_file_holds(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    data = os.urandom(4 * CHUNK)
    fh = await create(vfs, "clip.bin")
    await vfs.vfs.write(fh, 0, data)
    await sent_early(vfs, 4)
    # Cut into the third chunk, then grow again: the rest of it reads as zeros.
    await vfs.truncate("clip.bin", 2 * CHUNK + 7)
    await vfs.truncate("clip.bin", 4 * CHUNK)
    vfs.vfs.release(fh)
    await committed(vfs)

    expected = data[: 2 * CHUNK + 7] + bytes(2 * CHUNK - 7)
    reader = await vfs.parts.drive.reader("/clip.bin")
    assert await reader.read(0, reader.size) == expected
    assert [e.chunk_id for e in reader.extents] == ids(expected)
    await vfs.close()


async def test_gc_keeps_the_chunks_sent_early_for_the_commit(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path)
    data = os.urandom(3 * CHUNK)
    fh = await create(vfs, "clip.bin")
    await vfs.vfs.write(fh, 0, data)
    await sent_early(vfs, 3)
    # No version names them yet; their holds keep them through a GC with no grace.
    report = await vfs.parts.drive.gc(grace=0)
    assert report.chunks_deleted == 0
    assert await released_and_read_back(vfs, fh, tmp_path, "clip.bin") == data


async def test_holds_of_chunks_sent_early_end_with_the_copy(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path)
    data = os.urandom(2 * CHUNK)
    fh = await create(vfs, "clip.bin")
    await vfs.vfs.write(fh, 0, data)
    await sent_early(vfs, 2)
    # Replaced before it was ever committed: its chunks were sent for nothing.
    await vfs.vfs.write(fh, 0, os.urandom(2 * CHUNK))
    vfs.vfs.release(fh)
    await committed(vfs)
    assert not vfs.parts.writeback.early._files
    assert await vfs.parts.drive.meta.held_unreferenced() == 0
    await vfs.close()


async def cdc_vfs(tmp_path: Path) -> TestVFS:
    """A VFS on a drive with 8 KiB content-defined chunks, cut early 1 MiB at a time."""
    settings = DriveSettings(chunking="cdc", chunk_size=8192)
    meta_url, store_url = drive_urls(tmp_path)
    drive = await Drive.create("media", meta_url, store_url, settings)
    await drive.close()
    vfs = await make_test_vfs(tmp_path)
    vfs.parts.writeback.early.cdc_batch = MiB
    return vfs


def cdc_ids(data: bytes) -> list[str]:
    return [chunk_id(p.data) for p in make_chunker("cdc", 8192).split(io.BytesIO(data))]


async def test_content_defined_chunks_travel_before_close_cut_as_a_whole_pass(
    tmp_path: Path,
) -> None:
    vfs = await cdc_vfs(tmp_path)
    store = counting(vfs)
    data = os.urandom(3 * MiB + 5000)
    fh = await create(vfs, "take.mov")
    for offset in range(0, len(data), 64 << 10):
        await vfs.vfs.write(fh, offset, data[offset : offset + (64 << 10)])
    # Two batches of 1 MiB at least are cut and sent while the file is open.
    await sent_early(vfs, 100)
    early = set(store.puts)
    assert early < set(cdc_ids(data))
    vfs.vfs.release(fh)
    await committed(vfs)

    reader = await vfs.parts.drive.reader("/take.mov")
    assert [e.chunk_id for e in reader.extents] == cdc_ids(data)
    assert await reader.read(0, reader.size) == data
    # No chunk went twice, and the commit sent only what was not sent early.
    assert sorted(store.puts) == sorted(set(cdc_ids(data)))
    await vfs.close()


async def test_a_content_defined_chunk_rewritten_after_it_was_sent_is_cut_again(
    tmp_path: Path,
) -> None:
    vfs = await cdc_vfs(tmp_path)
    data = bytearray(os.urandom(3 * MiB))
    fh = await create(vfs, "take.mov")
    for offset in range(0, len(data), 64 << 10):
        await vfs.vfs.write(fh, offset, bytes(data[offset : offset + (64 << 10)]))
    await sent_early(vfs, 100)
    await vfs.vfs.write(fh, 300_000, b"regraded")
    data[300_000:300_008] = b"regraded"
    vfs.vfs.release(fh)
    await committed(vfs)

    reader = await vfs.parts.drive.reader("/take.mov")
    assert await reader.read(0, reader.size) == bytes(data)
    ids = [e.chunk_id for e in reader.extents]
    assert ids == [chunk_id(bytes(data[e.offset : e.offset + e.length])) for e in reader.extents]
    await vfs.close()


async def edited_copy(vfs: TestVFS, data: bytearray) -> tuple[int, CountingStore]:
    """(Versions from saves: an fsync sends ahead what a later commit keeps.) ``data``
    committed as clip.bin and read back (its blocks are at hand, so an edit
    is merged into whole chunks), then the file open for writing with six bytes of its
    third chunk changed; puts counted from then on."""
    await vfs.write_file("clip.bin", bytes(data))
    await committed(vfs)
    assert await vfs.read_file("clip.bin") == bytes(data)
    store = counting(vfs)
    opened = await vfs.vfs.open(await vfs.inode("clip.bin"), os.O_RDWR)
    await vfs.vfs.write(opened.fh, 2 * CHUNK + 10, b"graded")
    data[2 * CHUNK + 10 : 2 * CHUNK + 16] = b"graded"
    return opened.fh, store


async def sends_settled(vfs: TestVFS) -> None:
    for staged in list(vfs.parts.staging.files.values()):
        await vfs.parts.writeback.early.settle(staged)


async def test_an_fsync_starts_sending_what_the_commit_will_send(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path, commit_on=CommitOn.SAVE)
    data = bytearray(os.urandom(4 * CHUNK))
    fh, store = await edited_copy(vfs, data)
    await vfs.vfs.fsync(fh)
    await sent_early(vfs, 1)
    # The changed chunk travelled on the fsync, before any commit of the edit.
    assert store.puts == [ids(bytes(data))[2]]
    assert vfs.parts.writeback.figures.commits == 1

    vfs.vfs.release(fh)
    await committed(vfs)
    # The commit kept it (and the untouched chunks): nothing was sent again.
    assert store.puts == [ids(bytes(data))[2]]
    figures = vfs.parts.writeback.figures
    assert (figures.commits, figures.bytes_uploaded) == (2, 5 * CHUNK)
    await version_holds(vfs, "clip.bin", bytes(data))
    await vfs.close()
    assert await read_back(tmp_path, "clip.bin") == bytes(data)


async def test_fsyncs_of_a_file_that_keeps_changing_send_it_ahead_twice_at_most(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path, commit_on=CommitOn.SAVE)
    data = bytearray(os.urandom(4 * CHUNK))
    fh, store = await edited_copy(vfs, data)
    for i in range(5):
        await vfs.vfs.write(fh, 2 * CHUNK + 100 + i, b"x")
        data[2 * CHUNK + 100 + i] = ord("x")
        await vfs.vfs.fsync(fh)
        await sends_settled(vfs)
    assert len(store.puts) == 2

    vfs.vfs.release(fh)
    await committed(vfs)
    # The commit sends the chunk as it ended up; the next fsyncs may send ahead again.
    assert len(store.puts) == 3 and store.puts[-1] == ids(bytes(data))[2]
    await version_holds(vfs, "clip.bin", bytes(data))
    await vfs.close()


async def test_a_write_after_the_fsync_is_in_the_commit_not_the_chunk_sent_ahead(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path, commit_on=CommitOn.SAVE)
    data = bytearray(os.urandom(4 * CHUNK))
    fh, store = await edited_copy(vfs, data)
    store.gate.clear()
    await vfs.vfs.fsync(fh)
    # Written while the chunk read at the fsync is still on its way.
    await vfs.vfs.write(fh, 2 * CHUNK + 200, b"later")
    data[2 * CHUNK + 200 : 2 * CHUNK + 205] = b"later"
    store.gate.set()
    vfs.vfs.release(fh)
    await committed(vfs)
    await version_holds(vfs, "clip.bin", bytes(data))
    await vfs.close()


def resident_pages(fd: int, offset: int, length: int) -> int:
    """How many pages of a file's range are in the page cache (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = length // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    with mmap.mmap(fd, length, offset=offset) as mapped:
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            assert libc.mincore(ctypes.addressof(anchor), length, vector) == 0
        finally:
            del anchor
    return sum(flag & 1 for flag in vector)


async def test_chunks_written_in_order_are_sent_as_written_not_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vfs = await make_test_vfs(tmp_path)
    store = counting(vfs)
    early = vfs.parts.writeback.early
    read_back_at: list[int] = []
    read = early._read

    async def reading(*args: Any, **kwargs: Any) -> Any:
        read_back_at.append(args[2])
        return await read(*args, **kwargs)

    monkeypatch.setattr(early, "_read", reading)
    data = os.urandom(4 * CHUNK + 100)
    fh = await create(vfs, "clip.bin")
    # Two chunks as cp writes them, the halves of the third out of order, then the
    # fourth and the tail in one write.
    for offset in range(0, 2 * CHUNK, 1024):
        await vfs.vfs.write(fh, offset, data[offset : offset + 1024])
    half = 2 * CHUNK + CHUNK // 2
    await vfs.vfs.write(fh, half, data[half : 3 * CHUNK])
    await vfs.vfs.write(fh, 2 * CHUNK, data[2 * CHUNK : half])
    await vfs.vfs.write(fh, 3 * CHUNK, data[3 * CHUNK :])
    await sent_early(vfs, 4)
    assert read_back_at == [2 * CHUNK]
    assert sorted(store.puts) == sorted(ids(data)[:4])
    vfs.vfs.release(fh)
    await committed(vfs)
    await version_holds(vfs, "clip.bin", data)
    # Nothing gathered outlives the copy.
    assert early._gathering == 0
    await vfs.close()
    assert await read_back(tmp_path, "clip.bin") == data


async def test_a_chunk_changed_while_it_is_gathered_sends_what_the_file_holds(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    data = bytearray(os.urandom(3 * CHUNK))
    fh = await create(vfs, "clip.bin")
    # The first chunk is retouched halfway through its writing, the second cut to
    # nothing and written again.
    await vfs.vfs.write(fh, 0, bytes(data[:2048]))
    await vfs.vfs.write(fh, 100, b"retouched")
    data[100:109] = b"retouched"
    await vfs.vfs.write(fh, 2048, bytes(data[2048 : CHUNK + 1024]))
    await vfs.truncate("clip.bin", CHUNK)
    await vfs.vfs.write(fh, CHUNK, bytes(data[CHUNK:]))
    await sent_early(vfs, 3)
    vfs.vfs.release(fh)
    await committed(vfs)
    await version_holds(vfs, "clip.bin", bytes(data))
    await vfs.close()


async def test_a_large_file_written_in_order_goes_past_the_page_cache(tmp_path: Path) -> None:
    # Where an fsync flushes the copy here (versions from saves only); elsewhere the
    # copy is dropped once committed, its pages never written.
    vfs = await make_test_vfs(tmp_path, chunk_size=MiB, commit_on=CommitOn.SAVE)
    data = os.urandom(WRITE_BEHIND + 4 * MiB)
    fh = await create(vfs, "render.exr")
    for offset in range(0, len(data), 256 << 10):
        await vfs.vfs.write(fh, offset, data[offset : offset + (256 << 10)])
    (staged,) = vfs.parts.staging.files.values()
    if staged.direct_fd < 0:
        pytest.skip("the cache folder's file system has no direct I/O")
    # Past its first WRITE_BEHIND bytes the copy was written from the bytes gathered
    # for the early sends, straight to disk: none of it is in the page cache.
    assert resident_pages(staged.fd, WRITE_BEHIND, 4 * MiB) == 0
    assert os.pread(staged.fd, len(data), 0) == data
    vfs.vfs.release(fh)
    await vfs.parts.writeback.save("/render.exr", "")
    assert await released_and_read_back(vfs, -1, tmp_path, "render.exr") == data


def _names(fd: str, path: str) -> bool:
    """Whether this process's descriptor ``fd`` names ``path``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == path
    except OSError:
        return False


async def test_a_file_system_without_direct_io_gets_the_bytes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It takes the O_DIRECT open and refuses the writes.
    monkeypatch.setattr(staging_module, "_pwrite_all", lambda fd, placed: False)
    # (Writes go past the page cache only where an fsync flushes the copy here.)
    vfs = await make_test_vfs(tmp_path, chunk_size=MiB, commit_on=CommitOn.SAVE)
    data = os.urandom(WRITE_BEHIND + 2 * MiB)
    fh = await create(vfs, "render.exr")
    await write_in_mib(vfs, fh, data)
    (staged,) = vfs.parts.staging.files.values()
    assert staged.direct_fd == -2
    # The descriptor it refused is closed: the copy is open once, for the page cache.
    copy = os.readlink(f"/proc/self/fd/{staged.fd}")
    assert [n for n in os.listdir("/proc/self/fd") if _names(n, copy)] == [str(staged.fd)]
    vfs.vfs.release(fh)
    await vfs.parts.writeback.save("/render.exr", "")
    assert await released_and_read_back(vfs, -1, tmp_path, "render.exr") == data


async def test_a_chunk_gathered_in_odd_pieces_is_named_and_digested_as_a_whole_pass(
    tmp_path: Path,
) -> None:
    # Blocks hashed as they fill, across writes that end anywhere in them.
    chunk = 4 * MiB
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk)
    store = counting(vfs)
    data = os.urandom(2 * chunk + 12345)
    fh = await create(vfs, "plate.dpx")
    step = 300_007
    for offset in range(0, len(data), step):
        await vfs.vfs.write(fh, offset, data[offset : offset + step])
    await sent_early(vfs, 2)
    assert store.puts == [chunk_id(data[:chunk]), chunk_id(data[chunk : 2 * chunk])]
    # A new mount checks every block it fetches against the digests recorded.
    assert await released_and_read_back(vfs, fh, tmp_path, "plate.dpx") == data


async def test_a_rewrite_over_a_block_being_filled_keeps_the_bytes_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=MiB)
    old = os.urandom(WRITE_BEHIND + 2 * MiB)
    await vfs.write_file("plate.dpx", old)
    await vfs.close()
    # Another mount, its cache empty: the file's blocks come from the store.
    vfs = await make_test_vfs(tmp_path, cache="cold", chunk_size=MiB, commit_on=CommitOn.SAVE)
    fh = (await vfs.vfs.open(await vfs.inode("plate.dpx"), os.O_RDWR)).fh
    cache = vfs.parts.cache
    fetch_now = asyncio.Event()
    get = cache.get

    async def held_fetch(chunk: str, index: int) -> Any:
        await fetch_now.wait()
        return await get(chunk, index)

    monkeypatch.setattr(cache, "get", held_fetch)
    written, go_on = threading.Event(), threading.Event()
    pwrite_all = staging_module._pwrite_all

    def held_write(fd: int, placed: list[tuple[int, memoryview]]) -> bool:
        done = pwrite_all(fd, placed)
        written.set()
        go_on.wait(5)
        return done

    monkeypatch.setattr(staging_module, "_pwrite_all", held_write)
    # A rewrite of the last chunk, in order from its start, is on its way into the copy
    # when a reader of that chunk's block starts filling it in from the base.
    block = WRITE_BEHIND + MiB
    new = os.urandom(MiB)
    writing = asyncio.ensure_future(vfs.vfs.write(fh, block, new))
    await asyncio.to_thread(written.wait, 0.5)
    reading = asyncio.ensure_future(vfs.vfs.read(fh, block, 4096))
    await asyncio.sleep(0.05)
    # The fill lands before the write is done: were the block still lacking then, the
    # base's bytes would go over the written ones.
    fetch_now.set()
    await reading
    go_on.set()
    assert await writing == MiB
    # What the copy holds is what was written, for readers of the open file and for
    # a commit that reads it.
    assert await vfs.vfs.read(fh, block, MiB) == new
    vfs.vfs.release(fh)
    await vfs.parts.writeback.save("/plate.dpx", "")
    assert await released_and_read_back(vfs, -1, tmp_path, "plate.dpx") == old[:block] + new


# -- chunks that go up a part at a time while they are written -------------------------------

STREAMED = 16 * MiB


class _WatchedStream(ChunkStream):
    def __init__(self, inner: ChunkStream, watch: StreamWatch) -> None:
        self.inner = inner
        self.watch = watch
        self.part_size = inner.part_size
        self.min_part = inner.min_part

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        self.watch.parts += 1
        await self.inner.write(offset, data)

    async def finish(self, chunk_id: str, size: int) -> None:
        await self.inner.finish(chunk_id, size)
        self.watch.named.append(chunk_id)

    async def abort(self) -> None:
        self.watch.aborted += 1
        await self.inner.abort()


class StreamWatch(WrappedStore):
    """Passes streams on, remembering what they named, and every chunk put whole."""

    def __init__(self, inner: WrappedStore) -> None:
        super().__init__(inner)
        self.puts: list[str] = []
        self.named: list[str] = []
        self.parts = 0
        self.aborted = 0

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        self.puts.append(chunk_id)
        await super().put(chunk_id, data)

    def stream(self, part_size: int = 0) -> ChunkStream | None:
        inner = self.inner.stream(part_size)
        return None if inner is None else _WatchedStream(inner, self)


def watching(vfs: TestVFS) -> StreamWatch:
    uploader = vfs.parts.drive.uploader
    store = StreamWatch(uploader.blobs)  # type: ignore[arg-type]
    uploader.blobs = store
    return store


def streams_left(tmp_path: Path) -> list[str]:
    folder = tmp_path / "store" / "streams"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def fixed_ids(data: bytes, size: int = STREAMED) -> list[str]:
    return [chunk_id(data[i : i + size]) for i in range(0, len(data), size)]


async def test_a_large_chunk_goes_up_in_parts_while_it_is_written(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=STREAMED, stream_chunks=True)
    store = watching(vfs)
    # Two whole chunks and a short last one, long enough to stream too.
    data = os.urandom(2 * STREAMED + 10 * MiB)
    fh = await create(vfs, "render.exr")
    await write_in_mib(vfs, fh, data, 0, 12 * MiB)
    # Three quarters of the first chunk written: its first part goes up meanwhile.
    folder = tmp_path / "store" / "streams"
    for _ in range(500):
        if [p for p in streams_left(tmp_path) if os.path.getsize(folder / p) >= 8 * MiB]:
            break
        await asyncio.sleep(0.02)
    (part,) = streams_left(tmp_path)
    assert os.path.getsize(folder / part) == 8 * MiB
    await write_in_mib(vfs, fh, data, 12 * MiB)
    await sent_early(vfs, 2)
    # (Named as each finishes: the two side by side, in either order.)
    assert sorted(store.named) == sorted(fixed_ids(data)[:2])
    vfs.vfs.release(fh)
    await committed(vfs)
    # The short last chunk is named from its stream too: nothing is put whole.
    assert sorted(store.named) == sorted(fixed_ids(data))
    assert store.puts == []
    assert (store.parts, store.aborted) == (6, 0)
    assert streams_left(tmp_path) == []
    assert vfs.parts.writeback.figures.bytes_uploaded == len(data)
    reader = await vfs.parts.drive.reader("/render.exr")
    assert [e.chunk_id for e in reader.extents] == fixed_ids(data)
    assert await released_and_read_back(vfs, -1, tmp_path, "render.exr") == data


async def test_a_streamed_chunk_goes_up_in_two_halves(tmp_path: Path) -> None:
    chunk = 2 * STREAMED
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk, stream_chunks=True)
    early = vfs.parts.writeback.early
    assert (early.streams, early.part_size) == (True, STREAMED)
    store = watching(vfs)
    data = os.urandom(2 * chunk)
    fh = await create(vfs, "comp.exr")
    await write_in_mib(vfs, fh, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    # Each chunk's first half went as it was written; its second, once named, in two
    # pieces side by side (the two chunks' in either order).
    assert (sorted(store.named), store.puts, store.parts) == (
        sorted(fixed_ids(data, chunk)),
        [],
        6,
    )
    assert await released_and_read_back(vfs, -1, tmp_path, "comp.exr") == data


async def test_a_chunk_no_larger_than_the_stores_smallest_part_goes_up_in_one_put(
    tmp_path: Path,
) -> None:
    # Two parts of 4 MiB would be smaller than the local store's 8 MiB parts.
    chunk = 8 * MiB
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk, stream_chunks=True)
    assert not vfs.parts.writeback.early.streams
    store = watching(vfs)
    data = os.urandom(3 * chunk)
    fh = await create(vfs, "proxy.mov")
    await write_in_mib(vfs, fh, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    assert (store.named, store.parts) == ([], 0)
    assert sorted(store.puts) == sorted(fixed_ids(data, chunk))
    assert await released_and_read_back(vfs, -1, tmp_path, "proxy.mov") == data


async def test_a_chunk_rewritten_while_it_streams_is_aborted_and_sent_as_the_file_holds(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=STREAMED, stream_chunks=True)
    store = watching(vfs)
    data = bytearray(os.urandom(2 * STREAMED))
    fh = await create(vfs, "plate.dpx")
    await write_in_mib(vfs, fh, data, 0, 10 * MiB)
    # Back into the part already sent: the stream no longer holds the file's bytes.
    await vfs.vfs.write(fh, 5, b"retouched")
    data[5:14] = b"retouched"
    await write_in_mib(vfs, fh, data, 10 * MiB)
    vfs.vfs.release(fh)
    await committed(vfs)
    first, second = fixed_ids(bytes(data))
    assert store.named == [second]
    assert store.puts == [first]
    assert store.aborted == 1
    early = vfs.parts.writeback.early
    assert (early.streams_started, early.streams_dropped) == (2, 1)
    await vfs.parts.writeback.early.close()
    assert streams_left(tmp_path) == []
    await version_holds_streamed(vfs, "plate.dpx", bytes(data))
    assert await released_and_read_back(vfs, -1, tmp_path, "plate.dpx") == bytes(data)


async def test_a_copy_of_chunks_the_drive_has_stops_streaming_after_its_first(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=STREAMED, stream_chunks=True)
    data = os.urandom(3 * STREAMED)
    fh = await create(vfs, "take-1.exr")
    await vfs.vfs.write(fh, 0, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    stored = await vfs.parts.drive.meta.chunk_stats()
    store = watching(vfs)
    early = vfs.parts.writeback.early
    fh = await create(vfs, "take-2.exr")
    await write_in_mib(vfs, fh, data, 0, STREAMED)
    # The first chunk's parts went while it was written (its id was not known yet);
    # once named, the drive had it: its stream is given up, nothing is stored twice.
    await sent_early(vfs, 1)
    assert (early.streams_started, early.streams_dropped) == (1, 1)
    # The file is a copy, most likely: its later chunks go whole, and the drive has
    # those too, so nothing more travels.
    await write_in_mib(vfs, fh, data, STREAMED)
    vfs.vfs.release(fh)
    await committed(vfs)
    await early.close()
    # Its first chunk's first half went; its second half waited for the name.
    assert (store.named, store.puts, store.parts, store.aborted) == ([], [], 1, 1)
    assert (early.streams_started, early.streams_dropped) == (1, 1)
    assert await vfs.parts.drive.meta.chunk_stats() == stored
    assert streams_left(tmp_path) == []
    assert sorted(os.listdir(tmp_path / "store" / "chunks" / data_id_dir(data))) != []
    await version_holds_streamed(vfs, "take-2.exr", data)
    await vfs.close()


async def test_a_copy_of_a_short_file_the_drive_has_sends_no_last_part(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=STREAMED, stream_chunks=True)
    data = os.urandom(STREAMED - 4 * MiB)
    fh = await create(vfs, "still.exr")
    await vfs.vfs.write(fh, 0, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    store = watching(vfs)
    early = vfs.parts.writeback.early
    before = (early.streams_started, early.streams_dropped)
    fh = await create(vfs, "still-copy.exr")
    await write_in_mib(vfs, fh, data)
    vfs.vfs.release(fh)
    await committed(vfs)
    await early.close()
    # Its first part went while it was written; the last, short, waited for the name,
    # which the drive had.
    assert (store.named, store.puts, store.parts, store.aborted) == ([], [], 1, 1)
    assert (early.streams_started, early.streams_dropped) == (before[0] + 1, before[1] + 1)
    assert streams_left(tmp_path) == []
    await version_holds_streamed(vfs, "still-copy.exr", data)
    await vfs.close()


def data_id_dir(data: bytes) -> str:
    return fixed_ids(data)[0][:2]


async def version_holds_streamed(vfs: TestVFS, name: str, data: bytes) -> None:
    reader = await vfs.parts.drive.reader(f"/{name}")
    assert [e.chunk_id for e in reader.extents] == fixed_ids(data)
    assert await reader.read(0, reader.size) == data


async def test_chunks_go_up_whole_unless_the_mount_streams_them(tmp_path: Path) -> None:
    vfs = await make_test_vfs(tmp_path, chunk_size=STREAMED)
    store = watching(vfs)
    data = os.urandom(2 * STREAMED)
    fh = await create(vfs, "render.exr")
    await write_in_mib(vfs, fh, data)
    await sent_early(vfs, 2)
    assert (store.parts, store.named) == (0, [])
    assert sorted(store.puts) == sorted(fixed_ids(data))
    assert await released_and_read_back(vfs, fh, tmp_path, "render.exr") == data
