"""Chunk ids: BLAKE3-256 of the chunk's bytes, as lowercase hex."""

from __future__ import annotations

from blake3 import blake3

from .errors import CorruptChunk

ID_LENGTH = 64
DIGEST_SIZE = 32
# Reads are verified per block, so a small read never needs its whole chunk.
BLOCK_SIZE = 1 << 20
# Below this the thread pool costs more than it saves.
_PARALLEL_THRESHOLD = 4 << 20


def chunk_id(data: bytes | bytearray | memoryview, threads: int | None = None) -> str:
    """The id of ``data``; large inputs hash on several threads unless ``threads``
    says how many (an uploader hashing pieces side by side passes 1)."""
    if threads is None:
        threads = blake3.AUTO if len(data) >= _PARALLEL_THRESHOLD else 1
    return blake3(data, max_threads=threads).hexdigest()


def is_chunk_id(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in "0123456789abcdef" for c in text)


def verify(expected_id: str, data: bytes | bytearray | memoryview) -> None:
    actual = chunk_id(data)
    if actual != expected_id:
        raise CorruptChunk(
            f"chunk {expected_id} is corrupt: its bytes hash to {actual}", expected_id
        )


def identify(data: bytes | bytearray | memoryview, threads: int | None = None) -> tuple[str, bytes]:
    """A chunk's id and its block digests (see :func:`chunk_id`, :func:`block_digests`);
    a chunk of one block hashes once, its digest being both (an empty one has no
    blocks)."""
    cid = chunk_id(data, threads)
    return cid, digests_of(data, cid)


def digests_of(data: bytes | bytearray | memoryview, cid: str) -> bytes:
    """The block digests of a chunk whose id ``cid`` is already known: a chunk of one
    block has one digest, its id (no second pass over its bytes)."""
    return bytes.fromhex(cid) if 0 < len(data) <= BLOCK_SIZE else block_digests(data)


def block_digests(data: bytes | bytearray | memoryview) -> bytes:
    """The BLAKE3 digests of each ``BLOCK_SIZE`` block of a chunk, concatenated."""
    view = memoryview(data)
    return b"".join(
        blake3(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE)
    )


def verify_block(
    chunk: str, index: int, digests: bytes, data: bytes | bytearray | memoryview
) -> None:
    expected = digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
    if blake3(data).digest() != expected:
        raise CorruptChunk(
            f"block {index} of chunk {chunk} is corrupt: its hash does not match", chunk
        )
