"""The block cache: one fetch per block, runs of blocks in one read, LRU with pins,
damaged blocks fetched again."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from mediadrive.core import buffers
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.node.cache import MAX_RUN_BLOCKS, Block, BlockCache


def block(chunk: str, index: int, size: int = 100) -> bytes:
    return f"{chunk}:{index}:".encode().ljust(size, b".")


class Store:
    """A fake store that counts what it is asked for; fetches wait on ``gate``."""

    def __init__(self) -> None:
        self.single: list[tuple[str, int]] = []
        self.runs: list[tuple[str, int, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, chunk: str, index: int) -> bytes:
        self.single.append((chunk, index))
        await self.gate.wait()
        return block(chunk, index)

    async def fetch_run(self, chunk: str, first: int, count: int) -> Sequence[Block]:
        self.runs.append((chunk, first, count))
        await self.gate.wait()
        return [block(chunk, first + n) for n in range(count)]

    async def check(self, chunk: str, index: int, data: bytes) -> bool:
        return data == block(chunk, index)


def open_cache(root: Path, store: Store, capacity: int = 1 << 20) -> BlockCache:
    cache = BlockCache(root, capacity, store.fetch, fetch_run=store.fetch_run, check=store.check)
    cache.open()
    return cache


async def landed(cache: BlockCache) -> None:
    """Wait until fetched blocks are written to disk and indexed."""
    while cache._fills:
        await asyncio.gather(*list(cache._fills))


def checking_cache(tmp_path: Path, store: Store) -> tuple[BlockCache, list[tuple[str, int]]]:
    """An open cache over ``store`` and the blocks it checked, in order."""
    checked: list[tuple[str, int]] = []

    async def check(chunk: str, index: int, data: bytes) -> bool:
        checked.append((chunk, index))
        return await store.check(chunk, index, data)

    cache = BlockCache(tmp_path, 1 << 20, store.fetch, fetch_run=store.fetch_run, check=check)
    cache.open()
    return cache, checked


async def test_concurrent_gets_of_one_block_share_one_fetch(tmp_path: Path) -> None:
    store = Store()
    store.gate.clear()
    cache = open_cache(tmp_path, store)
    readers = [asyncio.create_task(cache.get("c1", 3)) for _ in range(8)]
    await asyncio.sleep(0.01)
    store.gate.set()
    results = await asyncio.gather(*readers)
    assert results == [block("c1", 3)] * 8
    assert len(store.single) + len(store.runs) == 1
    assert cache.figures.misses == 1
    await cache.close()


async def test_prefetched_run_is_one_ranged_read(tmp_path: Path) -> None:
    store = Store()
    cache = open_cache(tmp_path, store)
    cache.prefetch_many([("c1", 0), ("c1", 1), ("c1", 2), ("c1", 3), ("c2", 0)])
    got = [await cache.get("c1", i) for i in range(4)]
    assert got == [block("c1", i) for i in range(4)]
    # One read for the four consecutive blocks of c1, one for c2; no single fetches.
    assert sorted(store.runs) == [("c1", 0, 4), ("c2", 0, 1)]
    assert store.single == []
    await cache.close()


async def test_lru_eviction_keeps_pinned_blocks(tmp_path: Path) -> None:
    store = Store()
    cache = open_cache(tmp_path, store, capacity=300)
    cache.set_pinned({"pinned"})
    await cache.get("pinned", 0)
    await landed(cache)
    for index in range(4):
        await cache.get("loose", index)
        await landed(cache)
    # Four loose blocks and a pinned one do not fit in 300 bytes: the oldest loose go.
    assert cache.has("pinned", 0)
    assert [cache.has("loose", i) for i in range(4)] == [False, False, True, True]
    assert cache.total == 300
    # Using a block makes it the newest: the other one goes next.
    await cache.get("loose", 2)
    await cache.get("loose", 4)
    await landed(cache)
    assert cache.has("loose", 2) and not cache.has("loose", 3) and cache.has("loose", 4)
    assert cache.has("pinned", 0)
    await cache.close()


async def test_damaged_block_on_disk_is_dropped_and_fetched_again(tmp_path: Path) -> None:
    store = Store()
    cache = open_cache(tmp_path, store)
    assert await cache.get("c1", 0) == block("c1", 0)
    await landed(cache)
    await cache.close()
    # Same size, different bytes: the index still lists it.
    path = next((tmp_path / "blocks").rglob("c1.0"))
    path.write_bytes(b"X" * len(block("c1", 0)))

    store = Store()
    cache = open_cache(tmp_path, store)
    assert cache.has("c1", 0)
    assert await cache.get("c1", 0) == block("c1", 0)
    assert cache.figures.corrupt == 1
    assert len(store.single) + len(store.runs) == 1
    await landed(cache)
    assert path.read_bytes() == block("c1", 0)
    await cache.close()


async def test_a_small_read_of_a_checked_block_reads_only_its_bytes_until_it_changes(
    tmp_path: Path,
) -> None:
    store = Store()
    cache = open_cache(tmp_path, store)
    await cache.get("c1", 0)
    await landed(cache)
    await cache.close()

    store = Store()
    cache, checked = checking_cache(tmp_path, store)
    assert await cache.read("c1", 0, 3, 9) == block("c1", 0)[3:9]
    assert checked == [("c1", 0)]
    # Out of memory, the checked block is read in part from its open file, unchecked.
    cache._memory.clear()
    cache._memory_bytes = 0
    assert await cache.read("c1", 0, 10, 20) == block("c1", 0)[10:20]
    assert checked == [("c1", 0)]
    # Changed behind the cache's back: read whole, checked again, fetched again.
    path = next((tmp_path / "blocks").rglob("c1.0"))
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"X" * len(block("c1", 0)))
    # A write within the clock's tick would keep the time: make it a later one.
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert await cache.read("c1", 0, 10, 20) == block("c1", 0)[10:20]
    assert checked == [("c1", 0), ("c1", 0)]
    assert cache.figures.corrupt == 1
    assert len(store.single) + len(store.runs) == 1
    await landed(cache)
    await cache.close()


async def test_a_fill_fetches_runs_within_the_bound_and_stops_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of the fake store are small: count the bound in them.
    monkeypatch.setattr("mediadrive.node.cache.BLOCK_SIZE", 100)
    store = Store()
    run = MAX_RUN_BLOCKS
    cache = open_cache(tmp_path, store, capacity=(run + 2) * 100)
    cache.set_pinned({"pinned"})
    await cache.get("pinned", 0)
    await landed(cache)
    await cache.fill([("c1", i) for i in range(2 * run + 4)], parallel=2)
    await landed(cache)
    # One block pinned: room for a run and one more block.
    assert store.runs == [("pinned", 0, 1), ("c1", 0, run), ("c1", run, 1)]
    assert [cache.has("c1", i) for i in range(run + 2)] == [True] * (run + 1) + [False]
    assert cache.total == (run + 2) * 100

    store = Store()
    cache = open_cache(tmp_path / "other", store, capacity=1 << 20)
    asked = 0

    def keep_going() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 2

    await cache.fill([("c2", i) for i in range(5 * run)], parallel=1, keep_going=keep_going)
    await landed(cache)
    assert store.runs == [("c2", 0, run), ("c2", run, run)]
    await cache.close()


async def test_blocks_a_fill_wrote_are_read_back_unchecked_until_changed(tmp_path: Path) -> None:
    store = Store()
    cache, checked = checking_cache(tmp_path, store)
    await cache.fill([("c1", i) for i in range(3)])
    await landed(cache)
    cache._memory.clear()
    cache._memory_bytes = 0
    # Written from verified bytes: read back without another check, in part or whole.
    assert await cache.read("c1", 1, 5, 15) == block("c1", 1)[5:15]
    assert await cache.get("c1", 2) == block("c1", 2)
    assert checked == []
    # Changed on disk: checked, found damaged, fetched again; never the wrong bytes.
    path = next((tmp_path / "blocks").rglob("c1.0"))
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"X" * len(block("c1", 0)))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert await cache.read("c1", 0, 0, 10) == block("c1", 0)[:10]
    assert checked == [("c1", 0)]
    assert cache.figures.corrupt == 1
    await landed(cache)
    await cache.close()


def resident_pages(path: Path) -> int:
    """How many of a file's pages are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = ctypes.create_string_buffer(pages)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.addressof(start), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start
    return sum(byte & 1 for byte in vector.raw[:pages])


