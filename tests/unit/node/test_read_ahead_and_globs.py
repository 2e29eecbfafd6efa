"""Read-ahead windows of a sequential reader, and the globs of hydrate and pins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE as B
from mediadrive.core.meta import Extent
from mediadrive.node.cache import MAX_RUN_BLOCKS
from mediadrive.node.hydrate import compile_glob, fixed_prefix, matches
from mediadrive.node.reading import FILL_PARALLEL, MAX_READAHEAD_BLOCKS, ReadAhead, read_content

from .test_block_cache import Store, block, landed, open_cache


def test_read_ahead_windows_double_while_sequential_then_top_up_by_halves() -> None:
    ahead = ReadAhead()
    got = [ahead.advance(i * B, B) for i in range(7)]
    assert got == [
        (B, B),  # a first read says nothing about the next one
        (2 * B, 4 * B),  # 2 blocks ahead
        (4 * B, 7 * B),  # 4 ahead of the read's end, from where the last run stopped
        (7 * B, 12 * B),
        (12 * B, 21 * B),
        (21 * B, 38 * B),  # 32 blocks: the cap
        (38 * B, 38 * B),  # less than half the window used up: nothing new yet
    ]
    assert ahead.window == MAX_READAHEAD_BLOCKS


def test_read_ahead_tolerates_slightly_out_of_order_requests() -> None:
    half = B // 2
    ahead = ReadAhead()
    ahead.advance(0, half)
    ahead.advance(B, half)  # a request skipped: still sequential
    assert ahead.window == 2
    ahead.advance(half, half)  # the skipped request arrives late
    assert ahead.window == 4
    assert ahead.advance(3 * half, half) == (7 * half, 20 * half)
    assert ahead.window == 8


def test_requests_the_kernels_read_ahead_sends_early_keep_a_reader_sequential() -> None:
    # The kernel asks for the next 8 MiB window while the reader's own requests for
    # the current one are still arriving: requests jump 8 MiB ahead and back.
    ahead = ReadAhead()
    ahead.advance(0, B)  # a first read says nothing
    for i in [*range(1, 8), 16, *range(8, 16), 24, *range(17, 24), 32, 25]:
        ahead.advance(i * B, B)
        assert ahead.sequential, i
    assert ahead.window == MAX_READAHEAD_BLOCKS
    assert ahead.random_misses == 0


def test_a_reader_jumping_a_few_mib_before_it_streams_is_not_sequential() -> None:
    # A random reader of a small file: its jumps are within what a streaming
    # reader's requests may be apart, but it never streamed.
    ahead = ReadAhead()
    for i in (9, 2, 11, 5):
        ahead.advance(i * B + 5, 4096)
        assert not ahead.sequential


def test_read_ahead_stops_on_a_jump_and_starts_over() -> None:
    ahead = ReadAhead()
    for i in range(4):
        ahead.advance(i * B, B)
    assert ahead.advance(100 * B, B) == (101 * B, 101 * B)
    assert ahead.window == 0
    assert ahead.advance(101 * B, B) == (102 * B, 104 * B)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/shots/*.exr", "/shots/a.exr", True),
        ("/shots/*.exr", "/shots/s1/a.exr", False),
        ("shots/*.exr", "/shots/a.exr", True),
        ("/shots/**/*.exr", "/shots/a.exr", True),
        ("/shots/**/*.exr", "/shots/s1/t2/a.exr", True),
        ("/shots/**/*.exr", "/other/a.exr", False),
        ("/shots/**", "/shots/s1/a.exr", True),
        ("/s?.exr", "/s1.exr", True),
        ("/s?.exr", "/s/.exr", False),
        ("/s[0-4].exr", "/s3.exr", True),
        ("/s[!0-4].exr", "/s3.exr", False),
        ("/s[!0-4].exr", "/s7.exr", True),
        ("/a+b(1).exr", "/a+b(1).exr", True),
        ("/a.exr", "/a.exr.bak", False),
    ],
)
def test_globs(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


def test_unclosed_bracket_is_a_literal() -> None:
    assert compile_glob("/a[b").match("/a[b") is not None


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/a/b/*.exr", "/a/b"),
        ("/a/b/c.exr", "/a/b"),
        ("a/b?/c", "/a"),
        ("/**/x.exr", "/"),
        ("/x.exr", "/"),
    ],
)
def test_fixed_prefix(pattern: str, prefix: str) -> None:
    assert fixed_prefix(pattern) == prefix


@pytest.mark.parametrize("stop", ["close", "new version"])
async def test_a_random_reader_fills_the_file_until_it_is_closed_or_replaced(
    tmp_path: Path, stop: str
) -> None:
    store = Store()
    store.gate.clear()
    cache = open_cache(tmp_path, store, capacity=1 << 40)
    size = 8 * MAX_RUN_BLOCKS
    content = ExtentMap.of(1, size * B, [Extent(offset=0, length=size * B, chunk_id="c1")])
    ahead = ReadAhead()
    current = True
    reads = [
        asyncio.create_task(read_content(cache, content, offset, 10, ahead, lambda: current))
        for offset in (40 * B, 3 * B)
    ]
    await asyncio.sleep(0.05)
    # The blocks read first, each on its own; then the fill from the second jump on,
    # in runs, about FILL_PARALLEL of them at a time.
    run = MAX_RUN_BLOCKS
    assert store.runs[:4] == [("c1", 40, 1), ("c1", 3, 1), ("c1", 4, run - 1), ("c1", 3 + run, run)]
    filling = sum(count for _, _, count in store.runs[2:])
    assert FILL_PARALLEL * MAX_RUN_BLOCKS <= filling < (FILL_PARALLEL + 1) * MAX_RUN_BLOCKS
    asked = len(store.runs)
    if stop == "close":
        ahead.stop()
    else:
        current = False
    store.gate.set()
    assert [bytes(await read) for read in reads] == [block("c1", 40)[:10], block("c1", 3)[:10]]
    await asyncio.sleep(0.05)
    await landed(cache)
    # What was asked for lands; nothing more is.
    assert len(store.runs) == asked
    assert cache.has("c1", 20) and not cache.has("c1", size - 4)
    await cache.close()
