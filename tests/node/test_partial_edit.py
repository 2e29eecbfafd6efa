"""Editing part of a remote file fetches none of it (reading around the edit fetches
the blocks read, not the file), and sends the bytes written, not the blocks they fall
in."""

from __future__ import annotations

import io
import mmap
import os
from functools import partial
from pathlib import Path

from mediadrive.core.drive import Drive

from .conftest import DriveFactory, MountHandle, Mounts, drive_call, wait_until

MiB = 1 << 20
CHUNK = 16 * MiB
# Past the bound on pieces per chunk, the few unchanged bytes beside an edit are sent
# again with it (see test_repeated_1mib_edits_of_one_64mib_chunk_each_send_the_edit).
PAGE = 4096


def sent_the_edit(sent: int, written: int = MiB) -> bool:
    return written <= sent <= written + 2 * PAGE


async def _extents(drive: Drive, path: str, version: int) -> list[str]:
    reader = await drive.reader(path, version)
    return [extent.chunk_id for extent in reader.extents]


async def _read(drive: Drive, path: str) -> bytes:
    reader = await drive.reader(path)
    return await reader.read(0, reader.size)


def _remote_file(make_drive: DriveFactory, size: int, chunk: int = CHUNK) -> tuple[str, bytes]:
    name = make_drive(chunk_size=chunk)
    data = os.urandom(size)
    drive_call(name, lambda d: d.write_file("/take.mov", io.BytesIO(data)))
    return name, data


