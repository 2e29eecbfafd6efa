"""The blob store: immutable chunks by id, with ranged reads.

One interface, several engines (local folder, S3; storage pods later), all
checked by the same contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from ..config import parse_store_url


class BlobStore(ABC):
    """Chunks keyed by their BLAKE3 id. ``put`` is durable when it returns."""

    url: str

    @abstractmethod
    async def put(self, chunk_id: str, data: bytes | memoryview) -> None: ...

    @abstractmethod
    async def get(self, chunk_id: str) -> bytes:
        """The whole chunk; raises :class:`~mediadrive.core.errors.NotFound` if absent."""

    @abstractmethod
    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the chunk)."""

    @abstractmethod
    async def exists(self, chunk_id: str) -> bool: ...

    @abstractmethod
    async def delete(self, chunk_id: str) -> None:
        """Remove a chunk; removing an absent chunk is not an error."""

    @abstractmethod
    def list(self) -> AsyncIterator[str]:
        """Every chunk id held, in no particular order."""

    @abstractmethod
    async def check(self) -> None:
        """Raise :class:`~mediadrive.core.errors.StoreUnavailable` if the store is unusable."""

    async def close(self) -> None:  # noqa: B027 - engines without resources keep the default
        pass


def open_store(url: str, *, create: bool = False) -> BlobStore:
    """The engine for ``url``; ``create`` makes a missing folder or bucket."""
    parsed = parse_store_url(url)
    if parsed.scheme == "file":
        from .local import LocalBlobStore

        return LocalBlobStore(url, parsed.path, create=create)
    from .s3 import S3BlobStore

    return S3BlobStore(url, parsed, create=create)
