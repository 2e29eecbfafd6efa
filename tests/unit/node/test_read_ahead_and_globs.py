"""Read-ahead windows of a sequential reader, and the globs of hydrate and pins."""

from __future__ import annotations

import pytest

from mediadrive.core.hashing import BLOCK_SIZE as B
from mediadrive.node.hydrate import compile_glob, fixed_prefix, matches
from mediadrive.node.reading import MAX_READAHEAD_BLOCKS, ReadAhead


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
