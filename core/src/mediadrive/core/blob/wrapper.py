"""Stores made of other stores.

A wrapper is a :class:`~mediadrive.core.blob.BlobStore` that hands every call to
an inner store and changes only what it is for. This is the home of the tier
chain (a fast store in front of a slow one), sharding (ids spread over several
stores) and encryption (chunks sealed before they leave): each is a
:class:`WrappedStore` subclass overriding the methods it changes, and it passes
the same contract tests as the engines it wraps.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator

from . import BlobStore, ChunkStream


class WrappedStore(BlobStore):
    """Delegates everything to ``inner``; subclasses override what they change."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.url = inner.url

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await self.inner.put(chunk_id, data)

    @property
    def signals_sent(self) -> bool:
        return self.inner.signals_sent

    def stream(self, part_size: int = 0) -> ChunkStream | None:
        # Not passed on: a stream would store chunks past whatever the wrapper does to a
        # put. A wrapper that leaves puts as they are may return the inner store's.
        return None

    async def get(self, chunk_id: str) -> bytes:
        return await self.inner.get(chunk_id)

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        return await self.inner.get_range(chunk_id, offset, length)

    async def exists(self, chunk_id: str) -> bool:
        return await self.inner.exists(chunk_id)

    async def delete(self, chunk_id: str) -> None:
        await self.inner.delete(chunk_id)

    def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        return self.inner.list(prefix, after)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()

    async def debris(self, older_than: float) -> builtins.list[str]:
        return await self.inner.debris(older_than)

    async def remove_debris(self, older_than: float) -> int:
        return await self.inner.remove_debris(older_than)
