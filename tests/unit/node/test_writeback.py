"""The write-back engine through the in-process VFS: untouched chunks are kept, not
uploaded again; a refused commit keeps the local copy."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.chunking import Piece
from mediadrive.core.config import ConflictPolicy, DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.errors import ConflictError, StoreUnavailable
from mediadrive.core.hashing import BLOCK_SIZE, chunk_id
from mediadrive.core.meta import Extent
from mediadrive.core.upload import pieces
from mediadrive.node import writeback as writeback_module
from mediadrive.node.options import CommitOn
from mediadrive.node.staging import StagedFile
from mediadrive.node.vfs import XATTR_TIER, XATTR_VERSION
from mediadrive.node.writeback import (
    ABSORB_PARTS,
    LONG_RUN_PARTS,
    MAX_EXTENTS_PER_CHUNK,
    CommitReport,
    extents_in_region,
    fixed_reusable,
    fixed_stretches,
    hard_extent_bound,
)

from .vfs_harness import TestVFS, make_test_vfs

CHUNK = 4096


async def test_an_edit_of_a_remote_file_fetches_nothing_and_sends_what_it_wrote(
    tmp_path: Path,
) -> None:
    data = os.urandom(8 * CHUNK + 123)
    first = await make_test_vfs(tmp_path)
    await first.write_file("clip.bin", data)
    await first.parts.writeback.settle()
    assert first.parts.writeback.figures.bytes_uploaded == len(data)
    base = (await first.parts.drive.reader("/clip.bin", 1)).extents
    await first.close()

    # A fresh cache: the staged copy starts from the drive and lacks every block.
    edit = await make_test_vfs(tmp_path, cache="fresh")
    offset = 3 * CHUNK + 10
    await edit.write_at("clip.bin", offset, b"edited")
    await edit.parts.writeback.settle()
    assert edit.parts.writeback.figures.commits == 1
    # The block under the edit never came: its other bytes stay slices of their chunk.
    assert edit.parts.writeback.figures.bytes_uploaded == 6
    assert edit.parts.cache.figures.bytes_fetched == 0
    extents = (await edit.parts.drive.reader("/clip.bin", 2)).extents
    touched = base[3].chunk_id
    assert [(e.offset, e.length, e.chunk_offset) for e in extents[3:6]] == [
        (3 * CHUNK, 10, 0),
        (offset, 6, 0),
        (offset + 6, CHUNK - 16, 16),
    ]
    assert [e.chunk_id == touched for e in extents[3:6]] == [True, False, True]
    assert extents[:3] == base[:3] and extents[6:] == base[4:]
    await edit.close()

    check = await make_test_vfs(tmp_path, cache="check")
    expected = data[:offset] + b"edited" + data[offset + 6 :]
    assert await check.read_file("clip.bin") == expected
    await check.close()


async def test_an_edit_of_blocks_at_hand_sends_the_chunk_it_touched(tmp_path: Path) -> None:
    data = os.urandom(8 * CHUNK + 123)
    first = await make_test_vfs(tmp_path)
    await first.write_file("clip.bin", data)
    await first.parts.writeback.settle()
    await first.close()

    edit = await make_test_vfs(tmp_path, cache="fresh")
    assert await edit.read_file("clip.bin") == data
    await edit.write_at("clip.bin", 3 * CHUNK + 10, b"edited")
    await edit.parts.writeback.settle()
    # The block was in the cache: the copy took it whole, and the chunk's few unchanged
    # bytes went again with the edit, as one chunk (the one a fresh upload makes).
    expected = data[: 3 * CHUNK + 10] + b"edited" + data[3 * CHUNK + 16 :]
    assert edit.parts.writeback.figures.bytes_uploaded == CHUNK
    assert edit.parts.cache.figures.bytes_fetched == len(data)
    extents = (await edit.parts.drive.reader("/clip.bin", 2)).extents
    assert [e.length for e in extents] == [CHUNK] * 8 + [123]
    assert await edit.read_file("clip.bin") == expected
    await edit.close()


async def test_reading_back_an_edit_sent_ahead_of_its_fsync_fetches_nothing(
    tmp_path: Path,
) -> None:
    """The piece an fsync sends ahead is kept by reference by its commit; its blocks go
    into the block cache from the bytes sent, so reading the edit back once the copy
    is gone stays local."""
    chunk = 16 * BLOCK_SIZE
    data = bytearray(os.urandom(2 * chunk))
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk, cache_size=1 << 30)
    await vfs.write_file("plate.exr", bytes(data))
    await vfs.parts.writeback.settle()
    inode = await vfs.inode("plate.exr")
    opened = await vfs.vfs.open(inode, os.O_RDWR)
    patch = os.urandom(BLOCK_SIZE)
    offset = chunk + 4321
    await vfs.vfs.write(opened.fh, offset, patch)
    await vfs.vfs.fsync(opened.fh)
    vfs.vfs.release(opened.fh)
    await vfs.parts.writeback.settle()
    assert vfs.parts.staging.files == {}
    fetched = vfs.parts.cache.figures.bytes_fetched
    opened = await vfs.vfs.open(inode, os.O_RDONLY)
    assert await vfs.vfs.read(opened.fh, offset, BLOCK_SIZE) == patch
    vfs.vfs.release(opened.fh)
    assert vfs.parts.cache.figures.bytes_fetched == fetched
    await vfs.close()
    # What the cache holds under that chunk is what the store holds.
    data[offset : offset + BLOCK_SIZE] = patch
    check = await make_test_vfs(tmp_path, cache="check", chunk_size=chunk)
    assert await check.read_file("plate.exr") == data
    await check.close()


async def _fragmented(tmp_path: Path, cache: str = "cache") -> tuple[TestVFS, bytearray, int]:
    """A one-chunk file whose chunk holds five short edits (eleven extents, more than
    MAX_EXTENTS_PER_CHUNK): an edit beside one of them sends that one's bytes again.
    Versions come from saves (an fsync sends its pieces ahead and flushes the copy
    here; the save's commit keeps them)."""
    chunk = 16 * BLOCK_SIZE
    short = chunk // ABSORB_PARTS
    data = bytearray(os.urandom(chunk))
    vfs = await make_test_vfs(
        tmp_path, chunk_size=chunk, cache_size=1 << 30, commit_on=CommitOn.SAVE
    )
    await vfs.write_file("comp.nk", bytes(data))
    await vfs.parts.writeback.save("/comp.nk", "")
    inode = await vfs.inode("comp.nk")
    for k in range(1, 6):
        patch = os.urandom(short)
        offset = 2 * k * BLOCK_SIZE + 4321
        opened = await vfs.vfs.open(inode, os.O_RDWR)
        await vfs.vfs.write(opened.fh, offset, patch)
        await vfs.vfs.fsync(opened.fh)
        vfs.vfs.release(opened.fh)
        await vfs.parts.writeback.save("/comp.nk", "")
        await vfs.parts.writeback.settle()
        data[offset : offset + short] = patch
    extents = (await vfs.parts.drive.reader("/comp.nk", 6)).extents
    assert len(extents) == 11
    if cache != "cache":
        await vfs.close()
        vfs = await make_test_vfs(
            tmp_path, chunk_size=chunk, cache_size=1 << 30, cache=cache, commit_on=CommitOn.SAVE
        )
    return vfs, data, short


async def _edit_beside_the_third(
    vfs: TestVFS, data: bytearray, short: int
) -> tuple[int, int, str, dict[int, Extent]]:
    """Write and fsync ``short`` bytes right after the third short edit, leaving the
    file open; returns the handle, where that edit starts, the id of the chunk its bytes
    and the new ones make, and the pieces the fsync sent (by offset)."""
    start = 6 * BLOCK_SIZE + 4321
    patch = os.urandom(short)
    data[start + short : start + 2 * short] = patch
    inode = await vfs.inode("comp.nk")
    opened = await vfs.vfs.open(inode, os.O_RDWR)
    await vfs.vfs.write(opened.fh, start + short, patch)
    await vfs.vfs.fsync(opened.fh)
    staged = vfs.parts.staging.get(vfs.vfs.tree.node_id(inode))
    assert staged is not None
    early = vfs.parts.writeback.early
    await early.settle(staged)
    return opened.fh, start, chunk_id(bytes(data[start : start + 2 * short])), early.ready(staged)


async def test_an_fsync_beside_an_earlier_edit_sends_both_when_their_blocks_are_at_hand(
    tmp_path: Path,
) -> None:
    """In a chunk with too many extents, the short earlier edit beside a new one goes
    again with it (see fixed_reusable). Its blocks are in the block cache (kept when
    it was sent): the fsync copies them in and sends the piece the commit keeps, so the
    commit, at the save after the close, sends nothing."""
    vfs, data, short = await _fragmented(tmp_path)
    fetched = vfs.parts.cache.figures.bytes_fetched
    fh, start, merged, sent = await _edit_beside_the_third(vfs, data, short)
    # Sent by the fsync, before any commit.
    assert sent == {start: Extent(start, 2 * short, merged)}
    assert await vfs.parts.drive.meta.unrecorded([merged]) == []
    uploaded = vfs.parts.writeback.figures.bytes_uploaded
    vfs.vfs.release(fh)
    await vfs.parts.writeback.save("/comp.nk", "")
    await vfs.parts.writeback.settle()
    extents = (await vfs.parts.drive.reader("/comp.nk", 7)).extents
    assert Extent(start, 2 * short, merged) in extents
    # The commit counts the piece the fsync sent, and sent nothing itself.
    assert vfs.parts.writeback.figures.bytes_uploaded - uploaded == 2 * short
    assert vfs.parts.cache.figures.bytes_fetched == fetched
    assert await vfs.read_file("comp.nk") == data
    await vfs.close()


async def test_an_fsync_does_not_fetch_from_the_store_the_bytes_its_commit_sends_again(
    tmp_path: Path,
) -> None:
    """The same edit from a machine whose cache lacks the earlier edit's blocks: the
    fsync leaves them to the commit (an fsync does not wait on the store), which
    fetches them and sends both."""
    vfs, data, short = await _fragmented(tmp_path, cache="fresh")
    fh, start, merged, sent = await _edit_beside_the_third(vfs, data, short)
    assert vfs.parts.cache.figures.bytes_fetched == 0
    assert sent == {}
    vfs.vfs.release(fh)
    await vfs.parts.writeback.save("/comp.nk", "")
    await vfs.parts.writeback.settle()
    extents = (await vfs.parts.drive.reader("/comp.nk", 7)).extents
    assert Extent(start, 2 * short, merged) in extents
    assert vfs.parts.cache.figures.bytes_fetched > 0
    assert await vfs.read_file("comp.nk") == data
    await vfs.close()


async def test_a_piece_sent_ahead_waits_in_memory_while_fsyncs_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocks of a piece sent ahead are readable from memory at once, and reach
    the cache's disk only once fsyncs pause (or too many bytes wait)."""
    monkeypatch.setattr(writeback_module, "_KEEP_AFTER", 0.01)
    monkeypatch.setattr(writeback_module, "_KEEP_WITHIN", 3600.0)
    chunk = 16 * BLOCK_SIZE
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk, cache_size=1 << 30)
    await vfs.write_file("plate.exr", os.urandom(2 * chunk))
    await vfs.parts.writeback.settle()
    writeback, cache = vfs.parts.writeback, vfs.parts.cache
    inode = await vfs.inode("plate.exr")

    async def edit(offset: int) -> tuple[bytes, str]:
        patch = os.urandom(BLOCK_SIZE)
        opened = await vfs.vfs.open(inode, os.O_RDWR)
        await vfs.vfs.write(opened.fh, offset, patch)
        await vfs.vfs.fsync(opened.fh)
        # Fsyncs go on, as far as the keeping of their pieces can tell.
        writeback._sent_ahead_at = float("inf")
        vfs.vfs.release(opened.fh)
        await writeback._queue.join()
        node = await vfs.parts.drive.meta.get_node(vfs.vfs.tree.node_id(inode))
        assert node is not None and node.head_version is not None
        extents = (await vfs.parts.drive.reader("/plate.exr", node.head_version)).extents
        (piece,) = [e for e in extents if e.offset == offset]
        return patch, piece.chunk_id

    offset = chunk + 4321
    patch, sent = await edit(offset)
    assert cache.at_hand(sent, 0) and not cache.has(sent, 0)
    fetched = cache.figures.bytes_fetched
    opened = await vfs.vfs.open(inode, os.O_RDONLY)
    assert await vfs.vfs.read(opened.fh, offset, BLOCK_SIZE) == patch
    vfs.vfs.release(opened.fh)
    assert cache.figures.bytes_fetched == fetched

    # Too many bytes waiting: written even while fsyncs go on.
    monkeypatch.setattr(writeback_module, "_KEEP_HELD", BLOCK_SIZE // 2)
    _, second = await edit(offset + 2 * BLOCK_SIZE)
    await writeback.settle()
    assert cache.has(sent, 0) and cache.has(second, 0)
    await vfs.close()


def gate_puts(drive: Drive) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every put of ``drive``'s uploads until the first event is set; the second
    is set once one is waiting."""
    inner = drive.uploader.blobs
    gate, putting = asyncio.Event(), asyncio.Event()

    class Gated(WrappedStore):
        async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
            putting.set()
            await gate.wait()
            await inner.put(chunk_id, data)

    drive.uploader.blobs = Gated(inner)
    return gate, putting


PLATE_CHUNK = 16 * BLOCK_SIZE


async def saved_plate(tmp_path: Path) -> tuple[TestVFS, bytearray]:
    """A ``--commit-on fsync`` mount holding ``plate.exr``, two chunks, saved."""
    vfs = await make_test_vfs(tmp_path, chunk_size=PLATE_CHUNK, commit_on=CommitOn.FSYNC)
    data = bytearray(os.urandom(2 * PLATE_CHUNK))
    await vfs.write_file("plate.exr", bytes(data))
    await vfs.save()
    return vfs, data


async def test_after_an_edit_its_commit_recorded_the_next_put_reads_no_count_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put sent ahead needs the count of GC deletions from before it starts; the
    commit that recorded the last one found it unchanged, so the next edit's put
    starts from that count without a metadata read on the fsync's path."""
    vfs, data = await saved_plate(tmp_path)
    drive = vfs.parts.writeback.drive
    reads: list[int] = []
    chunk_deletions = drive.meta.chunk_deletions

    async def counted() -> int:
        reads.append(1)
        return await chunk_deletions()

    monkeypatch.setattr(drive.meta, "chunk_deletions", counted)
    inode = await vfs.inode("plate.exr")
    counts = []
    for offset in (4321, PLATE_CHUNK + 4321):
        opened = await vfs.vfs.open(inode, os.O_RDWR)
        patch = os.urandom(BLOCK_SIZE)
        await vfs.vfs.write(opened.fh, offset, patch)
        await vfs.vfs.fsync(opened.fh)
        vfs.vfs.release(opened.fh)
        data[offset : offset + BLOCK_SIZE] = patch
        counts.append(len(reads))
    # The first edit may read it (no commit had recorded a piece yet); the second not.
    assert counts[0] <= 1
    assert counts[1] == counts[0]
    await vfs.parts.writeback.settle()
    assert await vfs.read_file("plate.exr") == data
    await vfs.close()


async def test_an_fsync_records_its_piece_in_the_commit_prepared_while_it_travels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The piece an fsync sends is recorded by the version's own transaction, made
    ready while the put travels and committed once it lands: no record of its own,
    and nothing visible before the bytes are stored."""
    vfs, data = await saved_plate(tmp_path)
    drive = vfs.parts.writeback.drive
    gate, putting = gate_puts(drive)
    records: list[tuple[object, ...]] = []
    record_put = drive.meta.record_put

    async def counted(*args: object, **kwargs: object) -> tuple[str, int]:
        records.append(args)
        return await record_put(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drive.meta, "record_put", counted)
    opened = await vfs.vfs.open(await vfs.inode("plate.exr"), os.O_RDWR)
    patch, offset = os.urandom(BLOCK_SIZE), PLATE_CHUNK + 4321
    await vfs.vfs.write(opened.fh, offset, patch)
    fsync = asyncio.create_task(vfs.vfs.fsync(opened.fh))
    await asyncio.wait_for(putting.wait(), 10)
    await asyncio.sleep(0.2)
    assert not fsync.done()
    assert [v.version for v in await drive.versions("/plate.exr")] == [1]
    gate.set()
    await asyncio.wait_for(fsync, 10)
    assert [v.version for v in await drive.versions("/plate.exr")] == [1, 2]
    assert records == []
    vfs.vfs.release(opened.fh)
    await vfs.parts.writeback.settle()
    data[offset : offset + BLOCK_SIZE] = patch
    reader = await drive.reader("/plate.exr", 2)
    assert await reader.read(0, reader.size) == data
    await vfs.close()


async def test_an_fsync_whose_piece_cannot_be_put_commits_it_itself(tmp_path: Path) -> None:
    vfs, data = await saved_plate(tmp_path)
    drive = vfs.parts.writeback.drive
    inner = drive.uploader.blobs
    failed: list[str] = []

    class FailsOnce(WrappedStore):
        async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
            if not failed:
                failed.append(chunk_id)
                raise StoreUnavailable("S3 store dropped the connection")
            await inner.put(chunk_id, data)

    drive.uploader.blobs = FailsOnce(inner)
    opened = await vfs.vfs.open(await vfs.inode("plate.exr"), os.O_RDWR)
    patch, offset = os.urandom(BLOCK_SIZE), PLATE_CHUNK + 4321
    await vfs.vfs.write(opened.fh, offset, patch)
    await asyncio.wait_for(vfs.vfs.fsync(opened.fh), 10)
    assert len(failed) == 1
    # The commit did not record the piece whose put failed: it sent it again.
    assert [v.version for v in await drive.versions("/plate.exr")] == [1, 2]
    vfs.vfs.release(opened.fh)
    await vfs.parts.writeback.settle()
    data[offset : offset + BLOCK_SIZE] = patch
    reader = await drive.reader("/plate.exr", 2)
    assert await reader.read(0, reader.size) == data
    assert chunk_id(await drive.blobs.get(failed[0])) == failed[0]
    await vfs.close()


async def test_reject_keeps_the_local_copy(tmp_path: Path) -> None:
    here = await make_test_vfs(tmp_path, conflict=ConflictPolicy.REJECT, commit_on=CommitOn.SAVE)
    await here.write_file("cut.edl", b"base")
    await here.save()
    elsewhere = await make_test_vfs(tmp_path, cache="elsewhere")
    await here.write_file("cut.edl", b"mine")
    await elsewhere.write_file("cut.edl", b"theirs")
    await elsewhere.save()

    with pytest.raises(ConflictError):
        await here.save()
    assert here.parts.writeback.figures.conflicts == 1
    # The refused bytes stay here, readable and staged; the drive keeps the other head.
    assert await here.read_file("cut.edl") == b"mine"
    node_id = here.parts.tree.node_id(await here.inode("cut.edl"))
    staged = here.parts.staging.get(node_id)
    assert staged is not None and staged.dirty and staged.rejected
    head = await here.parts.drive.reader("/cut.edl")
    assert head.info.version == 2
    await elsewhere.close()
    await here.close()
    # Unmounting does not drop it either: the copy is still staged on disk.
    again = await make_test_vfs(tmp_path, conflict=ConflictPolicy.REJECT)
    assert await again.read_file("cut.edl") == b"mine"
    await again.close()


async def test_a_closed_copy_is_committed_in_place_and_changes_wait_for_it(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    drive = vfs.parts.writeback.drive
    gate, putting = gate_puts(drive)
    # Every put here is the commit's own (none is sent while the file is written).
    vfs.parts.writeback.early.enabled = False
    data = os.urandom(6 * CHUNK)
    await vfs.write_file("clip.bin", data)  # closed: its commit starts
    await asyncio.wait_for(putting.wait(), 10)
    # The closed copy is read as it is: no snapshot of it is made.
    assert not list(vfs.parts.staging.root.glob("*.snap"))
    # Changes meanwhile wait for the commit, then land in the next version.
    truncate = asyncio.create_task(vfs.truncate("clip.bin", 2 * CHUNK))
    await asyncio.sleep(0.2)
    assert not truncate.done()
    gate.set()
    await asyncio.wait_for(truncate, 10)
    await vfs.parts.writeback.settle()
    for _ in range(100):
        if not vfs.parts.writeback.busy and not vfs.parts.staging.files:
            break
        await asyncio.sleep(0.05)
    assert [v.version for v in await drive.versions("/clip.bin")] == [1, 2]
    first = await drive.reader("/clip.bin", 1)
    assert await first.read(0, first.size) == data
    assert await vfs.read_file("clip.bin") == data[: 2 * CHUNK]
    await vfs.close()


async def test_an_edit_inside_a_large_chunk_sends_only_the_bytes_it_wrote(
    tmp_path: Path,
) -> None:
    chunk = 4 * BLOCK_SIZE
    data = os.urandom(2 * chunk + BLOCK_SIZE + 123)
    first = await make_test_vfs(tmp_path, chunk_size=chunk)
    await first.write_file("plate.exr", data)
    await first.close()

    edit = await make_test_vfs(tmp_path, cache="fresh", chunk_size=chunk)
    offset = chunk + BLOCK_SIZE + 10
    await edit.write_at("plate.exr", offset, b"edited")
    await edit.parts.writeback.settle()
    # Nothing is fetched; only the six bytes are sent, and the rest of their chunk is
    # kept as two slices that start and end inside the block the edit landed in.
    assert edit.parts.writeback.figures.bytes_uploaded == 6
    assert edit.parts.cache.figures.bytes_fetched == 0
    drive = edit.parts.drive
    base = (await drive.reader("/plate.exr", 1)).extents
    extents = (await drive.reader("/plate.exr", 2)).extents
    middle = base[1].chunk_id
    assert [(e.offset, e.length, e.chunk_offset) for e in extents] == [
        (0, chunk, 0),
        (chunk, BLOCK_SIZE + 10, 0),
        (offset, 6, 0),
        (offset + 6, 3 * BLOCK_SIZE - 16, BLOCK_SIZE + 16),
        (2 * chunk, BLOCK_SIZE + 123, 0),
    ]
    assert [e.chunk_id == middle for e in extents] == [False, True, False, True, False]
    await edit.close()

    expected = data[:offset] + b"edited" + data[offset + 6 :]
    check = await make_test_vfs(tmp_path, cache="check", chunk_size=chunk)
    assert await check.read_file("plate.exr") == expected
    # A second edit in the same chunk, inside the unaligned slice, slices it again.
    at = chunk + 3 * BLOCK_SIZE - 2
    await check.write_at("plate.exr", at, b"again")
    await check.parts.writeback.settle()
    assert check.parts.writeback.figures.bytes_uploaded == 5
    await check.close()
    expected = expected[:at] + b"again" + expected[at + 5 :]
    again = await make_test_vfs(tmp_path, cache="again", chunk_size=chunk)
    assert await again.read_file("plate.exr") == expected
    first_version = await again.parts.drive.reader("/plate.exr", 1)
    assert await first_version.read(0, first_version.size) == data
    await again.close()


def _run(offset: int, length: int, chunk_offset: int = 0) -> tuple[Extent, list[int]]:
    return Extent(offset, length, "base", chunk_offset), [offset // BLOCK_SIZE]


def test_fixed_chunks_keep_untouched_runs_as_slices_up_to_a_bound() -> None:
    step = 16 * BLOCK_SIZE
    size = 3 * step
    eighth = BLOCK_SIZE // 8
    # Region 0: one block touched in the middle: two slices and a new chunk.
    region0 = [_run(0, 5 * BLOCK_SIZE), _run(6 * BLOCK_SIZE, 10 * BLOCK_SIZE, 6 * BLOCK_SIZE)]
    # Region 1: every other block touched: 16 extents, too many, but every run is a
    # sixteenth of the chunk long, so each stays (sending them would not be small).
    region1 = [_run(step + b * BLOCK_SIZE, BLOCK_SIZE, b * BLOCK_SIZE) for b in range(0, 16, 2)]
    # Region 2: an eighth of a block kept in every block: too many extents, and each
    # run is short and within what an edit may send again beside it: all let go.
    region2 = [_run(2 * step + k * BLOCK_SIZE, eighth, k * BLOCK_SIZE) for k in range(16)]
    kept = fixed_reusable(region0 + region1 + region2, size, step)
    assert sorted(kept) == [0, 6 * BLOCK_SIZE] + [e.offset for e, _ in region1]
    # Up to the bound a region keeps its runs, short or long.
    bounded = region2[: MAX_EXTENTS_PER_CHUNK // 2]
    assert len(fixed_reusable(bounded, size, step)) == MAX_EXTENTS_PER_CHUNK // 2
    # A run cut by a truncate, or across a chunk boundary, is not kept.
    assert fixed_reusable([_run(0, 5 * BLOCK_SIZE)], 4 * BLOCK_SIZE, step) == {}
    assert fixed_reusable([_run(15 * BLOCK_SIZE, 2 * BLOCK_SIZE)], size, step) == {}


def test_an_edit_sends_again_at_most_its_budget_beside_each_end() -> None:
    """Short runs beside new bytes are let go from the edit outwards only while they
    fit in a sixty-fourth of the chunk on that side; the rest stay as slices."""
    step = 16 * BLOCK_SIZE
    budget = step // ABSORB_PARTS
    assert budget == BLOCK_SIZE // 4
    eighth = BLOCK_SIZE // 8
    # New bytes at 0..1 MiB, then three touching eighths and a long run, then more
    # edits further on to push the region past the bound.
    touching = [_run(BLOCK_SIZE + k * eighth, eighth, k * eighth) for k in range(3)]
    touching.append(_run(BLOCK_SIZE + 3 * eighth, BLOCK_SIZE, 3 * eighth))
    elsewhere = [_run(k * BLOCK_SIZE, BLOCK_SIZE // 2, k * BLOCK_SIZE) for k in range(4, 16, 2)]
    kept = fixed_reusable(touching + elsewhere, step, step)
    # The two eighths nearest the edit fill its budget; the third stays.
    assert BLOCK_SIZE + eighth not in kept and BLOCK_SIZE not in kept
    assert BLOCK_SIZE + 2 * eighth in kept
    # Half-block runs are over the budget: they stay although they are short.
    assert all(e.offset in kept for e, _ in elsewhere)


def test_a_short_run_between_two_kept_runs_stays() -> None:
    """Letting go of it would not save an extent: it would become a stretch of its own."""
    step = 16 * BLOCK_SIZE
    half = BLOCK_SIZE // 2
    sandwiched = [
        _run(0, 4 * BLOCK_SIZE),
        _run(4 * BLOCK_SIZE, half, 0),
        _run(4 * BLOCK_SIZE + half, 4 * BLOCK_SIZE - half, 5 * BLOCK_SIZE),
    ]
    # Short enough to be sent again beside the edits around them.
    beside_edits = [_run(k * BLOCK_SIZE, half // 4, k * BLOCK_SIZE) for k in (9, 11, 13, 15)]
    kept = fixed_reusable(sandwiched + beside_edits, step, step)
    assert sorted(kept) == [e.offset for e, _ in sandwiched]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=64), st.data())
def test_a_region_never_holds_more_than_the_bound(lengths: list[int], data: st.DataObject) -> None:
    """Whatever runs an edit leaves, a region of up to MAX_EXTENTS_PER_CHUNK extents
    keeps them all; past that it keeps every long run, ends with no more extents than
    it had and at most hard_extent_bound(step); and unless that bound made it keep
    only its long runs, it lets go of at most the budget beside each end of each
    stretch."""
    unit = BLOCK_SIZE // 16
    step = 64 * unit
    runs: list[tuple[Extent, list[int]]] = []
    position = 0
    for length in lengths:
        position += data.draw(st.integers(0, 3), label="gap") * unit
        if position + length * unit > step:
            break
        runs.append(_run(position, length * unit))
        position += length * unit
    offered = [e for e, _ in runs]
    chosen = sorted(fixed_reusable(runs, step, step).values(), key=lambda run: run[0].offset)
    kept = [extent for extent, _ in chosen]
    assert all(extent in offered for extent in kept)
    before, after = extents_in_region(0, step, runs), extents_in_region(0, step, chosen)
    if before <= MAX_EXTENTS_PER_CHUNK:
        assert kept == offered
        return
    assert all(e in kept for e in offered if e.length * LONG_RUN_PARTS >= step)
    assert after <= min(before, hard_extent_bound(step))
    only_long = all(e.length * LONG_RUN_PARTS >= step for e in kept)
    stretches = before - len(offered)
    let_go = sum(e.length for e in offered if e not in kept)
    assert only_long or let_go <= 2 * stretches * (step // ABSORB_PARTS)


async def test_small_edits_past_the_bound_never_send_a_whole_chunk_again(
    tmp_path: Path,
) -> None:
    chunk = 16 * BLOCK_SIZE
    half = BLOCK_SIZE // 2
    eighth = BLOCK_SIZE // 8
    data = bytearray(os.urandom(chunk))
    vfs = await make_test_vfs(tmp_path, chunk_size=chunk)
    await vfs.write_file("plate.exr", bytes(data))
    await vfs.parts.writeback.settle()
    drive = vfs.parts.drive
    figures = vfs.parts.writeback.figures

    async def edit(offset: int) -> tuple[int, int]:
        sent = figures.bytes_uploaded
        data[offset : offset + 4] = b"edit"
        await vfs.write_at("plate.exr", offset, b"edit")
        await vfs.parts.writeback.settle()
        assert await vfs.read_file("plate.exr") == data
        extents = len((await drive.reader("/plate.exr")).extents)
        return extents, figures.bytes_uploaded - sent

    # Edits two blocks apart leave long runs between them: past 8 extents the
    # slices stay, and each commit sends only what it changed.
    spaced = [await edit(b * BLOCK_SIZE) for b in (1, 3, 5, 7, 9)]
    assert [extents for extents, _ in spaced] == [3, 5, 7, 9, 11]
    assert all(sent < BLOCK_SIZE for _, sent in spaced)
    # Edits an eighth of a block apart leave short runs beside new bytes within the
    # budget: past the bound they are sent again with the edit, fewer extents than
    # one more slice and stretch per edit, and never more than the budget a side.
    budget = chunk // ABSORB_PARTS
    before, _ = await edit(12 * BLOCK_SIZE)
    crowded = [await edit(12 * BLOCK_SIZE + k * eighth) for k in (1, 2, 3)]
    assert crowded[-1][0] < before + 2 * len(crowded)
    assert all(sent <= 2 * budget + 4 for _, sent in crowded)
    # Edits half a block apart leave short runs over the budget: they stay, and each
    # edit sends at most what it wrote (here nothing: the drive has those 4 bytes).
    before, _ = await edit(14 * BLOCK_SIZE)
    over = [await edit(14 * BLOCK_SIZE + k * half) for k in (1, 2, 3)]
    assert over[-1][0] == before + 2 * len(over)
    assert all(sent <= 4 for _, sent in over)
    await vfs.close()
    check = await make_test_vfs(tmp_path, cache="check", chunk_size=chunk)
    assert await check.read_file("plate.exr") == data
    await check.close()


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 12 * CHUNK), min_size=2, max_size=12, unique=True),
    keep=st.lists(st.booleans(), min_size=12, max_size=12),
    tail=st.integers(0, 3 * CHUNK),
)
def test_stretches_sent_ahead_are_the_pieces_the_upload_cuts(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int], keep: list[bool], tail: int
) -> None:
    """What an fsync sends ahead must be exactly what the commit's upload would cut,
    or the commit could not keep it."""
    bounds = sorted(cuts)
    kept = {
        start: Extent(start, end - start, "base")
        for (start, end), wanted in zip(itertools.pairwise(bounds), keep, strict=False)
        if wanted
    }
    size = bounds[-1] + tail
    path = tmp_path_factory.mktemp("stretches") / "copy"
    with open(path, "wb") as f:
        f.truncate(size)
    settings_ = DriveSettings(chunking="fixed", chunk_size=CHUNK)
    with open(path, "rb") as source:
        cut = [
            (piece.offset, len(piece.data))
            for piece in pieces(source, settings_, kept)
            if isinstance(piece, Piece)
        ]
    assert fixed_stretches(kept, size, CHUNK) == cut


async def test_every_commit_that_records_a_version_is_timed(tmp_path: Path) -> None:
    """The commit-latency histogram counts a closed copy committed in place and an
    fsync's commit of pieces still landing, as it counts a snapshot's commit."""
    vfs, _ = await saved_plate(tmp_path)
    figures = vfs.parts.writeback.figures
    timed = sum(figures.commit_seconds_counts) + figures.commit_seconds_over
    assert timed == figures.commits == 1
    opened = await vfs.vfs.open(await vfs.inode("plate.exr"), os.O_RDWR)
    await vfs.vfs.write(opened.fh, PLATE_CHUNK + 4321, os.urandom(BLOCK_SIZE))
    await vfs.vfs.fsync(opened.fh)
    vfs.vfs.release(opened.fh)
    await vfs.parts.writeback.settle()
    assert figures.commits == 2
    assert sum(figures.commit_seconds_counts) + figures.commit_seconds_over == 2
    await vfs.close()


async def test_a_save_answers_once_the_commit_under_way_records_its_version(
    tmp_path: Path,
) -> None:
    """A save of a file whose close's commit is under way answers with that commit's
    version as soon as it is recorded, not after the commit's bookkeeping."""
    vfs = await make_test_vfs(tmp_path)
    writeback = vfs.parts.writeback
    bookkeeping = asyncio.Event()
    done_with = writeback.early.done_with

    async def held_back(staged: object) -> None:
        await bookkeeping.wait()
        await done_with(staged)  # type: ignore[arg-type]

    writeback.early.done_with = held_back  # type: ignore[method-assign]
    data = os.urandom(3 * CHUNK)
    await vfs.write_file("clip.bin", data)  # closed: its commit starts
    (report,) = await asyncio.wait_for(writeback.save("/clip.bin", ""), 10)
    assert (report.version, report.committed, report.size) == (1, True, len(data))
    assert not bookkeeping.is_set()
    assert [v.version for v in await writeback.drive.versions("/clip.bin")] == [1]
    bookkeeping.set()
    await writeback.settle()
    assert writeback.figures.commits == 1
    assert await vfs.read_file("clip.bin") == data
    await vfs.close()


async def test_a_waiting_save_answers_before_the_commit_forgets_the_copys_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bookkeeping after a version is recorded (the copy's journal entry removed,
    the copy dropped) waits for a save that waited for that version to answer; what
    the save's caller may look at next is up to date by then."""
    vfs = await make_test_vfs(tmp_path)
    writeback = vfs.parts.writeback
    order: list[str] = []
    started = asyncio.Event()
    journal_outcome = writeback._journal_outcome
    commit_staged = writeback._commit_staged

    async def journaled(staged: StagedFile, landed_elsewhere: bool) -> None:
        order.append("bookkeeping")
        await journal_outcome(staged, landed_elsewhere)

    async def commit_started(staged: StagedFile, message: str) -> CommitReport | None:
        started.set()
        return await commit_staged(staged, message)

    monkeypatch.setattr(writeback, "_journal_outcome", journaled)
    monkeypatch.setattr(writeback, "_commit_staged", commit_started)
    await vfs.write_file("clip.bin", os.urandom(3 * CHUNK))  # closed: its commit is queued
    # The close's commit is under way: the save waits for it.
    await asyncio.wait_for(started.wait(), 10)

    async def save() -> list[CommitReport]:
        reports = await writeback.save("/clip.bin", "")
        order.append("answered")
        return reports

    (report,) = await asyncio.wait_for(save(), 10)
    inode = await vfs.inode("clip.bin")
    assert await vfs.vfs.getxattr(inode, XATTR_VERSION) == str(report.version).encode()
    assert await vfs.vfs.getxattr(inode, XATTR_TIER) == b"cloud"
    await writeback.settle()
    assert order == ["answered", "bookkeeping"]
    await vfs.close()
