"""Staged copies: filled sparsely from the base, zeros past a cut, recovered from
their journal after a restart."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediadrive.core import buffers
from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent
from mediadrive.node import staging as staging_module
from mediadrive.node.base_layout import BaseLayout
from mediadrive.node.staging import (
    MAX_CHANGED_RANGES,
    MAX_PARTIAL_RANGES,
    MIN_SLICE,
    WRITE_BEHIND,
    StagedFile,
    Staging,
    _add_range,
    _subtract,
)

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


def base_copy(root: Path) -> tuple[Staging, StagedFile]:
    """A staging area in ``root`` holding a copy of BASE that lacks every block."""
    staging = Staging(root)
    staging.open()
    return staging, staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(BASE), size=BASE.size)


class Fetches:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, chunk: str, index: int) -> bytes:
        self.asked.append((chunk, index))
        return block_bytes(chunk, index)


async def test_reads_fill_only_the_blocks_they_cover(tmp_path: Path) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    offset = 2 * BLOCK_SIZE + 50
    await staged.materialize_range(offset, BLOCK_SIZE, fetch)
    # Block 2 of "a" and its short last block (position 3), then the next block (the
    # first of "b") in the background; nothing before, nothing further.
    await staged.settled()
    assert fetch.asked == [("a", 2), ("a", 3), ("b", 0)]
    assert os.pread(staged.fd, BLOCK_SIZE, offset) == base_content()[offset : offset + BLOCK_SIZE]
    assert set(staged.missing) == {0, 1, 5}
    await staged.materialize_range(offset, 10, fetch)
    assert len(fetch.asked) == 3  # already there: not fetched twice
    staging.close()


async def test_a_read_that_fetches_does_not_wait_for_the_next_block(tmp_path: Path) -> None:
    staging, staged = base_copy(tmp_path)
    release = asyncio.Event()
    asked: list[int] = []

    async def fetch(chunk: str, index: int) -> bytes:
        asked.append(index)
        if index == 1:
            await release.wait()
        return block_bytes(chunk, index)

    await asyncio.wait_for(staged.materialize_range(10, 100, fetch), 5)
    assert asked == [0, 1]  # the next block is on its way
    assert set(staged.missing) == {1, 2, 3, 4, 5}
    # A read of that block (the kernel's second page fill) waits for it and starts
    # nothing more.
    second = asyncio.ensure_future(staged.materialize_range(BLOCK_SIZE + 10, 100, fetch))
    await asyncio.sleep(0)
    release.set()
    await second
    await staged.settled()
    assert asked == [0, 1]
    assert set(staged.missing) == {2, 3, 4, 5}
    assert os.pread(staged.fd, 2 * BLOCK_SIZE, 0) == base_content()[: 2 * BLOCK_SIZE]
    staging.close()


async def test_a_failed_prefetch_is_fetched_again_by_the_read_that_needs_it(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    failures = [OSError("connection reset")]
    fetch = Fetches()

    async def flaky(chunk: str, index: int) -> bytes:
        if index == 1 and failures:
            raise failures.pop()
        return await fetch(chunk, index)

    await staged.materialize_range(0, 10, flaky)
    await staged.settled()
    assert 1 in staged.missing
    await staged.materialize_range(BLOCK_SIZE, 10, flaky)
    await staged.settled()
    assert fetch.asked == [("a", 0), ("a", 1), ("a", 2)]
    assert os.pread(staged.fd, 10, BLOCK_SIZE) == base_content()[BLOCK_SIZE : BLOCK_SIZE + 10]
    staging.close()


async def test_a_write_covering_two_blocks_in_part_fetches_them_side_by_side(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    both = asyncio.Barrier(2)

    async def fetch(chunk: str, index: int) -> bytes:
        # Neither fetch finishes before the other has started.
        await both.wait()
        return block_bytes(chunk, index)

    offset = BLOCK_SIZE // 2
    whole = await asyncio.wait_for(staged.prepare_write(offset, BLOCK_SIZE, fetch), 5)
    assert whole == []
    assert set(staged.missing) == {2, 3, 4, 5}
    staging.close()


async def test_truncate_into_an_untouched_block_then_grow_shows_zeros(tmp_path: Path) -> None:
    staging, staged = base_copy(tmp_path)
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
    staging, staged = base_copy(tmp_path)
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
    assert set(copy.missing) == {0, 2, 3, 4, 5}
    await copy.materialize_range(0, BASE.size, fetch)
    expected = bytearray(base_content())
    expected[offset : offset + 5] = b"HELLO"
    assert os.pread(copy.fd, BASE.size, 0) == bytes(expected)
    again.close()


def test_a_copy_has_an_entry_from_its_first_change_and_one_never_changed_leaves_nothing(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    untouched = staging.create(3, "/a", 1, 0o644, 0)
    changed = staging.create(7, "/f", 1, 0o644, 0)
    assert not list(tmp_path.glob("*.json"))
    os.pwrite(changed.fd, b"x", 0)
    changed.touch(0, 1)
    # Written before the writer hears back, so a kill from now on finds the copy.
    entry = json.loads((tmp_path / f"{changed.stem}.json").read_text())
    assert (entry["node_id"], entry["dirty"]) == (7, True)
    staging.close()

    again = Staging(tmp_path)
    assert [copy.node_id for copy in again.open()] == [7]
    assert not (tmp_path / f"{untouched.stem}.data").exists()
    again.close()


def test_an_entry_a_power_cut_left_empty_is_dropped_with_its_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry made in place is empty until its bytes reach the disk: a power cut
    before that (no fsync of the copy, which writes its entry anew) leaves it so, and
    nothing of it was acknowledged as durable. A damaged entry is kept aside."""
    staging = Staging(tmp_path)
    staging.open()
    for node_id in (3, 7):
        staged = staging.create(node_id, "/f", 1, 0o644, 0)
        staged.touch(0, 0)
    staging.close()
    (tmp_path / "3-1.json").write_bytes(b"")
    (tmp_path / "7-2.json").write_bytes(b'{"node_id": 7, "pa')

    again = Staging(tmp_path)
    with caplog.at_level("INFO"):
        assert again.open() == []
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "7-2.broken"]
    assert "3-1.json is empty" in caplog.text and "7-2.json is unreadable" in caplog.text


