"""Chunkers: pieces put back together are the input; CDC cuts survive insertions."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediadrive.core.chunking import CdcChunker, Chunker, FixedChunker, Piece, make_chunker
from mediadrive.core.errors import ConfigError
from mediadrive.core.hashing import chunk_id, is_chunk_id

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _split(chunker: Chunker, data: bytes) -> list[Piece]:
    return list(chunker.split(io.BytesIO(data)))


def _check_contiguous(pieces: list[Piece], data: bytes) -> None:
    assert b"".join(p.data for p in pieces) == data
    offset = 0
    for piece in pieces:
        assert piece.offset == offset
        assert piece.data, "a chunker never yields an empty piece"
        offset += len(piece.data)
    assert offset == len(data)


class _ShortReads(io.RawIOBase):
    """A pipe-like stream: every read returns at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self._data)
        n = min(size, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


@FAST
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 200_000),
    chunk=st.sampled_from([4096, 5000, 16384, 65536]),
)
def test_fixed_pieces_concatenate_to_input(seed: int, size: int, chunk: int) -> None:
    data = _random_bytes(seed, size)
    pieces = _split(FixedChunker(chunk), data)
    _check_contiguous(pieces, data)
    assert len(pieces) == -(-size // chunk)
    assert all(len(p.data) == chunk for p in pieces[:-1])


@FAST
@given(seed=st.integers(0, 2**32), size=st.integers(1, 100_000), step=st.integers(1, 3000))
def test_fixed_chunks_are_full_size_even_from_short_reads(seed: int, size: int, step: int) -> None:
    data = _random_bytes(seed, size)
    stream = _ShortReads(data, step)
    pieces = list(FixedChunker(8192).split(stream))  # type: ignore[arg-type]
    _check_contiguous(pieces, data)
    assert all(len(p.data) == 8192 for p in pieces[:-1])


@FAST
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 300_000),
    average=st.sampled_from([1024, 2048, 4096, 16384]),
)
def test_cdc_pieces_concatenate_to_input(seed: int, size: int, average: int) -> None:
    data = _random_bytes(seed, size)
    pieces = _split(CdcChunker(average), data)
    _check_contiguous(pieces, data)
    # Minimum a quarter and maximum four times the average; the last piece may be short.
    assert all(average // 4 <= len(p.data) <= average * 4 for p in pieces[:-1])
    assert all(len(p.data) <= average * 4 for p in pieces)


@FAST
@given(seed=st.integers(0, 2**32), size=st.integers(0, 100_000))
def test_cdc_is_deterministic(seed: int, size: int) -> None:
    data = _random_bytes(seed, size)
    first = [(p.offset, chunk_id(p.data)) for p in _split(CdcChunker(2048), data)]
    second = [(p.offset, chunk_id(p.data)) for p in _split(CdcChunker(2048), data)]
    assert first == second


def _ids_after(pieces: list[Piece], start: int) -> list[str]:
    return [chunk_id(p.data) for p in pieces if p.offset >= start]


@FAST
@given(
    seed=st.integers(0, 2**32),
    where=st.floats(0.0, 0.5),
    inserted=st.integers(1, 20_000),
    average=st.sampled_from([1024, 4096]),
)
def test_cdc_boundaries_survive_an_insertion(
    seed: int, where: float, inserted: int, average: int
) -> None:
    data = _random_bytes(seed, 128 * average)
    position = int(len(data) * where)
    edited = data[:position] + _random_bytes(seed + 1, inserted) + data[position:]
    before = _ids_after(_split(CdcChunker(average), data), position)
    after = set(_ids_after(_split(CdcChunker(average), edited), position))
    kept = sum(1 for cid in before if cid in after)
    # Cuts resynchronise a few chunks after the insertion; everything later is shared.
    assert len(before) >= 40
    assert kept >= 0.8 * len(before)


@FAST
@given(seed=st.integers(0, 2**32), where=st.floats(0.0, 0.5), removed=st.integers(1, 5_000))
def test_cdc_boundaries_survive_a_deletion(seed: int, where: float, removed: int) -> None:
    data = _random_bytes(seed, 128 * 2048)
    position = int(len(data) * where)
    edited = data[:position] + data[position + removed :]
    before = _ids_after(_split(CdcChunker(2048), data), position + removed)
    after = set(_ids_after(_split(CdcChunker(2048), edited), position))
    kept = sum(1 for cid in before if cid in after)
    assert len(before) >= 40
    assert kept >= 0.8 * len(before)


def test_fixed_chunks_realign_after_an_in_place_edit() -> None:
    data = _random_bytes(7, 10 * 4096)
    edited = bytearray(data)
    edited[5 * 4096 + 100 : 5 * 4096 + 200] = b"x" * 100
    old = [chunk_id(p.data) for p in _split(FixedChunker(4096), data)]
    new = [chunk_id(p.data) for p in _split(FixedChunker(4096), bytes(edited))]
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [5]


def test_make_chunker_kinds_and_bad_sizes() -> None:
    assert isinstance(make_chunker("fixed", 8192), FixedChunker)
    assert isinstance(make_chunker("cdc", 8192), CdcChunker)
    assert make_chunker("fixed").size == 64 << 20  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        make_chunker("rabin", 8192)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FixedChunker(0)
    with pytest.raises(ConfigError):
        CdcChunker(512)
    with pytest.raises(ConfigError):
        CdcChunker(8 << 20)


def test_chunk_ids_are_blake3_hex() -> None:
    # The BLAKE3 test vector for the empty input.
    assert chunk_id(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    big = _random_bytes(3, 5 << 20)  # large enough for the multi-threaded path
    assert chunk_id(big) == chunk_id(memoryview(big)) == chunk_id(bytearray(big))
    assert is_chunk_id(chunk_id(b"abc"))
    assert not is_chunk_id("ABC")
    assert not is_chunk_id(chunk_id(b"abc").upper())
