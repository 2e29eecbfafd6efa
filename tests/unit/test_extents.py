"""ExtentMap over whole chunks and slices of them (starting and ending anywhere): any
byte range read block by block is the file's bytes."""

from __future__ import annotations

import random
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from mediadrive.core.extents import BlockRef, ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import Extent

# Chunk name -> (whole blocks, bytes of a short last block).
CHUNKS = {"a": (3, 100), "b": (1, 0), "c": (2, 7), "d": (0, 500)}


@cache
def chunk_bytes(chunk: str) -> bytes:
    blocks, tail = CHUNKS[chunk]
    return random.Random(chunk).randbytes(blocks * BLOCK_SIZE + tail)


def fetch_block(chunk: str, index: int) -> bytes:
    return chunk_bytes(chunk)[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]


@st.composite
def slices(draw: st.DrawFn) -> tuple[str, int, int]:
    """A slice of a chunk: (chunk, chunk offset, length), on block boundaries or
    anywhere (as an edit's neighbours are)."""
    chunk = draw(st.sampled_from(sorted(CHUNKS)))
    size = len(chunk_bytes(chunk))
    if draw(st.booleans()):
        blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
        first = draw(st.integers(0, blocks - 1))
        last = draw(st.integers(first + 1, blocks))
        return chunk, first * BLOCK_SIZE, min(last * BLOCK_SIZE, size) - first * BLOCK_SIZE
    start = draw(st.integers(0, size - 1))
    return chunk, start, draw(st.integers(1, size - start))


@st.composite
def files(draw: st.DrawFn) -> tuple[ExtentMap, bytes]:
    """A file made of slices (some of them whole chunks) and its bytes."""
    extents = []
    model = bytearray()
    for chunk, chunk_offset, length in draw(st.lists(slices(), min_size=1, max_size=5)):
        extents.append(Extent(len(model), length, chunk, chunk_offset))
        model += chunk_bytes(chunk)[chunk_offset : chunk_offset + length]
    return ExtentMap.of(1, len(model), extents), bytes(model)


def read(content: ExtentMap, offset: int, size: int) -> bytes:
    end = min(offset + size, content.size)
    return b"".join(
        content.slice_of(block, fetch_block(block.chunk_id, block.block), offset, end)
        for block in content.blocks(offset, size)
    )


@settings(max_examples=60, deadline=None)
@given(files(), st.data())
def test_reading_through_slices_gives_the_files_bytes(
    file: tuple[ExtentMap, bytes], data: st.DataObject
) -> None:
    content, model = file
    offset = data.draw(st.integers(0, len(model)))
    size = data.draw(st.integers(0, len(model) - offset + BLOCK_SIZE))
    assert read(content, offset, size) == model[offset : offset + size]


@settings(max_examples=30, deadline=None)
@given(files())
def test_the_windows_of_all_blocks_tile_the_file(file: tuple[ExtentMap, bytes]) -> None:
    content, model = file
    joined = bytearray()
    for block in content.all_blocks():
        assert block.start == len(joined)
        assert 0 <= block.lo < block.hi <= BLOCK_SIZE
        # The whole block is fetched (its digest checks it); the window is kept.
        data = fetch_block(block.chunk_id, block.block)
        joined += data[block.lo : block.hi]
    assert bytes(joined) == model


def test_a_slice_names_the_blocks_of_its_chunk_at_their_file_offsets() -> None:
    content = ExtentMap.of(
        2,
        3 * BLOCK_SIZE + 100,
        [Extent(0, BLOCK_SIZE, "a"), Extent(BLOCK_SIZE, 2 * BLOCK_SIZE + 100, "a", BLOCK_SIZE)],
    )
    assert [(b.offset, b.chunk_id, b.block) for b in content.blocks(0, content.size)] == [
        (0, "a", 0),
        (BLOCK_SIZE, "a", 1),
        (2 * BLOCK_SIZE, "a", 2),
        (3 * BLOCK_SIZE, "a", 3),
    ]


def test_a_slice_inside_blocks_names_whole_blocks_with_windows() -> None:
    # An edit of 10 bytes at 100 of block 1: the chunk's bytes around it stay slices.
    at = BLOCK_SIZE + 100
    content = ExtentMap.of(
        2,
        3 * BLOCK_SIZE + 100,
        [
            Extent(0, at, "a"),
            Extent(at, 10, "new"),
            Extent(at + 10, 2 * BLOCK_SIZE - 10, "a", at + 10),
        ],
    )
    # Block 1 of "a" starts at BLOCK_SIZE in the file; each extent keeps its part.
    assert content.blocks(at - 5, 20) == [
        BlockRef(BLOCK_SIZE, "a", 1, 0, 100),
        BlockRef(at, "new", 0, 0, 10),
        BlockRef(BLOCK_SIZE, "a", 1, 110, BLOCK_SIZE),
    ]
    assert [b.block for b in content.blocks(at + 10, content.size)] == [1, 2, 3]
