"""Chunks as files in a local folder: ``chunks/ab/abcdef...``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ..durability import fsync_dir
from ..errors import NotFound, StoreUnavailable
from . import BlobStore


class LocalBlobStore(BlobStore):
    def __init__(self, url: str, root: str, *, create: bool = False) -> None:
        self.url = url
        self.root = Path(root)
        self._chunks = self.root / "chunks"
        self._create = create

    def _path(self, chunk_id: str) -> Path:
        return self._chunks / chunk_id[:2] / chunk_id

    def _put(self, chunk_id: str, data: bytes | memoryview) -> None:
        final = self._path(chunk_id)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{chunk_id}.{os.getpid()}.{id(data)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # Rename after fsync: a reader sees the whole chunk or none of it.
        os.replace(tmp, final)
        fsync_dir(final.parent)

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await asyncio.to_thread(self._put, chunk_id, data)

    def _read(self, chunk_id: str, offset: int, length: int | None) -> bytes:
        try:
            with open(self._path(chunk_id), "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFound(f"chunk {chunk_id} is not in {self.root}") from None

    async def get(self, chunk_id: str) -> bytes:
        return await asyncio.to_thread(self._read, chunk_id, 0, None)

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, chunk_id, offset, length)

    async def exists(self, chunk_id: str) -> bool:
        return await asyncio.to_thread(self._path(chunk_id).exists)

    async def delete(self, chunk_id: str) -> None:
        await asyncio.to_thread(self._path(chunk_id).unlink, True)

    async def list(self) -> AsyncIterator[str]:
        if not self._chunks.is_dir():
            return
        names = await asyncio.to_thread(
            lambda: [p.name for p in self._chunks.glob("*/*") if not p.name.startswith(".")]
        )
        for name in names:
            yield name

    async def check(self) -> None:
        def probe() -> None:
            if self._create:
                try:
                    self._chunks.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StoreUnavailable(
                        f"cannot create store folder {self.root}: {err.strerror}"
                    ) from None
            if not self._chunks.is_dir():
                raise StoreUnavailable(f"store folder {self.root} does not exist")
            if not os.access(self._chunks, os.W_OK):
                raise StoreUnavailable(f"store folder {self.root} is not writable")

        await asyncio.to_thread(probe)
