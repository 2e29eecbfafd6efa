"""Staged copies: filled sparsely from the base, zeros past a cut, recovered from
their journal after a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent
from mediadrive.node.staging import Staging, base_blocks

# Two chunks: three blocks and a short one, then one block and a bit.
EXTENTS = [Extent(0, 3 * BLOCK_SIZE + 100, "a"), Extent(3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7, "b")]
BASE = ExtentMap.of(1, 4 * BLOCK_SIZE + 107, EXTENTS)


def block_bytes(chunk: str, index: int) -> bytes:
    return bytes([ord(chunk) + index]) * BLOCK_SIZE


def base_content() -> bytes:
    out = bytearray()
    for extent in EXTENTS:
        chunk = b"".join(
            block_bytes(extent.chunk_id, i)
            for i in range((extent.length + BLOCK_SIZE - 1) // BLOCK_SIZE)
        )
        out += chunk[: extent.length]
    return bytes(out)


class Fetches:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, chunk: str, index: int) -> bytes:
        self.asked.append((chunk, index))
        return block_bytes(chunk, index)


async def test_reads_fill_only_the_blocks_they_cover(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=base_blocks(BASE), size=BASE.size)
    fetch = Fetches()
    offset = 2 * BLOCK_SIZE + 50
    await staged.materialize_range(offset, BLOCK_SIZE, fetch)
    # Block 2 of "a" and its short last block (position 3); nothing of "b".
    assert fetch.asked == [("a", 2), ("a", 3)]
    assert os.pread(staged.fd, BLOCK_SIZE, offset) == base_content()[offset : offset + BLOCK_SIZE]
    assert staged.missing == {0, 1, 4, 5}
    await staged.materialize_range(offset, 10, fetch)
    assert len(fetch.asked) == 2  # already there: not fetched twice
    staging.close()


async def test_truncate_into_an_untouched_block_then_grow_shows_zeros(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=base_blocks(BASE), size=BASE.size)
    fetch = Fetches()
    cut = BLOCK_SIZE + 1000
    past = await staged.prepare_truncate(cut, fetch)
    os.ftruncate(staged.fd, cut)
    staged.settle(past)
    grown = 3 * BLOCK_SIZE
    past = await staged.prepare_truncate(grown, fetch)
    os.ftruncate(staged.fd, grown)
    staged.settle(past)
    await staged.materialize_range(0, grown, fetch)
    data = os.pread(staged.fd, grown, 0)
    assert data[:cut] == base_content()[:cut]
    assert data[cut:] == b"\0" * (grown - cut)
    staging.close()


async def test_journal_recovers_a_dirty_copy_after_reopen(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=base_blocks(BASE), size=BASE.size)
    fetch = Fetches()
    offset = BLOCK_SIZE + 10
    whole = await staged.prepare_write(offset, 5, fetch)
    os.pwrite(staged.fd, b"HELLO", offset)
    staged.settle(whole)
    staged.touch()
    staging.sync(staged)
    staging.close()

    again = Staging(tmp_path)
    recovered = again.open()
    assert [(s.node_id, s.path, s.base_version, s.dirty) for s in recovered] == [(7, "/f", 1, True)]
    copy = recovered[0]
    # Block 1 was filled before the write; the rest still comes from the base.
    assert copy.missing == {0, 2, 3, 4, 5}
    await copy.materialize_range(0, BASE.size, fetch)
    expected = bytearray(base_content())
    expected[offset : offset + 5] = b"HELLO"
    assert os.pread(copy.fd, BASE.size, 0) == bytes(expected)
    again.close()


async def test_a_fill_that_lands_after_the_copy_was_dropped_writes_nowhere(
    tmp_path: Path,
) -> None:
    """The kernel reuses descriptor numbers: a block fetched for a copy that was
    committed and dropped meanwhile must not be written into the next file opened."""
    staging = Staging(tmp_path / "staging")
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=base_blocks(BASE), size=BASE.size)
    release = asyncio.Event()

    async def slow_fetch(chunk: str, index: int) -> bytes:
        await release.wait()
        return block_bytes(chunk, index)

    reader = asyncio.ensure_future(staged.materialize_range(0, 10, slow_fetch))
    await asyncio.sleep(0)
    old_fd = staged.fd
    staging.drop(staged)
    other = tmp_path / "other.bin"
    other.write_bytes(b"")
    fd = os.open(other, os.O_RDWR)
    try:
        assert fd == old_fd  # the number came back, as the kernel does
        release.set()
        await asyncio.gather(reader, return_exceptions=True)
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
        staging.close()


def test_journal_writes_from_threads_and_the_loop_do_not_race(tmp_path: Path) -> None:
    import threading

    staging = Staging(tmp_path / "staging")
    staging.open()
    staged = staging.create(7, "/f", None, 0o644, 0)
    failures: list[BaseException] = []

    def write_many(durable: bool) -> None:
        try:
            for _ in range(150):
                staging.write_journal(staged, durable=durable)
        except OSError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write_many, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    staging.close()
    assert failures == []