def block_files(root: Path) -> list[Path]:
    return [p for p in (root / "blocks").rglob("*") if p.is_file()]


class AlignedStore(Store):
    """Serves runs as views of one page-aligned buffer, as the S3 store does."""

    async def fetch_run(self, chunk: str, first: int, count: int) -> Sequence[Block]:
        self.runs.append((chunk, first, count))
        run = buffers.aligned(count * BLOCK_SIZE)
        for n in range(count):
            run[n * BLOCK_SIZE : (n + 1) * BLOCK_SIZE] = big_block(chunk, first + n)
        return [run[n * BLOCK_SIZE : (n + 1) * BLOCK_SIZE] for n in range(count)]

    async def check(self, chunk: str, index: int, data: bytes) -> bool:
        return data == big_block(chunk, index)


def big_block(chunk: str, index: int) -> bytes:
    return block(chunk, index, BLOCK_SIZE)


def aligned_cache(root: Path) -> BlockCache:
    store = AlignedStore()
    cache = BlockCache(
        root, 64 * BLOCK_SIZE, store.fetch, fetch_run=store.fetch_run, check=store.check
    )
    cache.open()
    return cache


async def test_blocks_received_into_aligned_memory_skip_the_page_cache(tmp_path: Path) -> None:
    cache = aligned_cache(tmp_path)
    await asyncio.gather(*cache.prefetch_many([("c", n) for n in range(4)]))
    await landed(cache)
    if not cache.direct_io:
        pytest.skip(f"the file system under {tmp_path} refuses direct I/O")
    files = block_files(tmp_path)
    assert len(files) == 4
    # Written straight from the buffer: none of their pages went through the page cache.
    assert [resident_pages(p) for p in files] == [0, 0, 0, 0]
    cache._memory.clear()
    assert [await cache.get("c", n) for n in range(4)] == [big_block("c", n) for n in range(4)]
    await cache.close()


async def test_where_direct_io_is_refused_blocks_go_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return opened(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    cache = aligned_cache(tmp_path)
    await asyncio.gather(*cache.prefetch_many([("c", n) for n in range(2)]))
    await landed(cache)
    assert not cache.direct_io
    assert sorted(p.read_bytes() for p in block_files(tmp_path)) == sorted(
        big_block("c", n) for n in range(2)
    )
    await cache.close()
