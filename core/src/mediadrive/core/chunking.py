"""Splitting a byte stream into chunks: fixed size, or content-defined (FastCDC).

Fixed chunks keep offsets aligned, so an in-place edit touches one chunk. FastCDC
cuts where the content says, so an insertion shifts only the chunks around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from pyfastcdc.cy import FastCDC

from .config import (
    CDC_MAX_AVERAGE,
    CDC_MIN_AVERAGE,
    DEFAULT_CDC_AVERAGE,
    DEFAULT_FIXED_SIZE,
    ChunkingKind,
)
from .errors import ConfigError

__all__ = [
    "CDC_MAX_AVERAGE",
    "CDC_MIN_AVERAGE",
    "DEFAULT_CDC_AVERAGE",
    "DEFAULT_FIXED_SIZE",
    "Chunker",
    "ChunkingKind",
    "Piece",
    "make_chunker",
]


@dataclass(frozen=True)
class Piece:
    """One chunk's bytes and where they sit in the stream."""

    offset: int
    # A piece gathered in memory as it was written is sent from there (a memoryview).
    data: bytes | memoryview


class Chunker(Protocol):
    kind: ChunkingKind

    def split(self, stream: BinaryIO) -> Iterator[Piece]: ...


class FixedChunker:
    kind: ChunkingKind = "fixed"

    def __init__(self, size: int = DEFAULT_FIXED_SIZE) -> None:
        if size <= 0:
            raise ConfigError(f"chunk size {size} must be positive")
        self.size = size

    def split(self, stream: BinaryIO) -> Iterator[Piece]:
        offset = 0
        while data := stream.read(self.size):
            # Pipes return short reads; a chunk is short only at the end of the stream.
            while len(data) < self.size and (more := stream.read(self.size - len(data))):
                data += more
            yield Piece(offset, data)
            offset += len(data)


class CdcChunker:
    """FastCDC with minimum a quarter and maximum four times the average size."""

    kind: ChunkingKind = "cdc"

    def __init__(self, average: int = DEFAULT_CDC_AVERAGE) -> None:
        if not CDC_MIN_AVERAGE <= average <= CDC_MAX_AVERAGE:
            raise ConfigError(
                f"content-defined chunk size {average} must be between "
                f"{CDC_MIN_AVERAGE} (1KiB) and {CDC_MAX_AVERAGE} (4MiB)"
            )
        self.average = average
        self._cdc = FastCDC(average, min_size=average // 4, max_size=average * 4)

    def split(self, stream: BinaryIO) -> Iterator[Piece]:
        # cut_stream reuses its buffer, so each piece is copied out before the next cut.
        for chunk in self._cdc.cut_stream(stream):
            yield Piece(chunk.offset, bytes(chunk.data))


def make_chunker(kind: ChunkingKind, size: int | None = None) -> Chunker:
    if kind == "fixed":
        return FixedChunker(size or DEFAULT_FIXED_SIZE)
    if kind == "cdc":
        return CdcChunker(size or DEFAULT_CDC_AVERAGE)
    raise ConfigError(f"chunking {kind!r} is not one of: fixed, cdc")
