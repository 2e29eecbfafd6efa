"""A blob engine that keeps chunks in a dict: ``memory://NAME``.

Test-only, and the proof that a blob engine is one module plus its
``register()`` call: importing this module is all it takes for ``open_store``
to accept ``memory://`` URLs. Stores of the same NAME share their chunks, like
two clients of one bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from mediadrive.core.blob import BlobStore, register
from mediadrive.core.errors import ConfigError, NotFound, StoreUnavailable

# NAME -> chunk id -> bytes, for every memory store made with create.
_SPACES: dict[str, dict[str, bytes]] = {}


def memory_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "memory" or not parts.netloc or parts.path.strip("/") or parts.query:
        raise ConfigError(f"store URL {url!r} must be memory://NAME")
    return parts.netloc


def check_memory_url(url: str) -> None:
    memory_name(url)


def forget_all() -> None:
    """Drop every memory store's chunks (between tests)."""
    _SPACES.clear()


class MemoryBlobStore(BlobStore):
    # Ids per page of ``list``; tests lower it to see several pages.
    page_size = 1000

    def __init__(self, url: str, name: str, *, create: bool = False) -> None:
        self.url = url
        self.name = name
        self._create = create

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> MemoryBlobStore:
        return cls(url, memory_name(url), create=create)

    def _space(self) -> dict[str, bytes]:
        space = _SPACES.get(self.name)
        if space is None:
            raise StoreUnavailable(f"memory store {self.name!r} does not exist")
        return space

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        self._space().setdefault(chunk_id, bytes(data))

    async def get(self, chunk_id: str) -> bytes:
        try:
            return self._space()[chunk_id]
        except KeyError:
            raise NotFound(f"chunk {chunk_id} is not in memory store {self.name!r}") from None

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        data = await self.get(chunk_id)
        return data[offset : offset + max(length, 0)]

    async def exists(self, chunk_id: str) -> bool:
        return chunk_id in _SPACES.get(self.name, {})

    async def delete(self, chunk_id: str) -> None:
        self._space().pop(chunk_id, None)

    async def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        while True:
            ids = sorted(
                cid for cid in _SPACES.get(self.name, {}) if cid.startswith(prefix) and cid > after
            )
            page = ids[: self.page_size]
            for chunk_id in page:
                yield chunk_id
            if len(ids) <= self.page_size:
                return
            after = page[-1]
            # Let other tasks run between pages, as a networked engine would.
            await asyncio.sleep(0)

    async def check(self) -> None:
        if self._create:
            _SPACES.setdefault(self.name, {})
        self._space()


register("memory", MemoryBlobStore.from_url, check_memory_url)