def test_an_fsync_replaces_an_entry_made_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The durable entry goes through a rename: a crash in the middle of writing it
    leaves the entry before it, not an empty one."""
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0)
    staged.touch(0, 0)
    renamed: list[str] = []
    real = os.replace

    def record(src: str, dst: str) -> None:
        renamed.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", record)
    staging.sync(staged)
    assert renamed == [f"{staged.stem}.json"]
    staging.close()


async def test_a_fill_that_lands_after_the_copy_was_dropped_writes_nowhere(
    tmp_path: Path,
) -> None:
    """The kernel reuses descriptor numbers: a block fetched for a copy that was
    committed and dropped meanwhile must not be written into the next file opened."""
    staging = Staging(tmp_path / "staging")
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(BASE), size=BASE.size)
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


async def test_a_dropped_copy_leaves_nothing_and_a_new_copy_of_the_file_is_its_own(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    # What a crash left between a drop and its removal goes at the next open: files
    # without an entry, and where earlier releases put dropped copies.
    (tmp_path / "3-1.data").write_bytes(b"old")
    (tmp_path / "3-1.map").write_bytes(b"\x01")
    (tmp_path / "3-1.tmp").write_text("{")
    (tmp_path / "trash").mkdir()
    (tmp_path / "trash" / "3.data.0").write_bytes(b"old")
    staging.close()
    staging = Staging(tmp_path)
    staging.open()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    gate = threading.Event()
    staging._pool("drop").submit(gate.wait)  # holds the thread that removes files
    first = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(BASE), size=BASE.size)
    await first.materialize_range(0, BASE.size, Fetches())
    staging.drop(first)
    # The same file staged again at once is a fresh copy with files of its own, while
    # the first copy's are still there.
    second = staging.create(7, "/f", 2, 0o644, 0)
    assert second.stem != first.stem
    assert (tmp_path / f"{first.stem}.map").exists()
    os.pwrite(second.fd, b"new", 0)
    staging.sync(second)
    gate.set()
    staging.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        f"{second.stem}.data",
        f"{second.stem}.json",
    ]
    assert (tmp_path / f"{second.stem}.data").read_bytes() == b"new"
    again = Staging(tmp_path)
    [copy] = again.open()
    assert (copy.base_version, set(copy.missing)) == (2, set())
    # A copy made after a restart does not take the name of one found there.
    third = again.create(8, "/g", 1, 0o644, 0)
    assert int(third.stem.partition("-")[2]) > int(copy.stem.partition("-")[2])
    again.close()


def test_a_dropped_copy_has_no_entry_even_before_its_files_are_aside(tmp_path: Path) -> None:
    """A restart knows a copy by its entry: once dropped (committed), an agent killed
    before the files are moved aside must not find it and commit it again."""
    staging = Staging(tmp_path)
    staging.open()
    gate = threading.Event()
    staging._pool("drop").submit(gate.wait)  # holds the thread that moves files aside
    staged = staging.create(7, "/f", 1, 0o644, 0)
    os.pwrite(staged.fd, b"x", 0)
    staged.touch(0, 1)
    staging.sync(staged)
    staging.drop(staged)
    assert not (tmp_path / f"{staged.stem}.json").exists()
    assert (tmp_path / f"{staged.stem}.data").exists()  # still waiting for the thread
    gate.set()
    staging.close()
    assert not (tmp_path / f"{staged.stem}.data").exists()


def test_dropped_copies_leave_no_files_and_no_bookkeeping_behind(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    staging.open()
    for node_id in (1, 2, 3, 2):
        staging.drop(staging.create(node_id, "/f", 1, 0o644, 0))
    staging._pool("drop").submit(lambda: None).result()  # after the drops queued before it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    staging.close()


def record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files fdatasync'd from now on."""
    flushed: list[str] = []
    real = os.fdatasync

    def record(fd: int) -> None:
        flushed.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", record)
    return flushed


