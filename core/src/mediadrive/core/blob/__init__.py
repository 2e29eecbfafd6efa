"""The blob store: immutable chunks by id, with ranged reads.

One interface, several engines chosen by URL scheme (``file://`` in ``local.py``,
``s3://`` in ``s3.py``; storage pods later), all checked by the same contract
tests. An engine is one module that parses its own URLs and calls
:func:`register` when imported; the built-in ones are imported the first time a
URL needs them, so importing this package loads no S3 client. Stores that change
how another store works (tiers, sharding, encryption) wrap it: see ``wrapper.py``.

A chunk's id is the hash of all its bytes, so it is known only once the last one is
written. An engine that can take a chunk's bytes before then offers a
:class:`ChunkStream` (``BlobStore.stream``): a file written in order sends each
chunk a part at a time while it is written, and names it when it is whole.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from ..schemes import SchemeRegistry

__all__ = [
    "PART_ALIGN",
    "BlobEngine",
    "BlobStore",
    "ChunkStream",
    "OpenStore",
    "check_store_url",
    "open_store",
    "register",
    "store_schemes",
]


# Set around a put by a caller that waits for its bytes to leave this process before
# doing more (see Uploader._put_first). A store whose ``signals_sent`` is true calls
# it, from any thread, once they are written (perhaps more than once); the caller
# stops waiting when the put returns, too.
put_sent: ContextVar[Callable[[], None] | None] = ContextVar("put_sent", default=None)


# Where a streamed chunk's parts may start: at multiples of this.
PART_ALIGN = 1 << 20


class ChunkStream(ABC):
    """One chunk sent while it is still being written. Its bytes go in parts that do
    not overlap, each starting at a multiple of :data:`PART_ALIGN` and at least
    ``min_part`` long unless it ends the chunk, concurrently and in any order;
    :meth:`finish` then stores them under the chunk's id. Until then no id names
    them, and whatever :meth:`abort`, a failed finish or a crash leaves behind is
    debris (see :meth:`BlobStore.debris`). ``part_size`` is the part a writer sends
    as the chunk fills: what it asked for (see :meth:`BlobStore.stream`), or the
    store's smallest part if that is larger."""

    part_size: int
    min_part: int

    @abstractmethod
    async def write(self, offset: int, data: bytes | memoryview) -> None:
        """Send one part (``data`` is read until this returns)."""

    @abstractmethod
    async def finish(self, chunk_id: str, size: int) -> None:
        """Store the parts written, which cover ``size`` bytes from 0, as ``chunk_id``:
        durable when it returns, as :meth:`BlobStore.put` is. Every write must be over."""

    @abstractmethod
    async def abort(self) -> None:
        """Give up: the parts written go (best effort; a store sweeps what stays)."""


class BlobStore(ABC):
    """Chunks keyed by their BLAKE3 id. ``put`` is durable when it returns."""

    url: str

    @abstractmethod
    async def put(self, chunk_id: str, data: bytes | memoryview) -> None: ...

    @property
    def signals_sent(self) -> bool:
        """Whether ``put`` calls :data:`put_sent`'s callback once its bytes are sent."""
        return False

    def stream(self, part_size: int = 0) -> ChunkStream | None:
        """A new chunk to send while it is being written, in parts of ``part_size`` (at
        least the store's smallest), or None if this store takes chunks whole only
        (the default)."""
        return None

    @abstractmethod
    async def get(self, chunk_id: str) -> bytes:
        """The whole chunk; raises :class:`~mediadrive.core.errors.NotFound` if absent."""

    @abstractmethod
    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the chunk)."""

    async def get_range_view(self, chunk_id: str, offset: int, length: int) -> memoryview:
        """:meth:`get_range` as a view, for bytes that go on to disk: a store may
        receive them into page-aligned memory, which the block cache writes with direct
        I/O (see ``buffers.py``)."""
        return memoryview(await self.get_range(chunk_id, offset, length))

    @abstractmethod
    async def exists(self, chunk_id: str) -> bool: ...

    @abstractmethod
    async def delete(self, chunk_id: str) -> None:
        """Remove a chunk; removing an absent chunk is not an error."""

    @abstractmethod
    def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        """Chunk ids starting with ``prefix`` and greater than ``after``, ascending.

        Engines fetch them a page at a time, so a caller can stop early, or resume
        an interrupted walk by passing the last id it saw as ``after``.
        """

    @abstractmethod
    async def check(self) -> None:
        """Raise :class:`~mediadrive.core.errors.StoreUnavailable` if the store is unusable."""

    async def close(self) -> None:  # noqa: B027 - engines without resources keep the default
        pass

    async def debris(self, older_than: float) -> builtins.list[str]:
        """Leftovers of writes that failed midway, untouched for ``older_than`` seconds
        (names for a report; engines whose writes are atomic have none)."""
        return []

    async def remove_debris(self, older_than: float) -> int:
        """Remove what :meth:`debris` lists; returns how many went."""
        return 0


class OpenStore(Protocol):
    def __call__(self, url: str, *, create: bool) -> BlobStore:
        """The store at ``url``; ``create`` makes a missing folder or bucket on ``check``."""
        ...


@dataclass(frozen=True)
class BlobEngine:
    """How URLs of one scheme become blob stores."""

    open: OpenStore
    # Raises ConfigError naming the URL if the engine cannot use it; opens nothing.
    check_url: Callable[[str], None]


_ENGINES = SchemeRegistry[BlobEngine](
    "store URL",
    {
        "file": "mediadrive.core.blob.local",
        "s3": "mediadrive.core.blob.s3",
        **dict.fromkeys(("pod", "http", "https"), "mediadrive.core.blob.pod"),
    },
)


def register(scheme: str, open: OpenStore, check_url: Callable[[str], None]) -> None:
    """Make ``scheme://`` store URLs use an engine; engines call this on import."""
    _ENGINES.register(scheme, BlobEngine(open, check_url))


def store_schemes() -> builtins.list[str]:
    """The URL schemes blob stores can use."""
    return _ENGINES.schemes()


def check_store_url(url: str) -> str:
    """``url`` if its engine accepts it, checked without opening anything; else ConfigError."""
    _ENGINES.engine_for(url).check_url(url)
    return url


def open_store(url: str, *, create: bool = False) -> BlobStore:
    """The engine for ``url``; ``create`` makes a missing folder or bucket."""
    engine = _ENGINES.engine_for(url)
    engine.check_url(url)
    return engine.open(url, create=create)
