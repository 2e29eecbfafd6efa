"""A storage-pod stand-in that keeps chunks in a dict: ``memhold://NAME[?region=R&dir=D]``.

Test-only: a :class:`BlobStore` and :class:`HoldingStore` whose stores of the same
NAME share their chunks (the pods of one region), that can be made "down" (every
call raises StoreUnavailable, as a ``pod://`` client does when no member answers),
and that counts the calls the tier chain makes. With ``dir`` the chunks are also
kept in a JSON file there, so CLI subprocesses share them. Importing it registers
the scheme (``sitecustomize.py`` beside it does so in subprocesses).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mediadrive.core.blob import BlobStore, register
from mediadrive.core.blob.holding import Holding
from mediadrive.core.errors import ConfigError, NotFound, StoreUnavailable


@dataclass
class Chunk:
    data: bytes
    holding: Holding
    # time.time() after which a held chunk with a TTL is gone.
    expires: float | None = None


@dataclass
class PodSpace:
    region: str
    chunks: dict[str, Chunk] = field(default_factory=dict)
    down: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    folder: Path | None = None

    def load(self) -> None:
        if self.folder is None or not (self.folder / "pod.json").exists():
            return
        kept = json.loads((self.folder / "pod.json").read_text())
        self.chunks = {
            cid: Chunk(bytes.fromhex(data), holding, expires)
            for cid, (data, holding, expires) in kept.items()
        }

    def save(self) -> None:
        if self.folder is None:
            return
        kept = {cid: [c.data.hex(), c.holding, c.expires] for cid, c in self.chunks.items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "pod.json").write_text(json.dumps(kept))

    def live(self) -> dict[str, Chunk]:
        self.load()
        now = time.time()
        for cid in [c for c, chunk in self.chunks.items() if chunk.expires and chunk.expires < now]:
            del self.chunks[cid]
        return self.chunks


_PODS: dict[str, PodSpace] = {}


def parse(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "memhold" or not parts.netloc or parts.path.strip("/"):
        raise ConfigError(f"store URL {url!r} must be memhold://NAME[?region=R&dir=D]")
    return parts.netloc, parse_qs(parts.query).get("region", ["la"])[0]


def _folder(url: str) -> Path | None:
    found = parse_qs(urlsplit(url).query).get("dir")
    return Path(found[0]) if found else None


def pod(name: str) -> PodSpace:
    """The shared state of the pods called ``name`` (made on first use)."""
    return _PODS[name]


def forget_all() -> None:
    _PODS.clear()


class MemoryHoldingStore(BlobStore):
    def __init__(self, url: str) -> None:
        self.url = url
        name, region = parse(url)
        self.space = _PODS.setdefault(name, PodSpace(region, folder=_folder(url)))

    def _up(self, call: str) -> dict[str, Chunk]:
        self.space.calls[call] += 1
        if self.space.down:
            raise StoreUnavailable(f"storage pod {self.url} is down: connection refused")
        return self.space.live()

    # -- BlobStore ----------------------------------------------------------------------

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await self.put_held(chunk_id, data)

    async def get(self, chunk_id: str) -> bytes:
        try:
            return self._up("get")[chunk_id].data
        except KeyError:
            raise NotFound(f"chunk {chunk_id} is not in pod {self.url}") from None

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        try:
            data = self._up("get_range")[chunk_id].data
        except KeyError:
            raise NotFound(f"chunk {chunk_id} is not in pod {self.url}") from None
        return data[offset : offset + max(length, 0)]

    async def exists(self, chunk_id: str) -> bool:
        return chunk_id in self._up("exists")

    async def delete(self, chunk_id: str) -> None:
        self._up("delete").pop(chunk_id, None)
        self.space.save()

    async def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        for cid in sorted(self._up("list")):
            if cid.startswith(prefix) and cid > after:
                yield cid

    async def check(self) -> None:
        self._up("check")

    # -- HoldingStore -------------------------------------------------------------------

    async def put_held(
        self, chunk_id: str, data: bytes | memoryview, ttl: float | None = None
    ) -> None:
        chunks = self._up("put_held")
        expires = time.time() + ttl if ttl is not None else None
        chunks[chunk_id] = Chunk(bytes(data), "held", expires)
        self.space.save()

    async def put_cached(self, chunk_id: str, data: bytes | memoryview) -> None:
        chunks = self._up("put_cached")
        if chunk_id not in chunks:
            chunks[chunk_id] = Chunk(bytes(data), "cached")
            self.space.save()

    async def release(self, chunk_ids: Sequence[str]) -> None:
        chunks = self._up("release")
        for cid in chunk_ids:
            if cid in chunks:
                chunks[cid] = Chunk(chunks[cid].data, "cached")
        self.space.save()

    async def holding(self, chunk_ids: Sequence[str]) -> dict[str, Holding]:
        chunks = self._up("holding")
        return {cid: chunks[cid].holding for cid in chunk_ids if cid in chunks}

    async def region(self) -> str:
        self._up("region")
        return self.space.region


def _open(url: str, *, create: bool) -> BlobStore:
    return MemoryHoldingStore(url)


def _check(url: str) -> None:
    parse(url)


register("memhold", _open, _check)