async def test_fsync_flushes_the_copy_and_its_map_once_a_block_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base is in the journal entry (flushed with it); the map is made when the
    copy first holds a block of the base, and flushed from then on."""
    staging, staged = base_copy(tmp_path)
    flushed = record_flushes(monkeypatch)
    os.pwrite(staged.fd, b"x", 5)
    staged.touch(5, 1)
    staging.sync(staged)
    files = tmp_path / staged.stem
    assert flushed == [f"{staged.stem}.data"]
    assert not files.with_suffix(".map").exists() and not files.with_suffix(".base").exists()
    assert json.loads(files.with_suffix(".json").read_text())["extents"] == (
        BaseLayout.of(BASE).rows()
    )
    await staged.materialize([1], Fetches())
    flushed.clear()
    staging.sync(staged)
    assert sorted(flushed) == [f"{staged.stem}.data", f"{staged.stem}.map"]
    staging.close()


def test_a_large_base_is_written_in_its_own_file_and_flushed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past _JOURNALED_EXTENTS the base goes in the copy's ``.base``, written once when the
    copy is made: the first fsync makes it durable with the rest (a restart cannot
    read the copy without it), and the journal entry stays small."""
    many = [Extent(i * BLOCK_SIZE, BLOCK_SIZE, f"{i:064x}") for i in range(300)]
    content = ExtentMap.of(1, 300 * BLOCK_SIZE, many)
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(content), size=content.size)
    flushed = record_flushes(monkeypatch)
    os.pwrite(staged.fd, b"x", 5)
    staged.touch(5, 1)
    staging.sync(staged)
    assert sorted(flushed) == [f"{staged.stem}.base", f"{staged.stem}.data"]
    assert "extents" not in json.loads((tmp_path / f"{staged.stem}.json").read_text())
    flushed.clear()
    staging.sync(staged)
    assert flushed == [f"{staged.stem}.data"]
    staging.close()
    again = Staging(tmp_path)
    [found] = again.open()
    assert list(found.base) == list(BaseLayout.of(content))
    again.close()