def test_editing_a_remote_file_fetches_the_edited_blocks_and_sends_the_edit(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data = _remote_file(make_drive, 6 * CHUNK)
    stored = _stored_bytes(name)
    m = mounts.mount(name)
    patch = os.urandom(MiB)
    offset = 2 * CHUNK + 5 * MiB + 12345
    with open(m / "take.mov", "r+b") as f:
        f.seek(offset)
        f.write(patch)
    expected = data[:offset] + patch + data[offset + len(patch) :]
    wait_until(lambda: m.status()["bytes_uploaded"] > 0 and m.status()["dirty_files"] == 0)
    status = m.status()
    # Nothing is fetched: the handle writes around the page cache (no page read at
    # either end of the edit) and the copy takes the bytes into blocks it lacks. Only
    # the edit's bytes are sent; the rest of their chunk stays in the drive as slices
    # that start and end inside the two blocks the edit covers in part.
    assert status["bytes_fetched"] == 0, status["bytes_fetched"]
    assert status["bytes_uploaded"] == MiB, status["bytes_uploaded"]
    assert _stored_bytes(name) - stored == MiB
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected
    before = drive_call(name, lambda d: _extents(d, "/take.mov", 1))
    after = drive_call(name, lambda d: _extents(d, "/take.mov", 2))
    assert after[:2] == before[:2] and after[-3:] == before[-3:]
    assert after[2] == after[4] == before[2]
    assert after[3] not in before
    assert (m / "take.mov").read_bytes() == expected
    mounts.umount(m)
    # A mount with an empty cache reads the slices' windows of their blocks.
    fresh = mounts.mount(name, cache="fresh")
    with open(fresh / "take.mov", "rb") as f:
        f.seek(offset - 10)
        assert f.read(MiB + 20) == expected[offset - 10 : offset + MiB + 10]
    assert (fresh / "take.mov").read_bytes() == expected


def test_a_1mib_edit_with_4mib_fixed_chunks_sends_the_edit(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data = _remote_file(make_drive, 68 * MiB + 777, chunk=4 * MiB)
    m = mounts.mount(name)
    patch = os.urandom(MiB)
    offset = 41 * MiB + 4321
    with open(m / "take.mov", "r+b") as f:
        f.seek(offset)
        f.write(patch)
    expected = data[:offset] + patch + data[offset + len(patch) :]
    wait_until(lambda: m.status()["bytes_uploaded"] > 0 and m.status()["dirty_files"] == 0)
    status = m.status()
    assert status["bytes_uploaded"] == MiB, status["bytes_uploaded"]
    assert status["bytes_fetched"] == 0, status["bytes_fetched"]
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected
    assert (m / "take.mov").read_bytes() == expected


def test_a_1mib_edit_of_a_file_in_64mib_chunks_sends_the_edit(
    make_drive: DriveFactory, mounts: Mounts, tmp_path: Path
) -> None:
    big = 64 * MiB
    name, data = _remote_file(make_drive, 2 * big + 3 * MiB + 99, chunk=big)
    stored = _stored_bytes(name)
    m = mounts.mount(name)
    patch = os.urandom(MiB)
    offset = big + 20 * MiB + 4321
    with open(m / "take.mov", "r+b") as f:
        f.seek(offset)
        f.write(patch)
    expected = data[:offset] + patch + data[offset + len(patch) :]
    wait_until(lambda: m.status()["bytes_uploaded"] > 0 and m.status()["dirty_files"] == 0)
    assert m.status()["bytes_uploaded"] == MiB
    assert m.status()["bytes_fetched"] == 0
    # What reached the blob store: the edit, not a 64 MiB chunk.
    assert sent_the_edit(_stored_bytes(name) - stored)
    mounts.umount(m)

    # A fresh mount, a download and the old version read the right bytes.
    fresh = mounts.mount(name, cache="fresh")
    assert (fresh / "take.mov").read_bytes() == expected
    mounts.umount(fresh)
    local = tmp_path / "take.mov"
    drive_call(name, lambda d: _download(d, "/take.mov", local))
    assert local.read_bytes() == expected
    drive_call(name, lambda d: _download(d, "/take.mov", local, version=1))
    assert local.read_bytes() == data

    # The same bytes written as another file are stored once.
    result = drive_call(name, lambda d: d.write_file("/copy.mov", io.BytesIO(data)))
    assert (result.bytes_uploaded, result.chunks_new) == (0, 0)


def test_repeated_1mib_edits_of_one_64mib_chunk_each_send_the_edit(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """Past 8 pieces the region keeps its long unchanged runs: no save sends the chunk."""
    big = 64 * MiB
    name, data = _remote_file(make_drive, big + 5 * MiB, chunk=big)
    expected = bytearray(data)
    m = mounts.mount(name)
    sent = []
    for k in range(10):
        before = m.status()["bytes_uploaded"]
        patch = os.urandom(MiB)
        offset = k * 6 * MiB + 4321
        with open(m / "take.mov", "r+b") as f:
            f.seek(offset)
            f.write(patch)
        expected[offset : offset + MiB] = patch
        wait_until(partial(_committed, m, k + 1))
        sent.append(m.status()["bytes_uploaded"] - before)
    assert all(sent_the_edit(n) for n in sent), sent
    extents = drive_call(name, lambda d: _extents(d, "/take.mov", 11))
    assert len(extents) > 9 * 2
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected
    mounts.umount(m)
    fresh = mounts.mount(name, cache="fresh")
    assert (fresh / "take.mov").read_bytes() == expected
    mounts.umount(fresh)


def _committed(m: MountHandle, commits: int) -> bool:
    status = m.status()
    return bool(status["dirty_files"] == 0 and status["commits"] >= commits)


def _stored_bytes(name: str) -> int:
    async def total(drive: Drive) -> int:
        return sum(r.size for r in await drive.meta.referenced_chunks())

    return int(drive_call(name, total))


async def _download(drive: Drive, path: str, local: Path, version: int | None = None) -> None:
    with open(local, "wb") as dest:
        await drive.read_to(path, dest, version)


def test_reads_and_writes_around_untouched_blocks_see_the_base(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data = _remote_file(make_drive, 3 * CHUNK + 300 * 1024)
    m = mounts.mount(name, commit_on="save")
    with open(m / "take.mov", "r+b") as f:
        f.seek(CHUNK - 100)
        f.write(b"x" * 100 + b"y" * 100)  # straddles a chunk boundary
        f.seek(3 * CHUNK)
        assert f.read() == data[3 * CHUNK :]
        f.seek(0)
        whole = f.read()
    expected = data[: CHUNK - 100] + b"x" * 100 + b"y" * 100 + data[CHUNK + 100 :]
    assert whole == expected
    report = m.save("/take.mov", "straddle")
    # Every block was read into the copy, yet only what was written is new: two small
    # chunks, one each side of the chunk boundary.
    assert report[0]["bytes_uploaded"] == 200
    assert report[0]["chunks_new"] == 2
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected


def test_truncating_into_an_untouched_block_then_growing_shows_zeros(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data = _remote_file(make_drive, 10 * MiB, chunk=4 * MiB)
    m = mounts.mount(name, commit_on="save")
    cut = 5 * MiB + MiB // 2
    os.truncate(m / "take.mov", cut)
    os.truncate(m / "take.mov", 8 * MiB)
    expected = data[:cut] + bytes(8 * MiB - cut)
    assert (m / "take.mov").read_bytes() == expected
    report = m.save("/take.mov", "cut")
    # Chunk 0 is kept as it was; chunk 1 (cut, then zeros) is new.
    assert (report[0]["chunks_total"], report[0]["chunks_new"]) == (2, 1)
    assert report[0]["bytes_uploaded"] == 4 * MiB
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected


def test_an_fsynced_edit_of_a_remote_file_survives_kill(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name, data = _remote_file(make_drive, 4 * CHUNK)
    stored = _stored_bytes(name)
    m = mounts.mount(name, commit_on="save", cache="edit")
    patch = os.urandom(3 * MiB)
    offset = CHUNK + 7 * MiB
    fd = os.open(m / "take.mov", os.O_RDWR)
    os.pwrite(fd, patch, offset)
    os.fsync(fd)
    m.kill(fd)

    m = mounts.mount(name, mountpoint=m.path, commit_on="save", cache="edit")
    expected = data[:offset] + patch + data[offset + len(patch) :]
    wait_until(lambda: m.status()["dirty_files"] == 0)
    # The version holds the three blocks the edit wrote whole, as one new chunk (sent
    # on the fsync, or by the commit after the restart if the kill came first);
    # nothing of the base is fetched.
    assert m.status()["bytes_uploaded"] in (0, 3 * MiB)
    assert _stored_bytes(name) - stored == 3 * MiB
    assert m.status()["bytes_fetched"] == 0
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected
    assert (m / "take.mov").read_bytes() == expected


def test_editing_a_cdc_file_fetches_the_chunks_around_the_edit_not_the_file(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    # Content-defined chunks of 1 MiB on average, 4 MiB at most.
    name = make_drive(chunking="cdc", chunk_size="1MiB")
    size = 64 * MiB
    data = os.urandom(size)
    drive_call(name, lambda d: d.write_file("/take.mov", io.BytesIO(data)))
    m = mounts.mount(name)
    patch = os.urandom(MiB)
    offset = 29 * MiB + 12345
    with open(m / "take.mov", "r+b") as f:
        f.seek(offset)
        f.write(patch)
    expected = data[:offset] + patch + data[offset + len(patch) :]
    wait_until(lambda: m.status()["bytes_uploaded"] > 0 and m.status()["dirty_files"] == 0)
    status = m.status()
    # Only the chunks the edit touched are read and cut again: at most three of them
    # (4 MiB each at most), never the file.
    assert status["bytes_fetched"] <= 12 * MiB, status["bytes_fetched"]
    assert status["bytes_uploaded"] <= 13 * MiB, status["bytes_uploaded"]
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == expected
    before = drive_call(name, lambda d: _extents(d, "/take.mov", 1))
    after = drive_call(name, lambda d: _extents(d, "/take.mov", 2))
    assert len(set(before) - set(after)) <= 3
    assert len(set(after) - set(before)) <= 4
    assert (m / "take.mov").read_bytes() == expected


def test_an_edit_handle_maps_shared_and_other_handles_see_its_writes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """An in-place edit skips the page cache; the file still maps shared, and a reader
    holding the file's pages open sees what the edit wrote."""
    name, data = _remote_file(make_drive, 3 * MiB + 11)
    m = mounts.mount(name, commit_on="save")
    expected = bytearray(data)
    with open(m / "take.mov", "rb") as reader:
        assert reader.read() == data  # the old bytes now in the page cache
        fd = os.open(m / "take.mov", os.O_RDWR)
        try:
            os.pwrite(fd, b"edit", MiB + 3)
            expected[MiB + 3 : MiB + 7] = b"edit"
            with mmap.mmap(fd, len(data)) as view:
                assert view[MiB : MiB + 10] == bytes(expected[MiB : MiB + 10])
                view[2 * MiB : 2 * MiB + 3] = b"map"
                view.flush()
            expected[2 * MiB : 2 * MiB + 3] = b"map"
            assert os.pread(fd, 10, 2 * MiB) == bytes(expected[2 * MiB : 2 * MiB + 10])
        finally:
            os.close(fd)
        reader.seek(0)
        assert reader.read() == bytes(expected)
    m.save("/take.mov", "edited in place")
    assert drive_call(name, lambda d: _read(d, "/take.mov")) == bytes(expected)
