"""A file read at random is brought into the block cache whole, in the background."""

from __future__ import annotations

import errno
import io
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    DriveFactory,
    MountHandle,
    Mounts,
    damage_stored_chunk,
    drive_call,
    edited_inside_blocks,
    wait_until,
)

MiB = 1 << 20


def mounted_with(make_drive: DriveFactory, mounts: Mounts, path: str, data: bytes) -> MountHandle:
    """A mount of a new drive (4 MiB chunks) that holds ``data`` at ``path``."""
    name = make_drive(chunk_size="4MiB")
    drive_call(name, lambda d: d.write_file(path, io.BytesIO(data)))
    return mounts.mount(name)


def reads_right(fd: int, data: bytes | bytearray, offsets: Iterable[int]) -> None:
    """4 KiB reads at ``offsets`` through ``fd`` give the bytes ``data`` has there."""
    for offset in offsets:
        assert os.pread(fd, 4096, offset) == data[offset : offset + 4096], offset


def at_random(rng: random.Random, size: int, count: int) -> Iterator[int]:
    return (rng.randrange(size) for _ in range(count))


def test_a_random_reader_of_a_cold_file_ends_with_the_whole_file_cached(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    data = os.urandom(12 * MiB + 123)
    m = mounted_with(make_drive, mounts, "/r.bin", data)
    rng = random.Random(7)
    fd = os.open(m / "r.bin", os.O_RDONLY)
    try:
        reads_right(fd, data, (9 * MiB + 5, 2 * MiB + 4096, 11 * MiB))
        # While the file is open, the rest of it arrives without being read.
        wait_until(lambda: m.status()["bytes_fetched"] >= len(data))
        reads_right(fd, data, at_random(rng, len(data), 200))
    finally:
        os.close(fd)
    status = m.status()
    # Every block once, no more.
    assert status["bytes_fetched"] == len(data)
    assert status["blocks_fetched"] == 13
    assert (m / "r.bin").read_bytes() == data


def test_a_fill_stays_within_the_cache_bound(make_drive: DriveFactory, mounts: Mounts) -> None:
    name = make_drive(chunk_size="4MiB")
    data = os.urandom(40 * MiB)
    drive_call(name, lambda d: d.write_file("/big.bin", io.BytesIO(data)))
    # The file is larger than a quarter of the cache: only the chunk around a read.
    m = mounts.mount(name, cache_size="64MiB")
    fd = os.open(m / "big.bin", os.O_RDONLY)
    try:
        reads_right(fd, data, (30 * MiB + 7, 21 * MiB + 4096))
        wait_until(lambda: m.status()["bytes_fetched"] >= 5 * MiB)
        time.sleep(1)
        fetched = m.status()["bytes_fetched"]
        # Chunk 5 (20..24 MiB) is here whole: reading it fetches nothing more (each
        # read through a new descriptor, so that none looks sequential).
        for offset in (20 * MiB + 100, 22 * MiB, 23 * MiB + 9000):
            other = os.open(m / "big.bin", os.O_RDONLY)
            try:
                assert os.pread(other, 4096, offset) == data[offset : offset + 4096]
            finally:
                os.close(other)
        assert m.status()["bytes_fetched"] == fetched
    finally:
        os.close(fd)
    # Not the whole file (a few blocks the kernel read ahead at most).
    assert fetched <= 12 * MiB


def test_a_block_damaged_in_the_store_stays_an_io_error_for_a_random_reader(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    data = os.urandom(10 * MiB)
    drive_call(name, lambda d: d.write_file("/d.bin", io.BytesIO(data)))
    damage_stored_chunk(home, name, 5 * MiB + 99)
    m = mounts.mount(name)
    fd = os.open(m / "d.bin", os.O_RDONLY)
    try:
        reads_right(fd, data, (8 * MiB, MiB))
        # The fill brings every sound block; the damaged one never lands.
        wait_until(lambda: m.status()["bytes_fetched"] >= 9 * MiB)
        for _ in range(2):
            with pytest.raises(OSError) as excinfo:
                os.pread(fd, 4096, 5 * MiB)
            assert excinfo.value.errno == errno.EIO
        assert os.pread(fd, 4096, 6 * MiB) == data[6 * MiB : 6 * MiB + 4096]
    finally:
        os.close(fd)
    assert m.status()["bytes_fetched"] == 9 * MiB


def test_a_filled_file_goes_into_the_page_cache_and_its_reads_stay_in_the_kernel(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    data = os.urandom(10 * MiB + 777)
    m = mounted_with(make_drive, mounts, "/r.bin", data)
    rng = random.Random(3)
    fd = os.open(m / "r.bin", os.O_RDONLY)
    try:
        reads_right(fd, data, (7 * MiB + 5, MiB + 4096, 9 * MiB))
        wait_until(lambda: m.status()["pages_stored"] == len(data))
        before = m.status()
        reads_right(fd, data, at_random(rng, len(data), 300))
        after = m.status()
        # Not one of them asked the agent for a block.
        assert (after["cache_hits"], after["cache_misses"]) == (
            before["cache_hits"],
            before["cache_misses"],
        )
    finally:
        os.close(fd)


def test_writes_after_the_page_cache_was_filled_are_read_back_and_kept(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    data = bytearray(os.urandom(6 * MiB))
    m = mounted_with(make_drive, mounts, "/w.bin", bytes(data))
    fd = os.open(m / "w.bin", os.O_RDONLY)
    try:
        reads_right(fd, data, (5 * MiB, 2 * MiB + 1, 4 * MiB + 3))
        wait_until(lambda: m.status()["pages_stored"] == len(data))
        patch = os.urandom(10_000)
        with open(m / "w.bin", "r+b") as w:
            w.seek(3 * MiB - 17)
            w.write(patch)
        data[3 * MiB - 17 : 3 * MiB - 17 + len(patch)] = patch
        # The reader's descriptor, the kernel's pages and a fresh mount all agree.
        assert os.pread(fd, len(patch) + 100, 3 * MiB - 67) == bytes(
            data[3 * MiB - 67 : 3 * MiB + len(patch) + 33]
        )
    finally:
        os.close(fd)
    m.save("/w.bin")
    assert (m / "w.bin").read_bytes() == bytes(data)
    fresh = mounts.mount(m.status()["drive"])
    assert (fresh / "w.bin").read_bytes() == bytes(data)


def test_a_random_reader_of_a_file_edited_inside_blocks_reads_its_bytes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """The fill and the page-cache store of a version whose slices start and end
    inside blocks hand out each slice's part of the blocks it shares."""
    offset = 6 * MiB + 5000
    name, expected = edited_inside_blocks(make_drive, mounts, "/r.bin", 10 * MiB + 77, offset, 3000)

    fresh = mounts.mount(name, cache="fresh")
    rng = random.Random(3)
    fd = os.open(fresh / "r.bin", os.O_RDONLY)
    try:
        reads_right(fd, expected, (offset - 10, 2 * MiB + 4096, offset + 2990))
        wait_until(lambda: fresh.status()["pages_stored"] > 0)
        reads_right(fd, expected, at_random(rng, len(expected), 300))
        assert os.pread(fd, 6000, offset - 1500) == expected[offset - 1500 : offset + 4500]
    finally:
        os.close(fd)
    assert (fresh / "r.bin").read_bytes() == expected


def test_a_sequential_reader_is_not_taken_for_a_random_one(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """The kernel's read-ahead sends a streaming reader's requests out of order; they
    are read-ahead, not jumps: no fill starts and nothing goes to the page cache
    behind the reader's back."""
    data = os.urandom(96 * MiB)
    m = mounted_with(make_drive, mounts, "/seq.bin", data)
    with open(m / "seq.bin", "rb", buffering=0) as f:
        got = bytearray()
        while chunk := f.read(4 * MiB):
            got += chunk
    assert bytes(got) == data
    status = m.status()
    assert status["pages_stored"] == 0
    assert status["bytes_fetched"] == len(data)