@pytest.mark.parametrize("write_behind", [True, False])
def test_a_large_write_starts_going_to_disk_before_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_behind: bool
) -> None:
    started: list[tuple[int, bool]] = []
    start = staging_module.start_writeback

    def record(fd: int) -> bool:
        started.append((fd, start(fd)))
        return started[-1][1]

    monkeypatch.setattr(staging_module, "start_writeback", record)
    staging = Staging(tmp_path, write_behind=write_behind)
    staging.open()
    staged = staging.create(7, "/f", None, 0o644, 0)
    fd = staged.fd
    step = 1 << 20
    for i in range(2 * WRITE_BEHIND // step + 1):
        os.pwrite(fd, os.urandom(step), i * step)
        staging.wrote(staged, step)
    staging.close()  # waits for the background work
    # Twice in two WRITE_BEHIND and a bit, for the copy; the kernel took each. Without
    # write-behind (--commit-on fsync) the pages stay until the kernel's own writeback.
    assert started == ([(fd, True), (fd, True)] if write_behind else [])


def _cancelled_write_bytes() -> int:
    """Bytes this process dirtied that were never written: their file went first."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("cancelled_write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no cancelled_write_bytes in /proc/self/io")


def test_a_new_files_copy_dropped_after_its_commit_never_reaches_the_disk(
    tmp_path: Path,
) -> None:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fs == "tmpfs":
        pytest.skip("tmpfs never writes pages back")
    staging = Staging(tmp_path, write_behind=False)
    staging.open()
    staged = staging.create(7, "/f", None, 0o644, 0)
    before = _cancelled_write_bytes()
    for i in range(16):
        os.pwrite(staged.fd, os.urandom(1 << 20), i << 20)
    staging.drop(staged)
    staging.close()  # waits for the removal
    # Its pages were still dirty when it went: closing it did not flush them (as ext4
    # does for a file that was cut to 0 bytes).
    assert _cancelled_write_bytes() - before >= 12 << 20


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


async def _written(staging: Staging, writes: list[tuple[int, bytes]]) -> StagedFile:
    """A copy of BASE with ``writes`` made the way the VFS makes them."""
    staged = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(BASE), size=BASE.size)
    fetch = Fetches()
    for offset, data in writes:
        whole = await staged.prepare_write(offset, len(data), fetch)
        os.pwrite(staged.fd, data, offset)
        staged.settle(whole)
        staged.touch(offset, len(data))
    return staged


def _runs(staged: StagedFile) -> list[tuple[int, int, str, int]]:
    return [(e.offset, e.length, e.chunk_id, e.chunk_offset) for e, _ in staged.untouched_runs()]


async def test_untouched_runs_keep_the_bytes_around_a_write_inside_a_block(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    at = BLOCK_SIZE + 1000
    staged = await _written(staging, [(at, b"x" * 4000)])
    # Block 1 was copied in for the write; all of "a" but the written bytes is kept.
    assert set(staged.missing) == {0, 2, 3, 4, 5}
    assert _runs(staged) == [
        (0, at, "a", 0),
        (at + 4000, BASE.size - (at + 4000) - (BLOCK_SIZE + 7), "a", at + 4000),
        (3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7, "b", 0),
    ]
    staging.close()


async def test_a_sliver_between_writes_is_sent_again_not_kept(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    staging.open()
    at = BLOCK_SIZE + 1000
    gap = MIN_SLICE - 1
    staged = await _written(staging, [(at, b"x" * 10), (at + 10 + gap, b"y" * 10)])
    resumed = at + 20 + gap
    # The gap is part of the new chunk; "a" resumes after the second write.
    assert [r[:2] for r in _runs(staged)[:2]] == [
        (0, at),
        (resumed, 3 * BLOCK_SIZE + 100 - resumed),
    ]
    staging.close()


async def test_a_change_without_a_range_keeps_only_the_blocks_never_copied_in(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    staged = await _written(staging, [(BLOCK_SIZE + 1000, b"x" * 10)])
    staged.touch()  # a punch, a truncate: bytes anywhere may differ
    assert _runs(staged) == [
        (0, BLOCK_SIZE, "a", 0),
        (2 * BLOCK_SIZE, BLOCK_SIZE + 100, "a", 2 * BLOCK_SIZE),
        (3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7, "b", 0),
    ]
    staging.sync(staged)
    staging.close()
    # Found after a restart, the copy cannot say which bytes of its blocks changed.
    again = Staging(tmp_path)
    (copy,) = again.open()
    assert copy.changed_unknown
    again.close()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12),
    st.integers(0, 200),
    st.integers(0, 80),
)
def test_changed_ranges_merge_and_subtract_like_sets(
    adds: list[tuple[int, int]], start: int, length: int
) -> None:
    ranges: list[tuple[int, int]] = []
    model: set[int] = set()
    for lo, n in adds:
        if n:
            _add_range(ranges, lo, lo + n)
            model.update(range(lo, lo + n))
    assert ranges == sorted(ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))  # disjoint, not touching
    assert {i for lo, hi in ranges for i in range(lo, hi)} == model
    left = _subtract(ranges, start, start + length)
    assert {i for lo, hi in left for i in range(lo, hi)} == set(
        range(start, start + length)
    ) - model
    assert all(hi > lo for lo, hi in left)


async def test_scattered_writes_past_the_range_bound_count_their_blocks_changed(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    writes = [(BLOCK_SIZE + 10 * i, b"x") for i in range(MAX_CHANGED_RANGES + 1)]
    staged = await _written(staging, writes)
    assert staged.changed_unknown and not staged.changed
    # Block 1 holds the writes: it is sent whole; the blocks never fetched are kept.
    assert [r[:2] for r in _runs(staged)] == [
        (0, BLOCK_SIZE),
        (2 * BLOCK_SIZE, BLOCK_SIZE + 100),
        (3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7),
    ]
    staging.close()


# Writes into blocks the copy lacks and whose base is not at hand (see prepare_write's
# ``local``): noted as written in part, not fetched.


def _not_at_hand(chunk: str, index: int) -> bool:
    return False


async def _write_vfs(
    staged: StagedFile,
    offset: int,
    data: bytes,
    fetch: staging_module.FetchBlock,
    local: staging_module.HasBlock = _not_at_hand,
) -> None:
    """A write made the way vfs.write makes it, told which blocks are at hand."""
    whole = await staged.prepare_write(offset, len(data), fetch, local=local)
    await staged.held_back()
    os.pwrite(staged.fd, data, offset)
    staged.settle(whole + staged.whole_in_parts(offset, len(data)))
    staged.touch(offset, len(data))


def _expected(writes: list[tuple[int, bytes]]) -> bytes:
    """BASE's bytes with ``writes`` (offset, bytes) made over them in order."""
    out = bytearray(base_content())
    for offset, data in writes:
        out[offset : offset + len(data)] = data
    return bytes(out)


def _block_1(staged: StagedFile) -> bytes:
    """What the copy holds of block 1."""
    return os.pread(staged.fd, BLOCK_SIZE, BLOCK_SIZE)


def _settled_in_map(staged: StagedFile, i: int) -> bool:
    return os.pread(staged.map_fd, 1, i) == b"\x01"


async def test_a_write_into_a_block_not_at_hand_fetches_nothing_and_a_read_keeps_it(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    asked_local: list[tuple[str, int]] = []

    def local(chunk: str, index: int) -> bool:
        asked_local.append((chunk, index))
        return False

    at = BLOCK_SIZE + 1000
    await _write_vfs(staged, at, b"HELLO", fetch, local)
    # The write did not wait for block 1: nothing fetched, its range noted instead.
    assert fetch.asked == []
    assert asked_local == [("a", 1)]
    assert set(staged.missing) == {0, 1, 2, 3, 4, 5}
    assert staged.partial == {1: [(at, at + 5)]}
    await staged.materialize_range(BLOCK_SIZE, BLOCK_SIZE, fetch)
    await staged.settled()
    # Block 1 once for the read (and block 2, the read-ahead); the base bytes went in
    # around the write, not over it.
    assert fetch.asked == [("a", 1), ("a", 2)]
    assert 1 not in staged.missing and 1 not in staged.partial
    assert _settled_in_map(staged, 1)
    assert _block_1(staged) == _expected([(at, b"HELLO")])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    staging.close()


async def test_a_fill_in_flight_when_a_write_lands_keeps_the_written_bytes(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    release = asyncio.Event()
    fetching = asyncio.Event()
    asked: list[tuple[str, int]] = []

    async def slow_fetch(chunk: str, index: int) -> bytes:
        asked.append((chunk, index))
        if (chunk, index) == ("a", 1):
            fetching.set()
        await release.wait()
        return block_bytes(chunk, index)

    reader = asyncio.ensure_future(staged.materialize_range(BLOCK_SIZE, 10, slow_fetch))
    await asyncio.wait_for(fetching.wait(), 5)
    # The fetch of block 1 is under way; a write into it in part does not wait for it.
    at = BLOCK_SIZE + 5
    await asyncio.wait_for(_write_vfs(staged, at, b"NEW", slow_fetch), 5)
    assert 1 in staged.missing
    release.set()
    await asyncio.wait_for(reader, 5)
    await staged.settled()
    # The block that landed after the write went in around it.
    assert asked.count(("a", 1)) == 1
    assert 1 not in staged.missing and 1 not in staged.partial
    assert _block_1(staged) == _expected([(at, b"NEW")])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    staging.close()


async def test_a_restart_keeps_the_bytes_written_into_a_lacking_block(tmp_path: Path) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    at = BLOCK_SIZE + 1000
    await _write_vfs(staged, at, b"HELLO", fetch)
    assert (tmp_path / f"{staged.stem}.part").stat().st_size > 0
    # Closed as an unmount or a crash leaves it (the page cache holds the bytes).
    staging.close()

    again = Staging(tmp_path)
    [copy] = again.open()
    assert set(copy.missing) == {0, 1, 2, 3, 4, 5}
    assert copy.partial == {1: [(at, at + 5)]}
    await copy.materialize([1], fetch)
    # Without the record the base block would have gone in over the write.
    assert fetch.asked == [("a", 1)]
    assert _block_1(copy) == _expected([(at, b"HELLO")])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    again.close()


async def test_a_torn_part_record_and_one_for_a_settled_block_are_ignored(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    first, second = BLOCK_SIZE + 1000, 2 * BLOCK_SIZE + 5
    await _write_vfs(staged, first, b"HELLO", fetch)
    await _write_vfs(staged, second, b"WORLD", fetch)
    # Block 2 copied in since: its record stays in .part, but the map says settled.
    await staged.materialize([2], fetch)
    assert _settled_in_map(staged, 2)
    staging.close()
    # A crash in the middle of appending a record leaves part of it.
    with open(tmp_path / f"{staged.stem}.part", "ab") as part:
        part.write(b"\x01\x02\x03\x04\x05")

    again = Staging(tmp_path)
    [copy] = again.open()
    assert set(copy.missing) == {0, 1, 3, 4, 5}
    assert copy.partial == {1: [(first, first + 5)]}
    await copy.materialize(sorted(copy.missing), fetch)
    # Block 2 is not fetched again, and neither write was overwritten.
    assert fetch.asked == [("a", 2), ("a", 0), ("a", 1), ("a", 3), ("b", 0), ("b", 1)]
    assert os.pread(copy.fd, BASE.size, 0) == _expected([(first, b"HELLO"), (second, b"WORLD")])
    again.close()


async def test_a_write_past_the_partial_range_bound_fetches_the_block(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    # Separate (not touching) one-byte ranges, up to the bound: none is fetched.
    writes = [(BLOCK_SIZE + 100 * k, bytes([0x30 + k])) for k in range(MAX_PARTIAL_RANGES)]
    for offset, data in writes:
        await _write_vfs(staged, offset, data, fetch)
    assert fetch.asked == []
    assert len(staged.partial[1]) == MAX_PARTIAL_RANGES
    # One more range: the block is copied in (around the earlier writes) first.
    last = (BLOCK_SIZE + 100 * MAX_PARTIAL_RANGES + 50, b"Z" * 10)
    await _write_vfs(staged, *last, fetch)
    assert fetch.asked == [("a", 1)]
    assert 1 not in staged.missing and 1 not in staged.partial
    assert _settled_in_map(staged, 1)
    assert _block_1(staged) == _expected([*writes, last])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    staging.close()


async def test_writes_covering_a_lacking_block_in_parts_settle_it_without_a_fetch(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    half = BLOCK_SIZE // 2
    left = (BLOCK_SIZE, b"L" * (half + 10))
    await _write_vfs(staged, *left, fetch)
    assert staged.whole_in_parts(BLOCK_SIZE, BLOCK_SIZE) == []
    assert 1 in staged.missing
    # The second half (overlapping the first a little), step by step as vfs.write.
    offset, data = BLOCK_SIZE + half, b"R" * half
    whole = await staged.prepare_write(offset, len(data), fetch, local=_not_at_hand)
    assert whole == []
    os.pwrite(staged.fd, data, offset)
    assert staged.whole_in_parts(offset, len(data)) == [1]
    staged.settle(whole + staged.whole_in_parts(offset, len(data)))
    staged.touch(offset, len(data))
    assert 1 not in staged.missing and 1 not in staged.partial
    assert _settled_in_map(staged, 1)
    # Nothing fetched, and a read of the block has nothing to fetch either.
    await staged.materialize_range(BLOCK_SIZE, BLOCK_SIZE, fetch)
    assert fetch.asked == []
    assert _block_1(staged) == _expected([left, (offset, data)])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    staging.close()


def _at_hand(chunk: str, index: int) -> bool:
    return True


async def test_a_write_into_a_block_at_hand_copies_in_only_the_base_bytes_around_it(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    # 1,000 base bytes before the write: too few to keep as a slice, so copied in.
    at, data = BLOCK_SIZE + 1000, b"HELLO"
    whole = await staged.prepare_write(at, len(data), fetch, local=_at_hand)
    assert fetch.asked == [("a", 1)]
    # The base went in around the range the write is about to fill, not over it,
    # and the block waits for that write before it counts as held.
    assert os.pread(staged.fd, len(data), at) == bytes(len(data))
    assert os.pread(staged.fd, 1000, BLOCK_SIZE) == base_content()[BLOCK_SIZE:at]
    assert 1 in staged.missing
    os.pwrite(staged.fd, data, at)
    assert staged.whole_in_parts(at, len(data)) == [1]
    staged.settle(whole + staged.whole_in_parts(at, len(data)))
    staged.touch(at, len(data))
    assert 1 not in staged.missing and 1 not in staged.partial
    assert _settled_in_map(staged, 1)
    assert _block_1(staged) == _expected([(at, data)])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    # Held now, with only the write changed: every other byte is kept as before.
    assert [r[:2] for r in _runs(staged)] == [
        (0, at),
        (at + len(data), 3 * BLOCK_SIZE + 100 - at - len(data)),
        (3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7),
    ]
    staging.close()


async def test_a_write_across_two_blocks_at_hand_copies_both_in_around_it(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    # 1,000 base bytes left at either end: blocks 1 and 2, each copied in around it.
    at, data = BLOCK_SIZE + 1000, b"w" * (2 * BLOCK_SIZE - 2000)
    await _write_vfs(staged, at, data, fetch, local=_at_hand)
    assert sorted(fetch.asked) == [("a", 1), ("a", 2)]
    assert set(staged.missing) == {0, 3, 4, 5} and not staged.partial
    expected = _expected([(at, data)])
    assert os.pread(staged.fd, 2 * BLOCK_SIZE, BLOCK_SIZE) == expected[BLOCK_SIZE : 3 * BLOCK_SIZE]
    staging.close()


async def test_a_write_into_a_block_at_hand_leaving_only_long_base_runs_fetches_nothing(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    # The base bytes on either side of the write are kept as slices whether the copy
    # holds them or not: the block is not copied in, for the write or the commit.
    at, data = BLOCK_SIZE + MIN_SLICE, b"x" * 10
    await _write_vfs(staged, at, data, fetch, local=_at_hand)
    assert fetch.asked == []
    assert staged.partial == {1: [(at, at + len(data))]}
    await staged.fill_local(fetch, _at_hand)
    assert fetch.asked == []
    assert 1 in staged.missing
    assert [r[:2] for r in _runs(staged)] == [
        (0, at),
        (at + len(data), 3 * BLOCK_SIZE + 100 - at - len(data)),
        (3 * BLOCK_SIZE + 100, BLOCK_SIZE + 7),
    ]
    await staged.materialize_range(BLOCK_SIZE, BLOCK_SIZE, fetch)
    await staged.settled()
    assert _block_1(staged) == _expected([(at, data)])[BLOCK_SIZE : 2 * BLOCK_SIZE]
    staging.close()


async def test_a_commit_copies_in_a_block_written_in_part_only_for_a_short_run(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    # Written while neither block was at hand: noted, not fetched.
    short, long_ = (BLOCK_SIZE + 1000, b"s" * 10), (2 * BLOCK_SIZE + MIN_SLICE, b"l" * 10)
    await _write_vfs(staged, *short, fetch)
    await _write_vfs(staged, *long_, fetch)
    assert fetch.asked == []
    # Both came into the cache since: only the one a sliver would be left of is copied
    # in before the commit.
    await staged.fill_local(fetch, _at_hand)
    assert fetch.asked == [("a", 1)]
    assert 1 not in staged.missing and 2 in staged.missing
    staging.close()


async def test_a_block_written_in_part_holds_needs_and_keeps_only_its_base_bytes(
    tmp_path: Path,
) -> None:
    staging, staged = base_copy(tmp_path)
    fetch = Fetches()
    assert len(staged.untouched_extents()) == 2  # both of BASE's extents, before
    at = BLOCK_SIZE + 1000
    await _write_vfs(staged, at, b"x" * 100, fetch)
    await _write_vfs(staged, at + 200, b"y" * 100, fetch)
    assert fetch.asked == []

    # holds: the written bytes only; any base byte of a lacking block is still to come.
    assert staged.holds(at, 100)
    assert staged.holds(at + 200, 100)
    assert not staged.holds(at, 101)
    assert not staged.holds(at - 1, 2)
    assert not staged.holds(at, 300)  # the gap between the writes
    assert not staged.holds(0, 10)  # a block nobody wrote

    # needing: block 1 only while some of its base bytes are not covered.
    gaps = [(BLOCK_SIZE, at), (at + 100, at + 200), (at + 300, 2 * BLOCK_SIZE)]
    assert staged.needing([]) == [0, 1, 2, 3, 4, 5]
    assert staged.needing(gaps) == [0, 2, 3, 4, 5]
    assert staged.needing(gaps[:2]) == [0, 1, 2, 3, 4, 5]
    assert staged.needing([(0, BASE.size)]) == []

    # The base bytes around the writes are kept as slices, the 100-byte gap too (far
    # under MIN_SLICE): the copy lacks those bytes, so they cannot be sent again.
    assert MIN_SLICE > 100
    runs = [
        ((e.offset, e.length, e.chunk_id, e.chunk_offset), list(positions))
        for e, positions in staged.untouched_runs()
    ]
    a_end = 3 * BLOCK_SIZE + 100
    assert runs == [
        ((0, at, "a", 0), [0, 1]),
        ((at + 100, 100, "a", at + 100), [1]),
        ((at + 300, a_end - (at + 300), "a", at + 300), [1, 2, 3]),
        ((a_end, BLOCK_SIZE + 7, "b", 0), [4, 5]),
    ]
    # The extent holding the written block is no longer untouched; "b" still is.
    extents = [
        ((e.offset, e.length, e.chunk_id, e.chunk_offset), list(positions))
        for e, positions in staged.untouched_extents()
    ]
    assert extents == [((a_end, BLOCK_SIZE + 7, "b", 0), [4, 5])]
    staging.close()


# A base of slices: extents that start and end inside blocks, over two chunks.
SLICED = [
    Extent(0, 9 * BLOCK_SIZE + 300, "a", 0),
    Extent(9 * BLOCK_SIZE + 300, 6 * BLOCK_SIZE + 5, "b", BLOCK_SIZE // 2 + 11),
    Extent(15 * BLOCK_SIZE + 305, 3 * BLOCK_SIZE, "a", 12 * BLOCK_SIZE),
]
SLICED_SIZE = 18 * BLOCK_SIZE + 305


def _reference_runs(staged: StagedFile) -> list[tuple[Extent, list[int]]]:
    """untouched_runs worked out block by block, every block of a touched extent."""
    out: list[tuple[Extent, list[int]]] = []
    for group, extent in staged._extent_groups():
        if staged._untouched(group):
            out.append((extent, list(group)))
            continue
        spans: list[tuple[int, int, int]] = []
        for p in group:
            block = staged.base[p]
            if p in staged.partial:
                spans.extend((lo, hi, p) for lo, hi in staged._from_base(p))
            elif p in staged.missing:
                spans.append((block.offset, block.end, p))
            elif not staged.changed_unknown:
                spans.extend(
                    (lo, hi, p) for lo, hi in _subtract(staged.changed, block.offset, block.end)
                )
        run: list[tuple[int, int, int]] = []
        for span in [*spans, (-1, -1, -1)]:
            if run and span[0] == run[-1][1]:
                run.append(span)
                continue
            if run and (
                run[-1][1] - run[0][0] >= MIN_SLICE or any(p in staged.missing for *_, p in run)
            ):
                first = staged.base[run[0][2]]
                start = run[0][0]
                extent = Extent(
                    start,
                    run[-1][1] - start,
                    first.chunk_id,
                    first.chunk_position + start - first.offset,
                )
                out.append((extent, sorted({p for *_, p in run})))
            run = [span]
    return out


def _reference_needing(staged: StagedFile, covered: list[tuple[int, int]]) -> list[int]:
    """needing worked out block by block."""
    return [
        i
        for i in range(len(staged.base))
        if i in staged.missing
        and any(_subtract(covered, lo, hi) for lo, hi in staged._from_base(i))
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, SLICED_SIZE - 1), st.integers(1, 3 * BLOCK_SIZE), st.booleans()),
        max_size=6,
    ),
    st.lists(st.tuples(st.integers(0, SLICED_SIZE), st.integers(0, 4 * BLOCK_SIZE)), max_size=5),
    st.booleans(),
)
def test_kept_runs_and_blocks_needed_match_a_block_by_block_reference(
    writes: list[tuple[int, int, bool]], cover: list[tuple[int, int]], unknown: bool
) -> None:
    """untouched_runs and needing look at the touched blocks one by one and at the
    blocks between them as one stretch; they answer as a look at every block would."""

    async def check(root: Path) -> None:
        staging = Staging(root)
        staging.open()
        base = BaseLayout(SLICED)
        staged = staging.create(7, "/f", 1, 0o644, 0, base=base, size=SLICED_SIZE)
        fetch = Fetches()
        for offset, length, at_hand in writes:
            length = min(length, SLICED_SIZE - offset)

            def local(chunk: str, index: int, at_hand: bool = at_hand) -> bool:
                return at_hand

            await _write_vfs(staged, offset, b"w" * length, fetch, local)
        if unknown:
            staged.touch()
        covered: list[tuple[int, int]] = []
        for start, length in cover:
            if length:
                _add_range(covered, start, min(start + length, SLICED_SIZE))
        assert [(e, list(p)) for e, p in staged.untouched_runs()] == _reference_runs(staged)
        assert staged.needing(covered) == _reference_needing(staged, covered)
        staging.close()

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(check(Path(root)))


async def test_a_copy_closed_under_a_direct_write_frees_its_number_once_the_write_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", None, 0o644, 0)
    if staged.opened_direct() < 0:
        pytest.skip("the file system has no direct I/O")
    gate = threading.Event()
    pwrite_all = staging_module._pwrite_all

    def held(fd: int, placed: list[tuple[int, memoryview]]) -> bool:
        gate.wait(5)
        return pwrite_all(fd, placed)

    monkeypatch.setattr(staging_module, "_pwrite_all", held)
    view = buffers.aligned(4096)
    view[:] = b"x" * 4096
    writing = asyncio.ensure_future(staging.write_direct(staged, [(0, view)]))
    await asyncio.sleep(0.05)
    number = staged.direct_fd
    staging_module._close(staged)
    # While the write is on its thread, its number stays taken: the next open gets
    # another, and the write cannot land there.
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    assert other != number
    gate.set()
    assert await writing
    await asyncio.sleep(0)
    assert os.fstat(other).st_size == 0
    with pytest.raises(OSError):
        os.fstat(number)
    os.close(other)
    staging.close()
